"""Write well-formed run folders without a model (tests and benchmarks only; production code
never imports bench.testing).

`write_run(...)` lays out runs/<setting>/<backend>/ through the run-folder owner
(bench.run.folder), as `bench run` / `bench score --as-run` do (results.json last), from captions
you already have, e.g. a published system's outputs or a held-out human reference.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.io import append_records, atomic_write_text
from bench.run.folder import MetricsRecord, ResultsRecord, RunFolder, SplitRecord, SplitSample


def write_run(
    runs_root: Path,
    *,
    setting: str,
    backend: str,
    kind: str,
    dataset: str,
    fingerprint: str,
    samples: Sequence[Mapping[str, Any]],  # {"image_id", "path", "refs"}
    captions: Mapping[str, str],
    corpus: Mapping[str, float],
    per_image: Mapping[str, Mapping[str, float]] | None = None,
    prompt: str | None = None,
    prompt_text: str | None = None,
    model: str = "",
    config: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    timings: Mapping[str, Any] | None = None,
    memory: Mapping[str, Any] | None = None,
    loss_rows: Sequence[Mapping[str, float]] | None = None,
) -> Path:
    """Create a finished run folder and return it."""
    folder = RunFolder(runs_root / setting / backend)
    folder.path.mkdir(parents=True, exist_ok=True)
    cfg = dict(config or {})
    folder.write_config(cfg)
    folder.write_split(SplitRecord(dataset, fingerprint, tuple(
        SplitSample(s["image_id"], str(s.get("path") or ""), tuple(s["refs"])) for s in samples)))
    folder.predictions.unlink(missing_ok=True)
    append_records(folder.predictions, [{"image_id": s["image_id"], "caption": captions[s["image_id"]]} for s in samples])
    folder.write_metrics(MetricsRecord(dict(corpus), {k: dict(v) for k, v in (per_image or {}).items()}, len(samples)))
    if loss_rows is not None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["step", "epoch", "loss", "lr"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(loss_rows)
        atomic_write_text(folder.member("train") / "loss.csv", buf.getvalue())
    folder.write_results(ResultsRecord(
        run=f"{setting}/{backend}", setting=setting, backend=backend, kind=kind,
        prompt=prompt, prompt_text=prompt_text, model=model,
        dataset=dataset, fingerprint=fingerprint, n_images=len(samples),
        metrics=dict(corpus),
        params=dict(params) if params is not None else None,
        timings=dict(timings or {"train_s": 0.0, "generate_s": 0.0, "score_s": 0.0, "images_per_s": 0.0}),
        memory=dict(memory or {"peak_rss_mb": 0.0, "peak_cuda_mb": None}),
        versions={}, git_commit=None, created_at="2000-01-01T00:00:00Z",
        config=cfg,
    ))
    return folder.path


# --- run folders from real data ------------------------------------------------------------------

def coco_metrics(refs: Sequence[Sequence[str]], captions: Sequence[str], ids: Sequence[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """BLEU-1..4, ROUGE-L and CIDEr exactly as pycocoevalcap computes them (PTB tokens), with
    per-image ROUGE-L and CIDEr. METEOR is left out: its jar takes ~15 s to start."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from bench.report.tokens import ptb_tokenize

    flat = list(captions) + [r for rs in refs for r in rs]
    tok = iter(ptb_tokenize(flat))
    res = {i: [next(tok)] for i in ids}
    gts = {i: [next(tok) for _ in rs] for i, rs in zip(ids, refs)}
    bleu, _ = Bleu().compute_score(gts, res, verbose=0)
    cider, cider_each = Cider().compute_score(gts, res)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    corpus = {f"BLEU-{k + 1}": float(bleu[k]) for k in range(4)}
    corpus.update({"ROUGE-L": float(rouge), "CIDEr": float(cider)})
    per_image = {i: {"ROUGE-L": float(rouge_each[k]), "CIDEr": float(cider_each[k])} for k, i in enumerate(ids)}
    return corpus, per_image


def magic_run(runs_root: Path, system: str, data_dir: Path, *, limit: int | None = None) -> Path:
    """A published system's Flickr30k test outputs (external/magic-flickr30k/<system>.json) as an
    external run, scored with pycocoevalcap; there are no images, so no CLIPScore."""
    import json

    items = json.loads((data_dir / "external" / "magic-flickr30k" / f"{system}.json").read_text())[:limit]
    ids = [str(x["image_name"]).rsplit(".", 1)[0] for x in items]
    refs = [list(x["captions"]) for x in items]
    captions = [str(x["prediction"]) for x in items]
    corpus, per_image = coco_metrics(refs, captions, ids)
    return write_run(
        runs_root, setting=system, backend="external", kind="external", dataset="flickr30k-karpathy-test",
        fingerprint="magic-f30k-test", samples=[{"image_id": i, "path": "", "refs": r} for i, r in zip(ids, refs)],
        captions=dict(zip(ids, captions)), corpus=corpus, per_image=per_image, model=system,
    )


