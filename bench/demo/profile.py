"""What the demo builds and runs: names, the `full` and `fast` profiles, and small helpers."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import paths
from bench.config import Setting

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


def models_root(profile: Profile) -> Path:
    return paths.cache_dir() / profile.models_dir


def say(console: Any, message: str) -> None:
    """Print one line on the console, if there is one (the demo also runs without)."""
    if console is not None:
        console.print(message, highlight=False)


def display_path(path: Path) -> str:
    """The path relative to the project when it lies inside it (shorter lines in the terminal)."""
    try:
        return str(path.resolve().relative_to(paths.project_dir()))
    except ValueError:
        return str(path)
