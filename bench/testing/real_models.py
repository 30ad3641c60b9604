"""Real-config models from the real hub files: a folder of `../shared/models` (config, tokenizer,
processor, chat template, generation config; no weights) becomes a loadable model folder with
seeded random weights, written by `save_pretrained` beside copies of the real files.

The one builder of tests and `make bench` (it replaced two that disagreed); per aspect it keeps the
stricter rule of the two:
- shrink: one explicit rule per checkpoint type (`SHRINK`), and a checkpoint type without one is
  an error, never silently left full size. Only widths, depths, heads and feed-forward sizes
  change (plus a wider `initializer_range` for the VLMs' language models, so greedy choices are not
  near-ties); vocabularies and token ids, image and patch sizes, LLaVA's feature layer, the chat
  template, tokenizer, processor and generation config stay real. `shrink=False` keeps the full
  architecture (`make bench`); `depth` then cuts named sub-configs' layer counts only.
- copy policy: every real file is copied (after `save_pretrained`, so the published
  generation_config.json wins) except the config it rewrote and the provenance notes; a weights
  file in the source is an error (the shared folders hold none by design).
- class lookup: the checkpoint's own `architectures[0]`, which must name a transformers class.
- seeding: `torch.random.fork_rng` around the seeded init, so building leaves the caller's RNG as
  it was.

    build_real_model(real_model_dir("nlpconnect/vit-gpt2-image-captioning"), out_dir)
    build_real_clip_flan_t5(out_dir)   # t5/ (flan-t5-base) + vision/ (a full CLIP ViT-B/16)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import paths
from bench.errors import BenchError

WRITTEN_BY_SAVE = ("config.json",)  # re-written resized; no real weights exist to copy
NOT_COPIED = ("PROVENANCE.md", "README.md")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
BUILD_RECORD = "bench_real_build.json"
SUB_CONFIGS = ("encoder", "decoder", "text_config", "vision_config")

_STANDARD = {"hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128}
_VLM_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
_VLM_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "initializer_range": 0.1}

# checkpoint model_type -> part of its config ("" = the top level) -> the CPU-sized fields.
SHRINK: dict[str, dict[str, dict[str, Any]]] = {
    "vision-encoder-decoder": {
        "encoder": _STANDARD,  # ViT
        "decoder": {"n_embd": 64, "n_head": 2, "n_layer": 2},  # GPT-2
    },
    "t5": {"": {"d_model": 64, "d_kv": 32, "d_ff": 128, "num_heads": 2, "num_layers": 2, "num_decoder_layers": 2}},
    "clip": {"": {"projection_dim": 64}, "text_config": _STANDARD, "vision_config": _STANDARD},
    "llava": {
        "vision_config": {**_VLM_VISION, "projection_dim": 32},
        "text_config": {**_VLM_TEXT, "num_key_value_heads": 4, "head_dim": 16},
    },
    "blip": {
        "": {"projection_dim": 32, "image_text_hidden_size": 32},
        "vision_config": _VLM_VISION,
        "text_config": {**_VLM_TEXT, "encoder_hidden_size": _VLM_VISION["hidden_size"]},
    },
}


def real_model_dir(hub_id: str) -> Path:
    """The shared folder holding `hub_id`'s real files ("org/name" is stored as "org__name")."""
    folder = paths.shared_models_dir() / hub_id.replace("/", "__")
    if not (folder / "config.json").is_file():
        raise BenchError(f"{folder / 'config.json'}: real model files of {hub_id!r} not found (set BENCH_SHARED_MODELS)")
    return folder


def _layer_key(config: Any) -> str:
    return "n_layer" if config.model_type == "gpt2" else "num_hidden_layers"