TOY_WORDS = "a dog cat man woman runs sits on the grass red ball street two people near water".split()


def toy_run(runs_root: Path, setting: str, seed: int, *, kind: str = "zero-shot", n_images: int = 30) -> Path:
    """A small finished run with no shared data: seeded sentences of a 16-word vocabulary (the
    same references for every seed, captions of its own, one repeating caption on im03), image
    paths under ${BENCH_SHARED_DATA}/photos/, seeded ROUGE-L and CLIPScore, a loss curve for LoRA."""
    import random

    def sentence(rng: random.Random) -> str:
        return " ".join(rng.choice(TOY_WORDS) for _ in range(rng.randint(3, 9))) + "."

    refs_rng, rng = random.Random(0), random.Random(seed)
    samples = [{"image_id": f"im{k:02d}", "path": "${BENCH_SHARED_DATA}/photos/" + f"im{k:02d}.jpg",
                "refs": [sentence(refs_rng) for _ in range(5)]} for k in range(n_images)]
    captions = {s["image_id"]: sentence(rng) for s in samples}
    captions["im03"] = "a dog a dog a dog on the grass"  # repeats: a degenerate caption
    per_image = {s["image_id"]: {"ROUGE-L": rng.random(), "CLIPScore": rng.random()} for s in samples}
    corpus = {m: sum(v[m] for v in per_image.values()) / n_images for m in ("ROUGE-L", "CLIPScore")}
    loss = [{"step": 1.0, "loss": 2.0}, {"step": 2.0, "loss": 1.5}] if kind == "lora" else None
    return write_run(runs_root, setting=setting, backend="vlm" if kind == "zero-shot" else "vit-gpt2", kind=kind,
                     dataset="toy", fingerprint="toy-split", samples=samples, captions=captions, corpus=corpus,
                     per_image=per_image, prompt="brief" if kind == "zero-shot" else None, loss_rows=loss)


def flickr8k_samples(data_dir: Path, n_images: int) -> list[dict[str, Any]]:
    """The first n Flickr8k-1k images with their 5 references, in captions.txt order."""
    import pandas as pd

    df = pd.read_csv(data_dir / "flickr8k-1k" / "captions.txt")
    out: list[dict[str, Any]] = []
    for name, group in df.groupby("image", sort=False):
        out.append({"image_id": str(name).rsplit(".", 1)[0], "path": str(data_dir / "flickr8k-1k" / "images" / str(name)),
                    "refs": [str(c).strip() for c in group["caption"]]})
        if len(out) == n_images:
            break
    return out


def held_out_run(
    runs_root: Path,
    samples: Sequence[Mapping[str, Any]],
    *,
    setting: str,
    backend: str,
    kind: str,
    captions: Mapping[str, str],
    seed: int,
    dataset: str = "flickr8k-1k",
    fingerprint: str = "flickr8k-heldout",
    **extra: Any,
) -> Path:
    """A run on Flickr8k images whose "captions" are real text (e.g. a held-out human reference)
    against the remaining references, scored with pycocoevalcap; per-image CLIPScore and
    RefCLIPScore are seeded stand-ins (no CLIP weights offline), so tests can rank images."""
    import numpy as np

    ids = [str(s["image_id"]) for s in samples]
    refs = [list(s["refs"]) for s in samples]
    corpus, per_image = coco_metrics(refs, [captions[i] for i in ids], ids)
    rng = np.random.default_rng(seed)
    clip = rng.uniform(0.4, 1.0, len(ids))
    ref_clip = (clip + rng.uniform(0.4, 1.0, len(ids))) / 2
    for k, i in enumerate(ids):
        per_image[i].update({"CLIPScore": float(clip[k]), "RefCLIPScore": float(ref_clip[k])})
    corpus.update({"CLIPScore": float(clip.mean()), "RefCLIPScore": float(ref_clip.mean())})
    return write_run(runs_root, setting=setting, backend=backend, kind=kind, dataset=dataset, fingerprint=fingerprint,
                     samples=samples, captions=captions, corpus=corpus, per_image=per_image, **extra)


def loss_curve(steps: int, start: float, end: float) -> list[dict[str, float]]:
    """A smooth decreasing training-loss log (train/loss.csv rows)."""
    return [{"step": s, "epoch": s // 10, "loss": end + (start - end) * 0.9**s, "lr": 1e-4} for s in range(1, steps + 1)]
