"""Compare scaling: `bench compare` wall time and peak RSS as runs x images grow, side by side.

Data: generated run folders with realistic caption vocabularies, made from the real outputs of the
10 published systems of the MAGIC paper on 1,000 Flickr30k images (5 references each, shared
data `external/magic-flickr30k/*.json`). Generated image k stands for a pair (s, t) of real
images: each of its 5 references is the first half of reference r of s followed by the second
half of reference r of t, and run m captions it with the first half of system m's caption of s
and the second half of a system's caption of t (runs 10-29 take that second half from another
system, so all 30 runs differ). So n-gram statistics, caption lengths and candidate-reference
overlap are those of real captions, at any number of images. Per-image ROUGE-L, CLIPScore and
RefCLIPScore are seeded stand-ins (a mean metric costs the same whatever its values); BLEU and
CIDEr are not recorded, so the report shows the values bench compare recomputes; no METEOR.
Folders are written by bench's test-only run writer.

Timed, each `python -m bench compare` in a fresh process as a user runs it, on cold folders
(PTB tokenization and the compare cache empty): 10 x 1,000, 10 x 5,000, 30 x 5,000, then a
re-compare of the 30 after adding a 31st run. Peak RSS is the largest resident set of the
command's process tree (wait4).

    python benchmarks/compare_scale.py [--sizes 10x1000,10x5000,30x5000] [--keep DIR]
    python benchmarks/compare_scale.py --generate DIR --runs 10 --images 5000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
N_REFS = 5
DATASET = "flickr30k-spliced"


def _systems(data_dir: Path) -> list[tuple[list[list[str]], list[str]]]:
    """(references, predictions) of every published system, aligned on the first one's images."""
    files = sorted((data_dir / "external" / "magic-flickr30k").glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{data_dir}/external/magic-flickr30k: no published outputs")
    out = []
    order: list[str] | None = None
    for f in files:
        items = {str(x["image_name"]): x for x in json.loads(f.read_text(encoding="utf-8"))}
        order = order or sorted(items)
        out.append(([list(items[i]["captions"])[:N_REFS] for i in order], [str(items[i]["prediction"]) for i in order]))
    return out


def _splice(a: str, b: str) -> str:
    x, y = a.split(), b.split()
    return " ".join(x[: len(x) // 2] + y[len(y) // 2 :])


def generate(runs_root: Path, n_runs: int, n_images: int, *, first: int = 0, seed: int = 0) -> list[Path]:
    """Write runs first .. first + n_runs - 1 of a generated n_images split under runs_root."""
    from bench.paths import shared_data_dir
    from bench.report.testing import write_run

    systems = _systems(shared_data_dir())
    refs, _ = systems[0]
    n_src = len(refs)
    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_src * n_src, size=n_images, replace=False)
    src, other = pairs // n_src, pairs % n_src
    ids = [f"g{k:05d}" for k in range(n_images)]
    samples = [
        {"image_id": ids[k], "path": "", "refs": [_splice(refs[s][r], refs[t][r]) for r in range(N_REFS)]}
        for k, (s, t) in enumerate(zip(src, other))
    ]
    folders = []
    for m in range(first, first + n_runs):
        a, b = systems[m % len(systems)][1], systems[(m + m // len(systems)) % len(systems)][1]
        captions = {ids[k]: _splice(a[s], b[t]) for k, (s, t) in enumerate(zip(src, other))}
        stand_in = np.random.default_rng([seed, m])
        clip = stand_in.uniform(0.4, 1.0, n_images)
        per_image = {
            i: {"ROUGE-L": float(r), "CLIPScore": float(c), "RefCLIPScore": float((c + x) / 2)}
            for i, r, c, x in zip(ids, stand_in.uniform(0.2, 0.7, n_images), clip, stand_in.uniform(0.4, 1.0, n_images))
        }
        corpus = {key: float(np.mean([v[key] for v in per_image.values()])) for key in ("ROUGE-L", "CLIPScore", "RefCLIPScore")}
        folders.append(write_run(
            runs_root, setting=f"sweep{m:02d}", backend="external", kind="external", dataset=DATASET,
            fingerprint=f"spliced-{n_images}-{seed}", samples=samples, captions=captions, corpus=corpus,
            per_image=per_image, model=f"system{m % len(systems)}",
        ))
    return folders


def _timed_compare(root: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS GB of the process tree) of one `bench compare`."""
    env = {**os.environ, "BENCH_RUNS": str(root / "runs"), "BENCH_CACHE": str(root / ".cache"),
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "bench", "compare", "--data", DATASET, "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"bench compare failed: {stderr.decode(errors='replace').strip()[-300:]}")
    return wall, usage.ru_maxrss / 2**20  # KiB -> GiB


def _size(text: str) -> tuple[int, int]:
    runs, images = text.lower().split("x")
    return int(runs), int(images)


def run(sizes: tuple[str, ...] = ("10x1000", "10x5000", "30x5000"), keep: Path | None = None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-compare-scale-")) if keep is None else keep
    out: dict[str, Any] = {"compare_scale_load_average": [round(x, 2) for x in os.getloadavg()]}
    try:
        for text in sizes:
            n_runs, n_images = _size(text)
            root = base / text
            shutil.rmtree(root, ignore_errors=True)
            generate(root / "runs", n_runs, n_images)
            wall, rss = _timed_compare(root, root / "report.md")
            out[f"compare_{text}_s"], out[f"compare_{text}_peak_rss_gb"] = round(wall, 1), round(rss, 2)
            if text == sizes[-1]:
                generate(root / "runs", 1, n_images, first=n_runs)
                wall, rss = _timed_compare(root, root / "report.md")
                out[f"recompare_{text}_plus1_s"], out[f"recompare_{text}_plus1_peak_rss_gb"] = round(wall, 1), round(rss, 2)
                out["recompare_fraction"] = round(wall / out[f"compare_{text}_s"], 3)
        if "compare_10x1000_s" in out and "compare_10x5000_s" in out:
            out["compare_ratio_10x5000_over_10x1000"] = round(out["compare_10x5000_s"] / out["compare_10x1000_s"], 2)
        out["compare_scale_load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10x1000,10x5000,30x5000", help="runs x images, comma-separated")
    parser.add_argument("--keep", type=Path, help="keep the generated folders and reports here")
    parser.add_argument("--generate", type=Path, help="only write generated runs into this runs folder")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--first", type=int, default=0, help="index of the first generated run")
    args = parser.parse_args()
    if args.generate is not None:
        for folder in generate(args.generate, args.runs, args.images, first=args.first):
            print(folder)
        return
    for key, value in run(tuple(args.sizes.split(",")), args.keep).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
