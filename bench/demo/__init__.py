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

from bench.demo.runner import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
