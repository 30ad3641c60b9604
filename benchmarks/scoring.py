"""Scoring speed: `bench.scoring.scorer.Scorer` (BLEU, METEOR, ROUGE-L, CIDEr; no CLIP) vs pycocoevalcap's
scorers alone, called the way COCOEvalCap.evaluate() calls them, side by side in one run.

Data: the 1,000 Flickr8k images of the shared data; each image's first reference is the
"prediction" and the other four are its references. Both sides start their own METEOR JVM and
PTB tokenizer, as a user's run would. The two are run alternately `repeats` times; the ratio is
of the medians (and, less sensitive to other load, of the fastest runs).

    python benchmarks/scoring.py [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from typing import Any

from bench.paths import shared_data_dir

TEXT_METRICS = ("bleu", "meteor", "rouge", "cider")


def load_flickr8k() -> tuple[dict[str, str], dict[str, list[str]]]:
    from bench.data import read_references

    entries = read_references(shared_data_dir() / "flickr8k-1k" / "captions.txt")
    preds = {e.image_id: e.refs[0] for e in entries}
    refs = {e.image_id: list(e.refs[1:]) for e in entries}
    return preds, refs


def time_bench(preds: dict[str, str], refs: dict[str, list[str]]) -> tuple[float, dict[str, float]]:
    from bench.scoring.scorer import Scorer

    start = time.perf_counter()
    with Scorer(metrics=TEXT_METRICS) as scorer:
        result = scorer.score(preds, refs, progress=False)
    return time.perf_counter() - start, result.corpus


def time_pycocoevalcap(preds: dict[str, str], refs: dict[str, list[str]]) -> tuple[float, dict[str, float]]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    start = time.perf_counter()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tokenizer.tokenize({k: [{"caption": preds[k]}] for k in refs})
    out: dict[str, float] = {}
    meteor = Meteor()
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints; the other side silences it too
        for scorer, keys in (
            (Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]),
            (meteor, ["METEOR"]),
            (Rouge(), ["ROUGE-L"]),
            (Cider(), ["CIDEr"]),
        ):
            score, _ = scorer.compute_score(gts, res)
            out.update(zip(keys, score if len(keys) > 1 else [score]))
    with meteor.lock:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    return time.perf_counter() - start, {k: float(v) for k, v in out.items()}


def run(repeats: int = 3) -> dict[str, Any]:
    preds, refs = load_flickr8k()
    bench_s: list[float] = []
    ref_s: list[float] = []
    max_diff = 0.0
    for _ in range(repeats):
        t_ref, expected = time_pycocoevalcap(preds, refs)
        t_bench, got = time_bench(preds, refs)
        ref_s.append(t_ref)
        bench_s.append(t_bench)
        max_diff = max(max_diff, max(abs(got[k] - expected[k]) for k in expected))
    bench_med, ref_med = statistics.median(bench_s), statistics.median(ref_s)
    return {
        "scoring_vs_pycocoevalcap_ratio": round(bench_med / ref_med, 3),
        # Fastest run of each: least disturbed by other processes on a shared machine.
        "scoring_vs_pycocoevalcap_ratio_best": round(min(bench_s) / min(ref_s), 3),
        "scoring_bench_s": round(bench_med, 3),
        "scoring_pycocoevalcap_s": round(ref_med, 3),
        "scoring_bench_runs_s": [round(t, 3) for t in bench_s],
        "scoring_pycocoevalcap_runs_s": [round(t, 3) for t in ref_s],
        "scoring_n_images": len(refs),
        "scoring_max_abs_diff": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = run(args.repeats)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Scoring {result['scoring_n_images']} images (BLEU, METEOR, ROUGE-L, CIDEr)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)


if __name__ == "__main__":
    main()
