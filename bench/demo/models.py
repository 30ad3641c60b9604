"""The demo's model cache: each tiny model built, pretrained and saved once, reused while its manifest matches."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.demo.pretrain import PRETRAIN, optimize, pixels_of
from bench.demo.profile import (
    CAPTIONERS,
    CLIP_NAME,
    MANIFEST,
    SEED,
    SOURCE_DATASET,
    TARGET_DATASET,
    Profile,
    display_path,
    models_root,
    prompt_names,
    say,
    tokenizer_corpus,
)
from bench.errors import BenchError
from bench.io import atomic_write_json, read_json


def _digest(texts: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def _manifest_key(profile: Profile, name: str, source_fingerprint: str, corpus: Sequence[str]) -> dict[str, Any]:
    key = {"model": name, **profile.build_key(), "source_fingerprint": source_fingerprint, "corpus": _digest(corpus)}
    if name == "llava":  # pretrained on every shipped prompt: a changed prompt file means a new base
        from bench.prompts import load_prompt

        key["prompts"] = _digest([f"{n}={load_prompt(n).template}" for n in prompt_names()])
    return key


def cached_model(folder: Path, key: dict[str, Any]) -> bool:
    """Whether `folder` holds a finished demo model built with exactly `key`."""
    path = folder / MANIFEST
    if not path.is_file():
        return False
    try:
        manifest = read_json(path)
    except BenchError:
        return False
    return isinstance(manifest, dict) and manifest.get("key") == key


def _install(tmp: Path, folder: Path) -> None:
    """Move a finished build into place (the manifest inside is what marks it finished)."""
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _fresh_tmp(folder: Path) -> Path:
    tmp = folder.with_name(f".{folder.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _build_tiny(name: str, out: Path, corpus: tuple[str, ...]) -> None:
    """The backend's tiny architecture, with a tokenizer trained on the synthetic captions."""
    if name == "vit-gpt2":
        from bench.tiny.vit_gpt2 import build_tiny_vit_gpt2

        build_tiny_vit_gpt2(out, SEED, corpus=corpus, vocab_size=600)
    elif name == "clip-flan-t5":
        from bench.tiny.clip_flan_t5 import build_tiny_clip_flan_t5

        build_tiny_clip_flan_t5(out, SEED, corpus=corpus, vocab_size=300, whole_words=True)
    elif name == "llava":
        from bench.prompts import load_prompt
        from bench.tiny.llava import build_tiny_llava

        # The chat roles and every shipped prompt, so prompts tokenize into words.
        prompts = tuple(load_prompt(n).text for n in prompt_names())
        build_tiny_llava(out, SEED, corpus=("USER: ASSISTANT:", *prompts, *corpus), vocab_size=600)
    else:
        raise BenchError(f"demo: no demo model for backend {name!r}")


def _save_captioner(name: str, captioner: Any, out: Path) -> None:
    if name == "clip-flan-t5":
        captioner.model.t5.save_pretrained(out / "t5", safe_serialization=True)
        captioner.model.vision.save_pretrained(out / "vision", safe_serialization=True)
    else:
        captioner.model.save_pretrained(out, safe_serialization=True)


def build_captioner(name: str, folder: Path, source: Sequence[Any], profile: Profile, corpus: tuple[str, ...],
                    key: dict[str, Any], console: Any = None, progress: bool = True) -> dict[str, Any]:
    """Build, pretrain on the source world and save one demo captioner; returns its manifest."""
    import torch

    from bench.backends import backend_class
    from bench.config import ModelConfig

    tmp = _fresh_tmp(folder)
    _build_tiny(name, tmp, corpus)
    torch.manual_seed(SEED)
    # Loaded through the backend like any checkpoint, so pretraining sees what runs will see.
    captioner = backend_class(name).load(ModelConfig(model=str(tmp)), torch.device("cpu"), prompt=None)
    start = time.perf_counter()
    losses = PRETRAIN[name](captioner, source, profile, console, progress)
    _save_captioner(name, captioner, tmp)
    what = f"tiny {name} pretrained with full fine-tuning on {SOURCE_DATASET} ({len(source)} images)"
    return _finish_model(tmp, folder, {"key": key, "backend": name, "what": what}, losses, start)


