"""`bench demo`: the whole comparison, offline, on the built-in synthetic shapes world, in minutes.

    1. datasets   `synth` (the target world, scored) and `synth-source` (other colours and shapes)
                  are generated into BENCH_CACHE through bench.data.
    2. models     tiny ViT-GPT2, CLIP+Flan-T5 and LLaVA from the backends' tiny builders (their
                  tokenizers trained on synthetic captions), each PRETRAINED with full fine-tuning
                  on the source world, and a tiny CLIP trained contrastively on both worlds for
                  CLIPScore; saved with save_pretrained under BENCH_CACHE/demo-models/<name>/ and
                  reused while their manifest matches.
    3. runs       the `demo` group of settings/ (zero-shot LLaVA with two prompts, LoRA settings
                  on both LoRA backends) through bench.runs, into the normal run registry.
    4. report     bench.report.build_report over the demo runs -> reports/demo.md (+ demo.json),
                  its leaderboard in the terminal and a verdict computed from the report data.

Zero-shot thus means "a base that knows a related world but not this one": the LLaVA rows show
what pretraining on the source world gives without adaptation, the LoRA rows what a small adapter
trained on the target world's train split adds. Everything is seeded and runs single-threaded,
so a second demo on the same machine gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import paths
from bench.config import Setting
from bench.errors import BenchError
from bench.io import atomic_write_json, atomic_write_text, read_json

DEMO_GROUP = "demo"
TARGET_DATASET = "synth"
SOURCE_DATASET = "synth-source"
CAPTIONERS = ("vit-gpt2", "clip-flan-t5", "llava")
CLIP_NAME = "clip"
MANIFEST = "demo_manifest.json"
# Bump when the way demo models are built or pretrained changes: cached models are rebuilt.
BUILD_VERSION = 1
SEED = 0
# Scenes (per variant) whose captions train the tiny tokenizers: a seed of their own, so the
# tokenizers depend on the synthetic world's wording, not on any dataset split.
CORPUS_SCENES, CORPUS_SEED = 200, 1


@dataclass(frozen=True)
class Profile:
    """How much work the demo does: `full` for `make demo`, `fast` for the test suite."""

    name: str
    models_dir: str  # folder under BENCH_CACHE holding the demo models
    pretrain_steps: int  # full fine-tuning steps of each captioner on the source world
    pretrain_lr: float
    clip_steps: int  # contrastive steps of the CLIPScore model
    clip_lr: float
    batch_size: int
    val_limit: int | None  # validation images captioned and scored (None: the whole split)
    train_size: int | None  # LoRA training images (None: what the setting says)
    metrics: tuple[str, ...] | None = None  # scoring metrics (None: what the setting says)

    def build_key(self) -> dict[str, Any]:
        """What a cached model must have been built with to be reused."""
        return {
            "version": BUILD_VERSION,
            "seed": SEED,
            "pretrain_steps": self.pretrain_steps,
            "pretrain_lr": self.pretrain_lr,
            "clip_steps": self.clip_steps,
            "clip_lr": self.clip_lr,
            "batch_size": self.batch_size,
        }


FULL = Profile("full", "demo-models", 300, 3e-3, 300, 2e-3, 32, None, None)
# The test suite's demo: half the pretraining, a briefly trained CLIP, LoRA on 200 instead of
# 300 training images, and no METEOR (its JVM loads a paraphrase table for ~10 s, more than the
# rest of the scoring of every run together). It still scores all 100 validation images: fewer
# would widen the intervals the verdict compares.
FAST = Profile("fast", "demo-models-fast", 150, 3e-3, 40, 3e-3, 32, None, 200,
               metrics=("bleu", "rouge", "cider", "clipscore"))


@dataclass(frozen=True)
class Verdict:
    lora_beats_zero_shot: bool  # every LoRA run's CIDEr CI lies above every zero-shot run's
    lora_settings_differ: bool  # on each LoRA backend, the LoRA settings score different CIDEr
    lines: tuple[str, ...]


@dataclass(frozen=True)
class DemoResult:
    report: Path
    json: Path
    verdict: Verdict
    runs: tuple[str, ...]
    timings: dict[str, float]  # seconds per step
    report_result: Any  # bench.report.ReportResult


# --- small pure helpers ----------------------------------------------------------------------------

def demo_threads() -> int:
    """Intra-op threads for the demo: one.

    The demo models are tiny (hidden size 32-64), so more threads only add synchronisation, and on
    a shared 2-core machine a second thread spins against the DataLoader worker and everyone
    else's processes (measured: a pretraining step 15x slower with 2 threads under load).
    """
    return 1


def demo_workers() -> int:
    """DataLoader workers decoding images beside the (single-threaded) model: one per spare core."""
    return max(0, min(2, (os.cpu_count() or 1) - 1))


def tokenizer_corpus() -> tuple[str, ...]:
    """Captions of both synthetic worlds: the tiny tokenizers are trained on them, so every word
    of either world is one or two tokens (a real LM's vocabulary covers both worlds too; what the
    base does not know is what the target words look like)."""
    from bench.data.synth import VARIANTS, make_scene, scene_captions, vocabulary

    texts = [" ".join(vocabulary())]
    for variant in sorted(VARIANTS):
        for i in range(CORPUS_SCENES):
            texts += scene_captions(make_scene(variant, CORPUS_SEED, i), variant, CORPUS_SEED, i)
    return tuple(texts)


def prompt_names() -> list[str]:
    return sorted(p.stem for p in paths.prompts_dir().glob("*.toml"))


def for_profile(setting: Setting, profile: Profile) -> Setting:
    """The setting with this profile's model folders and LoRA training size."""
    if profile.models_dir != FULL.models_dir:
        old = str(paths.cache_dir() / FULL.models_dir)
        new = str(paths.cache_dir() / profile.models_dir)

        def moved(value: Any) -> Any:
            inside = isinstance(value, str) and (value == old or value.startswith(old + os.sep))
            return new + value[len(old):] if inside else value

        models = {
            b: dataclasses.replace(m, model=moved(m.model), options={k: moved(v) for k, v in m.options.items()})
            for b, m in setting.models.items()
        }
        scoring = dataclasses.replace(setting.scoring, clip_model=moved(setting.scoring.clip_model))
        setting = dataclasses.replace(setting, models=models, scoring=scoring)
    if profile.train_size is not None:
        setting = dataclasses.replace(setting, train=dataclasses.replace(setting.train, train_size=profile.train_size))
    if profile.metrics is not None:
        setting = dataclasses.replace(setting, scoring=dataclasses.replace(setting.scoring, metrics=profile.metrics))
    return setting


