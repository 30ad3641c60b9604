"""Bootstrap speed: 95% CIs of every metric of one 1,000-image run with 1,000 resamples.

Data: the 1,000 Flickr8k images of the shared data; each image's first reference is the
"prediction" and the other four are its references (PTB-tokenized once, outside the timing).
Timed: everything `bench compare` does per run after tokenization: the n-gram tables, CIDEr with
document frequencies recomputed on every resample, BLEU-1..4, and the means of METEOR, ROUGE-L,
CLIPScore and RefCLIPScore per-image scores. Target: < 30 s on 2 CPU cores.

Side by side, in the same run: pycocoevalcap's own Cider + Bleu on a few resampled lists (the
obvious loop), extrapolated to 1,000 resamples, for the speed-up ratio.

    python benchmarks/bootstrap.py [--resamples N] [--naive K]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from typing import Any

import numpy as np

from bench.paths import shared_data_dir

# What `make bench` checks before running this section (benchmarks/run_all.py skips it, named,
# when a path is absent under BENCH_SHARED_DATA / BENCH_SHARED_MODELS).
NEEDS_SHARED_DATA = ("flickr8k-1k/captions.txt", "flickr8k-1k/images")

N_BOOT = 1000


def load_tokenized() -> tuple[list[list[str]], list[str]]:
    from bench.data import read_references
    from bench.report.tokens import ptb_tokenize

    entries = read_references(shared_data_dir() / "flickr8k-1k" / "captions.txt")
    flat = [e.refs[0] for e in entries] + [r for e in entries for r in e.refs[1:]]
    tok = iter(ptb_tokenize(flat))
    cands = [next(tok) for _ in entries]
    refs = [[next(tok) for _ in e.refs[1:]] for e in entries]
    return refs, cands


def time_vectorised(refs: list[list[str]], cands: list[str], n_boot: int) -> tuple[float, Any]:
    from bench.report.bootstrap import RunInput, bootstrap, rouge_per_image

    rng = np.random.default_rng(0)
    n = len(refs)
    per_image = {
        "ROUGE-L": rouge_per_image(refs, cands),
        "METEOR": rng.uniform(0, 0.5, n),  # the cost of a mean metric does not depend on its values
        "CLIPScore": rng.uniform(0.4, 1.0, n),
        "RefCLIPScore": rng.uniform(0.4, 1.0, n),
    }
    start = time.perf_counter()
    result = bootstrap(refs, [RunInput("run", cands, per_image)], n_boot=n_boot, seed=0)
    cis = {m: result.ci("run", m) for m in result.samples["run"]}
    return time.perf_counter() - start, cis


def time_naive(refs: list[list[str]], cands: list[str], k: int) -> float:
    """Seconds per resample of pycocoevalcap's Cider + Bleu on the resampled lists."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    from bench.report.bootstrap import resample_counts

    counts = resample_counts(len(refs), k, 0)
    start = time.perf_counter()
    for row in counts:
        gts, res = {}, {}
        for i, c in enumerate(row):
            for copy in range(int(c)):
                gts[f"{i}#{copy}"], res[f"{i}#{copy}"] = refs[i], [cands[i]]
        Cider().compute_score(gts, res)
        with contextlib.redirect_stdout(io.StringIO()):
            Bleu(4).compute_score(gts, res)
    return (time.perf_counter() - start) / k


def run(n_boot: int = N_BOOT, naive: int = 3) -> dict[str, Any]:
    refs, cands = load_tokenized()
    seconds, cis = time_vectorised(refs, cands, n_boot)
    per_resample = time_naive(refs, cands, naive)
    out = {
        "bootstrap_seconds_1000x1000": round(seconds * N_BOOT / n_boot, 2),
        "n_images": len(refs),
        "resamples_timed": n_boot,
        "naive_pycocoevalcap_seconds_per_resample": round(per_resample, 3),
        "speedup_vs_naive": round(per_resample * n_boot / seconds, 1),
        "cider_ci": [round(x, 4) for x in cis["CIDEr"]],
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=N_BOOT)
    parser.add_argument("--naive", type=int, default=3, help="resamples timed with pycocoevalcap itself")
    args = parser.parse_args()
    result = run(args.resamples, args.naive)
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