def _finish_model(tmp: Path, folder: Path, head: dict[str, Any], losses: list[float], start: float) -> dict[str, Any]:
    """Write the manifest (what was built, how training went) and move the model into place."""
    manifest = {
        **head,
        "steps": len(losses),
        "first_loss": losses[0],
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "pretrain_s": round(time.perf_counter() - start, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(tmp / MANIFEST, manifest)
    _install(tmp, folder)
    return manifest


def build_clip(folder: Path, images: Sequence[Any], profile: Profile, corpus: tuple[str, ...],
               key: dict[str, Any], console: Any = None, progress: bool = True) -> dict[str, Any]:
    """A tiny CLIP trained contrastively (symmetric InfoNCE, CLIP's own loss) on image/caption
    pairs of both worlds' train splits, so that CLIPScore in the demo measures something."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from bench.tiny.clip import build_tiny_clip

    tmp = _fresh_tmp(folder)
    build_tiny_clip(tmp, SEED, corpus=corpus, vocab_size=900)
    model = CLIPModel.from_pretrained(str(tmp), use_safetensors=True)
    processor = CLIPProcessor.from_pretrained(str(tmp))
    pixels = pixels_of(processor.image_processor, images)
    refs = [list(s.refs) for s in images]
    model.train()
    generator = torch.Generator().manual_seed(SEED + 1)  # which reference of an image is used

    def step_loss(indices: Any) -> Any:
        # Distinct images in a batch: a duplicate would be its own false negative.
        chosen = list(dict.fromkeys(int(k) for k in indices))
        picks = torch.randint(len(refs[0]), (len(chosen),), generator=generator).tolist()
        text = processor.tokenizer([refs[i][p % len(refs[i])] for i, p in zip(chosen, picks)],
                                   padding=True, truncation=True, return_tensors="pt")
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                    pixel_values=pixels[chosen], return_loss=True)
        return out.loss

    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    # Twice the captioners' batch: InfoNCE learns from the other images of a batch.
    losses = optimize(params, step_loss, len(images), profile.clip_steps, profile.clip_lr,
                      2 * profile.batch_size, "train CLIP (contrastive)", console, progress)
    model.eval()
    model.save_pretrained(str(tmp), safe_serialization=True)
    what = f"tiny CLIP trained contrastively on {len(images)} images of {SOURCE_DATASET} and {TARGET_DATASET} (train splits)"
    return _finish_model(tmp, folder, {"key": key, "what": what}, losses, start)


def ensure_models(profile: Profile, source_split: Any, target_split: Any, *, force: bool = False,
                  console: Any = None, progress: bool = True) -> dict[str, bool]:
    """Every demo model present with a matching manifest (built when not); name -> built now."""
    corpus = tokenizer_corpus()
    root = models_root(profile)
    built: dict[str, bool] = {}
    source = list(source_split.train)
    for name in (*CAPTIONERS, CLIP_NAME):
        folder = root / name
        key = _manifest_key(profile, name, source_split.fingerprint, corpus)
        if name == CLIP_NAME:
            key["target_fingerprint"] = target_split.fingerprint
        if not force and cached_model(folder, key):
            say(console, f"[green]cached[/] {name}: {display_path(folder)}")
            built[name] = False
            continue
        if name == CLIP_NAME:
            manifest = build_clip(folder, source + list(target_split.train), profile, corpus, key, console, progress)
        else:
            manifest = build_captioner(name, folder, source, profile, corpus, key, console, progress)
        say(console, f"built {name}: loss {manifest['first_loss']:.2f} -> {manifest['final_loss']:.2f} "
                      f"in {manifest['pretrain_s']:.0f} s ({display_path(folder)})")
        built[name] = True
    return built