def verdict_from_report(payload: dict[str, Any]) -> Verdict:
    """The demo's claims checked on the report's own numbers (bench compare's JSON).

    Uses the first section (the demo runs all score the same images).
    """
    if not payload.get("sections"):
        raise BenchError("demo report JSON: key 'sections' is empty")
    runs = payload["sections"][0]["runs"]

    def cider(run: dict[str, Any]) -> dict[str, float]:
        m = run["metrics"].get("CIDEr")
        if m is None or m.get("lo") is None:
            raise BenchError(f"demo report JSON: run {run['run']!r} has no CIDEr interval")
        return m

    zero = [r for r in runs if r["kind"] == "zero-shot"]
    lora = [r for r in runs if r["kind"] == "lora"]
    lines: list[str] = []
    if not zero or not lora:
        return Verdict(False, False, ("the report needs zero-shot and LoRA runs for a verdict",))
    best_zero = max(zero, key=lambda r: cider(r)["hi"])
    worst_lora = min(lora, key=lambda r: cider(r)["lo"])
    beats = cider(worst_lora)["lo"] > cider(best_zero)["hi"]
    lines.append(
        f"LoRA beats zero-shot on CIDEr with non-overlapping 95% CIs: {'yes' if beats else 'no'} "
        f"(lowest LoRA lower bound {cider(worst_lora)['lo']:.3f}, {worst_lora['run']}; "
        f"highest zero-shot upper bound {cider(best_zero)['hi']:.3f}, {best_zero['run']})"
    )
    by_backend: dict[str, dict[str, float]] = {}
    for r in lora:
        by_backend.setdefault(r["backend"], {})[r["setting"]] = cider(r)["value"]
    differ = all(len(v) >= 2 and len(set(v.values())) == len(v) for v in by_backend.values())
    detail = "; ".join(
        f"{b}: " + " vs ".join(f"{s} {c:.3f}" for s, c in sorted(v.items())) for b, v in sorted(by_backend.items())
    )
    lines.append(f"The LoRA settings differ on CIDEr: {'yes' if differ else 'no'} ({detail})")
    return Verdict(beats, differ, tuple(lines))


