"""Real-architecture models from the real hub files: a folder of `../shared/models` (config,
tokenizer, processor, chat template, generation config; no weights) becomes a loadable model
folder with seeded random weights, written by `save_pretrained` beside copies of every real file.

What may change, and only in the config's architecture sub-configs: widths, depths, heads and
feed-forward sizes (`Shrink`), so tests run on a CPU. Everything a checkpoint's path depends on
stays real: vocabulary sizes and every token id, image and patch sizes, LLaVA's feature layer and
selection strategy, the chat template, the tokenizer, the processor and the generation config.
`shrink=None` keeps the full architecture (for `make bench`); `depth` then cuts named sub-configs'
layer counts only (LLaVA-1.5-7B's 32 Llama layers, say, so its embeddings and width stay real).

    build_real_model(real_model_dir("nlpconnect/vit-gpt2-image-captioning"), out_dir)
    build_real_clip_flan_t5(out_dir)   # t5/ (flan-t5-base) + vision/ (a full CLIP ViT-B/16)

The output loads as the hub id would (`from_pretrained(out_dir)`), so everything from the files a
user downloads to the caption is exercised; what random weights cannot show is caption quality.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import paths
from bench.errors import BenchError

# Files a save_pretrained writes itself (the real config is re-written shrunk; no real weights exist).
WRITTEN_BY_SAVE = ("config.json",)
NOT_COPIED = ("PROVENANCE.md", "README.md")
BUILD_RECORD = "bench_real_build.json"
# Sub-configs that hold an architecture (VisionEncoderDecoder: encoder/decoder; CLIP, LLaVA: text/vision).
SUB_CONFIGS = ("encoder", "decoder", "text_config", "vision_config")


@dataclass(frozen=True)
class Shrink:
    """The CPU-sized architecture: only these widths and depths differ from the real config."""

    width: int = 64
    heads: int = 2
    layers: int = 2
    ffn: int = 128


def _shrunk_fields(model_type: str, s: Shrink) -> dict[str, int]:
    """Config keys of one architecture and their CPU-sized values; unknown types stay as they are."""
    standard = {"hidden_size": s.width, "num_attention_heads": s.heads, "num_hidden_layers": s.layers,
                "intermediate_size": s.ffn}
    fields: dict[str, dict[str, int]] = {
        "vit": standard,
        "clip_vision_model": standard,
        "clip_text_model": standard,
        "llama": {**standard, "num_key_value_heads": s.heads},
        "gpt2": {"n_embd": s.width, "n_head": s.heads, "n_layer": s.layers},
        "t5": {"d_model": s.width, "d_kv": s.width // s.heads, "d_ff": s.ffn, "num_heads": s.heads,
               "num_layers": s.layers, "num_decoder_layers": s.layers},
        "clip": {"projection_dim": s.width},
    }
    return fields.get(model_type, {})


def real_model_dir(hub_id: str) -> Path:
    """The shared folder holding `hub_id`'s real files ("org/name" is stored as "org__name")."""
    folder = paths.shared_models_dir() / hub_id.replace("/", "__")
    if not (folder / "config.json").is_file():
        raise BenchError(f"{folder / 'config.json'}: real model files of {hub_id!r} not found (set BENCH_SHARED_MODELS)")
    return folder


def _layer_key(config: Any) -> str:
    return "n_layer" if config.model_type == "gpt2" else "num_hidden_layers"


def _resize(config: Any, shrink: Shrink | None, depth: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Apply `shrink` (every part) and `depth` (named parts' layer counts) in place; what changed."""
    parts = {"": config, **{name: getattr(config, name) for name in SUB_CONFIGS if hasattr(config, name)}}
    changed: dict[str, dict[str, int]] = {}
    for name, part in parts.items():
        wanted = dict(_shrunk_fields(part.model_type, shrink)) if shrink is not None else {}
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
    source: Path, out_dir: Path, seed: int = 0, *, shrink: Shrink | None = Shrink(), depth: Mapping[str, int] | None = None
) -> Path:
    """Write the real config (resized as above) with seeded random weights plus every real file of
    `source` to `out_dir`; returns `out_dir`. `depth`: {"text_config": 2} cuts the Llama depth."""
    import torch
    from transformers import AutoConfig

    source, out_dir = Path(source), Path(out_dir)
    config = AutoConfig.from_pretrained(str(source), local_files_only=True, trust_remote_code=False)
    changed = _resize(config, shrink, depth or {})
    torch.manual_seed(seed)
    model = _model_class(config)(config)
    zeroed = _quiet_tied_end_tokens(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    # The real files overwrite anything save_pretrained derived (generation_config.json above all).
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in WRITTEN_BY_SAVE + NOT_COPIED:
            shutil.copyfile(path, out_dir / path.name)
    record = {"source": str(source), "seed": seed, "shrink": asdict(shrink) if shrink else None, "changed": changed, "zeroed_embedding_rows": zeroed}
    (out_dir / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def build_real_clip_flan_t5(
    out_dir: Path, seed: int = 0, *, shrink: Shrink | None = Shrink(),
    t5_id: str = "google/flan-t5-base", vision_id: str = "openai/clip-vit-base-patch16",
) -> Path:
    """The clip-flan-t5 bundle: `t5/` (Flan-T5) and `vision/`, a FULL CLIP checkpoint (text half
    included) as the hub has it, whose vision tower the backend loads."""
    out_dir = Path(out_dir)
    build_real_model(real_model_dir(t5_id), out_dir / "t5", seed, shrink=shrink)
    build_real_model(real_model_dir(vision_id), out_dir / "vision", seed, shrink=shrink)
    return out_dir
