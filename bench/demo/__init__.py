"""`bench demo`: the whole comparison, offline, on the built-in synthetic shapes world, in minutes.

    1. datasets   `synth` (the target world, scored) and `synth-source` (other colours and shapes)
                  are generated into BENCH_CACHE through bench.data.
    2. models     tiny ViT-GPT2, CLIP+Flan-T5 and LLaVA from the backends' tiny builders (their
                  tokenizers trained on synthetic captions), each PRETRAINED with full fine-tuning
                  on the source world, and a tiny CLIP trained contrastively on both worlds for
                  CLIPScore; saved with save_pretrained under BENCH_CACHE/demo-models/<name>/ and
                  reused while their manifest matches.
    3. runs       the `demo` group of settings/ (zero-shot LLaVA with two prompts, LoRA settings
                  on both LoRA backends) through bench.run, into the normal run registry.
    4. report     bench.report.build_report over the demo runs -> reports/demo.md (+ demo.json),
                  its leaderboard in the terminal and a verdict computed from the report data.

Zero-shot thus means "a base that knows a related world but not this one": the LLaVA rows show
what pretraining on the source world gives without adaptation, the LoRA rows what a small adapter
trained on the target world's train split adds. Everything is seeded and runs single-threaded,
so a second demo on the same machine gives the same numbers.

The steps live in their own modules: `profile` (names, the `full`/`fast` profiles), `pretrain`
(the training loop and each backend's pretraining loss), `models` (the cached demo models),
`runner` (the runs of the demo group and the whole demo), `report` and `verdict`.
"""

from __future__ import annotations

from bench.demo.models import build_captioner, build_clip, cached_model, ensure_models
from bench.demo.pretrain import PRETRAIN, optimize
from bench.demo.profile import (
    BUILD_VERSION,
    CAPTIONERS,
    CLIP_NAME,
    CORPUS_SCENES,
    CORPUS_SEED,
    DEMO_GROUP,
    FAST,
    FULL,
    MANIFEST,
    SEED,
    SOURCE_DATASET,
    TARGET_DATASET,
    Profile,
    demo_threads,
    demo_workers,
    for_profile,
    models_root,
    prompt_names,
    tokenizer_corpus,
)
from bench.demo.report import make_report, report_note
from bench.demo.runner import DemoResult, _stale, demo_settings, run_demo, run_demo_settings
from bench.demo.verdict import Verdict, verdict_from_report

__all__ = [
    "BUILD_VERSION",
    "CAPTIONERS",
    "CLIP_NAME",
    "CORPUS_SCENES",
    "CORPUS_SEED",
    "DEMO_GROUP",
    "FAST",
    "FULL",
    "MANIFEST",
    "PRETRAIN",
    "SEED",
    "SOURCE_DATASET",
    "TARGET_DATASET",
    "DemoResult",
    "Profile",
    "Verdict",
    "_stale",
    "build_captioner",
    "build_clip",
    "cached_model",
    "demo_settings",
    "demo_threads",
    "demo_workers",
    "ensure_models",
    "for_profile",
    "make_report",
    "models_root",
    "optimize",
    "prompt_names",
    "report_note",
    "run_demo",
    "run_demo_settings",
    "tokenizer_corpus",
    "verdict_from_report",
]