# --- model cache -----------------------------------------------------------------------------------

def models_root(profile: Profile) -> Path:
    return paths.cache_dir() / profile.models_dir


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


# --- pretraining ---------------------------------------------------------------------------------

def _progress(console: Any, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


def optimize(
    params: Sequence[Any],
    step_loss: Callable[[Any], Any],
    n_items: int,
    steps: int,
    lr: float,
    batch_size: int,
    label: str,
    console: Any = None,
    progress: bool = True,
) -> list[float]:
    """A plain training loop: AdamW, 5% linear warmup then linear decay, gradient clipping.

    `step_loss(indices)` returns the loss of one batch (indices drawn with a seeded generator).
    Returns the loss of every step.
    """
    import torch

    from bench.training import LinearWarmupDecay

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LinearWarmupDecay(max(1, steps // 20), steps))
    generator = torch.Generator().manual_seed(SEED)
    losses: list[float] = []
    with _progress(console, progress) as bar:
        task = bar.add_task(label, total=steps, loss="-")
        for _ in range(steps):
            indices = torch.randint(n_items, (batch_size,), generator=generator)
            loss = step_loss(indices)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise BenchError(f"demo pretraining of {label}: the loss became {value}")
            losses.append(value)
            bar.update(task, advance=1, loss=f"{value:.3f}")
    return losses


def _pixels(processor: Any, samples: Sequence[Any]) -> Any:
    """All images of `samples` through an image processor, once (the demo images are 64 px)."""
    from bench.data import load_image

    images = [load_image(s.path) for s in samples]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def _pairs(samples: Sequence[Any]) -> list[tuple[int, str]]:
    return [(i, ref) for i, s in enumerate(samples) for ref in s.refs]


def _pretrain_vit_gpt2(captioner: Any, source: Sequence[Any], profile: Profile, console: Any, progress: bool) -> list[float]:
    from bench.backends._lora import labels_from

    pixels = _pixels(captioner.processor, source)
    pairs = _pairs(source)
    model = captioner.model
    model.requires_grad_(True)
    model.train()
    tok = captioner.tokenizer

    def step_loss(indices: Any) -> Any:
        chosen = [pairs[int(k)] for k in indices]
        labels = labels_from(tok, [c for _, c in chosen], tok.eos_token_id, 64)
        return captioner.loss({"pixel_values": pixels[[i for i, _ in chosen]], "labels": labels})

    params = [p for p in model.parameters() if p.requires_grad]
    losses = optimize(params, step_loss, len(pairs), profile.pretrain_steps, profile.pretrain_lr,
                      profile.batch_size, "pretrain vit-gpt2", console, progress)
    model.eval()
    return losses


def _pretrain_clip_flan_t5(captioner: Any, source: Sequence[Any], profile: Profile, console: Any, progress: bool) -> list[float]:
    """Full fine-tuning of the CLIP tower and T5; the projection stays at the backend's seeded
    initialisation, which is what every later load starts from (it is trained with the LoRA)."""
    import torch

    from bench.backends._lora import labels_from

    pixels = _pixels(captioner.processor, source)
    pairs = _pairs(source)
    model = captioner.model
    model.vision.requires_grad_(True)
    model.t5.requires_grad_(True)
    model.projection.requires_grad_(False)
    model.train()
    model.vision.train()  # ClipT5.train keeps the tower in eval mode for LoRA; here it is trained
    tok = captioner.tokenizer

    def step_loss(indices: Any) -> Any:
        chosen = [pairs[int(k)] for k in indices]
        labels = labels_from(tok, [c for _, c in chosen], tok.eos_token_id, 64)
        # ClipT5.forward runs the frozen tower under no_grad; pretraining needs its gradients.
        embeds = model.projection(model.vision(pixel_values=pixels[[i for i, _ in chosen]]).last_hidden_state)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        return model.t5(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    params = [p for p in model.parameters() if p.requires_grad]
    losses = optimize(params, step_loss, len(pairs), profile.pretrain_steps, profile.pretrain_lr,
                      profile.batch_size, "pretrain clip-flan-t5", console, progress)
    model.eval()
    return losses


def _pretrain_llava(captioner: Any, source: Sequence[Any], profile: Profile, console: Any, progress: bool) -> list[float]:
    """Instruction-style pretraining: "USER: <image>\\n<prompt> ASSISTANT: <caption></s>", the
    prompt cycling over every shipped prompt file, loss on the caption tokens only."""
    import torch

    from bench.backends.llava import render_prompt
    from bench.data import load_image
    from bench.prompts import load_prompt

    processor = captioner.processor
    tok = processor.tokenizer
    pixels = _pixels(processor.image_processor, source)
    first = load_image(source[0].path)
    # Prompt ids with the image placeholder expanded, exactly as captioning will feed them.
    prompt_ids = [
        processor(images=first, text=render_prompt(processor, load_prompt(name)), return_tensors="pt")["input_ids"][0].tolist()
        for name in prompt_names()
    ]
    pairs = _pairs(source)
    caption_ids = {c: tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, c in pairs}
    model = captioner.model
    model.requires_grad_(True)
    model.train()
    step = [0]

    def step_loss(indices: Any) -> Any:
        rows: list[tuple[list[int], list[int]]] = []
        for j, k in enumerate(indices):
            prompt = prompt_ids[(step[0] * len(indices) + j) % len(prompt_ids)]
            caption = caption_ids[pairs[int(k)][1]]
            rows.append((prompt + caption, [-100] * len(prompt) + caption))
        step[0] += 1
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, (ids, lab) in enumerate(rows):  # right padding: training needs no generation offset
            input_ids[j, : len(ids)] = torch.tensor(ids)
            labels[j, : len(lab)] = torch.tensor(lab)
            mask[j, : len(ids)] = 1
        batch_pixels = pixels[[pairs[int(k)][0] for k in indices]].to(captioner.dtype)
        return model(input_ids=input_ids, attention_mask=mask, pixel_values=batch_pixels, labels=labels).loss

    params = [p for p in model.parameters() if p.requires_grad]
    losses = optimize(params, step_loss, len(pairs), profile.pretrain_steps, profile.pretrain_lr,
                      profile.batch_size, "pretrain llava", console, progress)
    model.eval()
    return losses


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


PRETRAIN: dict[str, Callable[..., list[float]]] = {
    "vit-gpt2": _pretrain_vit_gpt2,
    "clip-flan-t5": _pretrain_clip_flan_t5,
    "llava": _pretrain_llava,
}


def build_captioner(name: str, folder: Path, source: Sequence[Any], profile: Profile, corpus: tuple[str, ...],
                    key: dict[str, Any], console: Any = None, progress: bool = True) -> dict[str, Any]:
    """Build, pretrain on the source world and save one demo captioner; returns its manifest."""
    import torch

    from bench.backends import get_backend
    from bench.config import ModelConfig

    tmp = _fresh_tmp(folder)
    _build_tiny(name, tmp, corpus)
    torch.manual_seed(SEED)
    # Loaded through the backend like any checkpoint, so pretraining sees what runs will see.
    captioner = get_backend(name).load(ModelConfig(model=str(tmp)), torch.device("cpu"), prompt=None)
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
    pixels = _pixels(processor.image_processor, images)
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
            _say(console, f"[green]cached[/] {name}: {_label(folder)}")
            built[name] = False
            continue
        if name == CLIP_NAME:
            manifest = build_clip(folder, source + list(target_split.train), profile, corpus, key, console, progress)
        else:
            manifest = build_captioner(name, folder, source, profile, corpus, key, console, progress)
        _say(console, f"built {name}: loss {manifest['first_loss']:.2f} -> {manifest['final_loss']:.2f} "
                      f"in {manifest['pretrain_s']:.0f} s ({_label(folder)})")
        built[name] = True
    return built


# --- runs and report -----------------------------------------------------------------------------

def _say(console: Any, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False)


def _label(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(paths.project_dir()))
    except ValueError:
        return str(path)


def demo_settings(profile: Profile) -> list[Setting]:
    from bench.settings import settings_in_group

    settings = [for_profile(s, profile) for s in settings_in_group(DEMO_GROUP)]
    for s in settings:
        if s.data.dataset != TARGET_DATASET:
            raise BenchError(f"{s.source}: data.dataset must be {TARGET_DATASET!r} for a demo setting, got {s.data.dataset!r}")
    return settings


def _stale(plan: Any, model_dirs: Sequence[Path]) -> str | None:
    """Why a finished demo run must be recomputed: a different config in its folder (e.g. a --fast
    demo ran there before), or a model it used rebuilt after it finished."""
    from bench.runs import config_diff

    results_path = plan.run_dir / "results.json"
    config_path = plan.run_dir / "config.json"
    if results_path.is_file():
        results = read_json(results_path)
        if config_diff(results.get("config", {}), plan.config) or results.get("fingerprint") != plan.split.fingerprint:
            return "it holds a run of another demo configuration"
        finished = results_path.stat().st_mtime
        for folder in model_dirs:
            manifest = folder / MANIFEST
            if manifest.is_file() and manifest.stat().st_mtime > finished:
                return f"its model {folder.name} was rebuilt since"
        return None
    if config_path.is_file() and config_diff(read_json(config_path), plan.config):
        return "it holds a partial run of another demo configuration"
    return None


def run_demo_settings(profile: Profile, *, force: bool = False, console: Any = None, progress: bool = True) -> list[Any]:
    """Every (setting, backend) of the demo group through bench.runs, sharing one scorer pool."""
    from bench.runs import ScorerPool, execute_plan, plan_run

    plans = []
    splits: dict[Any, Any] = {}
    for setting in demo_settings(profile):
        plans += [plan_run(setting, b, limit=profile.val_limit, splits=splits) for b in setting.backends]
    root = models_root(profile)
    results = []
    with ScorerPool() as scorers:
        for k, plan in enumerate(plans, start=1):
            if console is not None:
                from rich.markup import escape

                console.rule(f"[bold]run {k}/{len(plans)}: {escape(plan.name)}[/]")
            deps = [root / plan.backend, root / CLIP_NAME]
            why = None if force else _stale(plan, deps)
            if why:
                _say(console, f"recomputing {plan.name}: {why}")
            result = execute_plan(
                plan, force=force or why is not None, device="cpu", progress=progress,
                num_workers=demo_workers(), console=console, scorers=scorers,
            )
            m = result.results.get("metrics", {})
            state = "cached" if result.cached else "done"
            _say(console, f"{state}: CIDEr {m.get('CIDEr', float('nan')):.3f}, CLIPScore {m.get('CLIPScore', float('nan')):.3f}")
            results.append(result)
    return results


def report_note(profile: Profile, manifests: dict[str, dict[str, Any]]) -> str:
    """The paragraph the demo adds under the report's title: what the models are."""
    clip = manifests.get(CLIP_NAME, {})
    return (
        "About this demo (written by `bench demo`): every model is tiny and built offline. The zero-shot "
        f"LLaVA and the two LoRA backends start from bases pretrained with full fine-tuning on `{SOURCE_DATASET}` "
        "(other colours and shapes than the scored world), so the zero-shot rows show what a base that knows "
        "a related world captions without adaptation, and the LoRA rows what an adapter trained on "
        f"`{TARGET_DATASET}`'s train split adds. CLIPScore and RefCLIPScore come from a tiny CLIP trained "
        f"contrastively ({clip.get('steps', '?')} steps) on the train images of both worlds, not from "
        f"OpenAI's CLIP, so they are only comparable within this report. Profile: {profile.name}.\n"
    )


def _add_note(markdown: Path, note: str) -> None:
    """Insert the demo's note after the report's title line (atomically, like every write)."""
    lines = markdown.read_text(encoding="utf-8").split("\n")
    at = 1 if lines and lines[0].startswith("# ") else 0
    atomic_write_text(markdown, "\n".join(lines[:at] + ["", note.rstrip("\n")] + lines[at:]))


def make_report(out: Path, profile: Profile, *, console: Any = None, progress: bool = True) -> tuple[Any, Path, Verdict]:
    """`bench compare --data synth --runs 'demo_*' --out OUT --json OUT.json`, the demo's note
    added under the title, and the verdict read back from the JSON."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.report import build_report

    json_out = out.with_suffix(".json")
    with Progress(TextColumn("bootstrap {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not progress, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def advance(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        result = build_report(
            paths.runs_dir(), out, dataset=TARGET_DATASET, runs_glob="demo_*", json_out=json_out, progress=advance
        )
    manifests = {}
    for name in (*CAPTIONERS, CLIP_NAME):
        path = models_root(profile) / name / MANIFEST
        if path.is_file():
            manifests[name] = read_json(path)
    _add_note(out, report_note(profile, manifests))
    verdict = verdict_from_report(json.loads(json_out.read_text(encoding="utf-8")))
    return result, json_out, verdict


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No per-file "Loading weights" / "Writing model shards" bars and warnings from transformers
    while the demo saves and loads its tiny models dozens of times (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def run_demo(out: Path, *, fast: bool = False, force: bool = False, console: Any = None, progress: bool = True) -> DemoResult:
    """The whole demo (see module doc); returns the report paths and the verdict."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(demo_threads())
    try:
        with _quiet_transformers():
            return _run_demo(out, FAST if fast else FULL, force, console, progress)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, profile: Profile, force: bool, console: Any, progress: bool) -> DemoResult:
    from bench.data import load_dataset, make_split

    timings: dict[str, float] = {}

    def step(title: str) -> float:
        if console is not None:
            console.rule(f"[bold cyan]{title}[/]")
        return time.perf_counter()

    t = step(f"1/4 synthetic datasets ({TARGET_DATASET}, {SOURCE_DATASET})")
    target = make_split(load_dataset(TARGET_DATASET, progress=progress))
    source = make_split(load_dataset(SOURCE_DATASET, progress=progress))
    _say(console, f"{TARGET_DATASET}: {len(target.train)} train / {len(target.val)} val images; "
                  f"{SOURCE_DATASET}: {len(source.train)} train images")
    timings["datasets"] = time.perf_counter() - t

    t = step(f"2/4 demo models ({_label(models_root(profile))})")
    ensure_models(profile, source, target, force=force, console=console, progress=progress)
    timings["models"] = time.perf_counter() - t

    t = step(f"3/4 runs of group {DEMO_GROUP!r}")
    results = run_demo_settings(profile, force=force, console=console, progress=progress)
    timings["runs"] = time.perf_counter() - t

    t = step("4/4 report")
    report, json_out, verdict = make_report(out, profile, console=console, progress=progress)
    timings["report"] = time.perf_counter() - t
    return DemoResult(out, json_out, verdict, tuple(r.name for r in results), timings, report)