def _resize(config: Any, shrink: bool, depth: Mapping[str, int], source: Path) -> dict[str, dict[str, Any]]:
    """Apply the checkpoint type's rule (when `shrink`) and `depth` in place; what changed."""
    rule = SHRINK.get(config.model_type)
    if shrink and rule is None:
        raise BenchError(f"{source / 'config.json'}: no shrink rule for model_type {config.model_type!r} "
                         f"(known: {', '.join(sorted(SHRINK))})")
    parts = {"": config, **{name: getattr(config, name) for name in SUB_CONFIGS if hasattr(config, name)}}
    changed: dict[str, dict[str, Any]] = {}
    for name, part in parts.items():
        wanted = dict(rule.get(name, {})) if shrink and rule else {}
        if name in depth:
            wanted[_layer_key(part)] = depth[name]
        for key, value in wanted.items():
            changed.setdefault(name or "config", {})[key] = value
            setattr(part, key, value)
    return changed


def _model_class(config: Any) -> Any:
    import transformers

    architectures = getattr(config, "architectures", None) or []
    if not architectures or not hasattr(transformers, architectures[0]):
        raise BenchError(f"config.json: field 'architectures' names no transformers class ({architectures!r})")
    return getattr(transformers, architectures[0])


def _quiet_tied_end_tokens(model: Any) -> list[int]:
    """Zero the embedding rows of the end tokens of a decoder whose LM head is its input embedding
    (GPT-2): a random model otherwise predicts the token it was fed, and GPT-2 is fed its start
    token, which is also its eos, so every caption would be empty. A zero row gives eos a logit
    of exactly 0, so random captions run to max_new_tokens instead. Only weights change."""
    import torch

    zeroed: list[int] = []
    for part in (model, getattr(model, "decoder", None)):
        if part is None or part.get_output_embeddings() is None:
            continue
        inputs, outputs = part.get_input_embeddings().weight, part.get_output_embeddings().weight
        eos = getattr(part.config, "eos_token_id", None)
        if inputs.data_ptr() == outputs.data_ptr() and isinstance(eos, int):
            with torch.no_grad():
                inputs[eos].zero_()
            zeroed.append(eos)
    return zeroed


def build_real_model(
    source: Path, out_dir: Path, seed: int = 0, *, shrink: bool = True, depth: Mapping[str, int] | None = None
) -> Path:
    """Write the real config (resized as above) with seeded random weights plus every real file of
    `source` to `out_dir`; returns `out_dir`. `depth`: {"text_config": 2} cuts the Llama depth."""
    import torch
    from transformers import AutoConfig

    source, out_dir = Path(source), Path(out_dir)
    weights = sorted(p.name for p in source.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if weights:
        raise BenchError(f"{source / weights[0]}: a real-config folder holds no weights (the builder draws them)")
    config = AutoConfig.from_pretrained(str(source), local_files_only=True, trust_remote_code=False)
    changed = _resize(config, shrink, depth or {}, source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(config)(config)
    zeroed = _quiet_tied_end_tokens(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in WRITTEN_BY_SAVE + NOT_COPIED:
            shutil.copyfile(path, out_dir / path.name)
    record = {"source": str(source), "seed": seed, "shrink": shrink, "changed": changed, "zeroed_embedding_rows": zeroed}
    (out_dir / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def build_real_clip_flan_t5(
    out_dir: Path, seed: int = 0, *, shrink: bool = True, t5_id: str | None = None, vision_id: str | None = None,
) -> Path:
    """The clip-flan-t5 bundle: `t5/` (Flan-T5) and `vision/`, a FULL CLIP checkpoint (text half
    included) as the hub has it, whose vision tower the backend loads; by default the backend's
    own default models."""
    from bench.backends import backend_spec
    from bench.backends.clip_flan_t5 import DEFAULT_VISION

    t5_id = t5_id or backend_spec("clip-flan-t5").default_model or ""
    vision_id = vision_id or DEFAULT_VISION
    out_dir = Path(out_dir)
    build_real_model(real_model_dir(t5_id), out_dir / "t5", seed, shrink=shrink)
    build_real_model(real_model_dir(vision_id), out_dir / "vision", seed, shrink=shrink)
    return out_dir
