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
(nothing tokenized, the compare cache empty), one after the other in this one run: 10 x 1,000,
10 x 5,000, 30 x 5,000, then a re-compare of the 30 after adding a 31st run. Wall and CPU
seconds (user + system) and peak RSS are those of the command's process tree (wait4), with the
load average before each command: the machine is shared, so the CPU-time ratios are reported
beside the wall-time ones.

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
# The generated runs splice the published systems' real captions (run_all skips the section without them).
NEEDS_SHARED_DATA = ("external/magic-flickr30k",)


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
    from bench.testing.run_folders import write_run

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


def _timed_compare(root: Path, out: Path) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS GiB of one `bench compare`'s process
    tree, and the 1-minute load average before it."""
    env = {**os.environ, "BENCH_RUNS": str(root / "runs"), "BENCH_CACHE": str(root / ".cache"),
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "bench", "compare", "--data", DATASET, "--out", str(out)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"bench compare failed: {stderr.decode(errors='replace').strip()[-300:]}")
    # wait4 reports the child with its waited-for descendants (the PTB tokenizer's JVM).
    return {"s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "load_average": round(load, 2)}


def _size(text: str) -> tuple[int, int]:
    runs, images = text.lower().split("x")
    return int(runs), int(images)


SIZES = ("10x1000", "10x5000", "30x5000")
QUICK = ("2x200", "2x1000", "4x1000")


def run(sizes: tuple[str, ...] = SIZES, keep: Path | None = None) -> dict[str, Any]:
    """Every size on cold folders, one after the other, then the largest again after one more
    run; the ratio of the second size's time to the first's."""
    base = Path(tempfile.mkdtemp(prefix="bench-compare-scale-")) if keep is None else keep
    out: dict[str, Any] = {"compare_scale_sizes": list(sizes), "compare_scale": {}}
    table = out["compare_scale"]
    try:
        for text in sizes:
            n_runs, n_images = _size(text)
            root = base / text
            shutil.rmtree(root, ignore_errors=True)
            generate(root / "runs", n_runs, n_images)
            table[text] = _timed_compare(root, root / "report.md")
        n_runs, n_images = _size(sizes[-1])
        generate(base / sizes[-1] / "runs", 1, n_images, first=n_runs)
        table[f"{sizes[-1]}+1"] = _timed_compare(base / sizes[-1], base / sizes[-1] / "report.md")
    finally:
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)
    first, second, last = (table[k] for k in sizes[:2] + sizes[-1:])
    again = table[f"{sizes[-1]}+1"]
    out["compare_scale_ratio"] = round(second["s"] / first["s"], 2)
    out["compare_scale_cpu_ratio"] = round(second["cpu_s"] / first["cpu_s"], 2)
    out["compare_scale_recompare_fraction"] = round(again["s"] / last["s"], 3)
    out["compare_scale_recompare_cpu_fraction"] = round(again["cpu_s"] / last["cpu_s"], 3)
    return out


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """make bench's rows: (figure, value, how it was measured)."""
    table = r.get("compare_scale")
    if not table:
        return []
    sizes = r["compare_scale_sizes"]
    rows = []
    for text, v in table.items():
        runs, images = text.split("+")[0].split("x")
        what = f"bench compare, {int(runs)} runs x {int(images):,} images"
        what += ", re-compare after 1 more run" if text.endswith("+1") else ""
        rows.append((what, f"{v['s']:.1f} s, {v['peak_rss_gib']:.2f} GiB",
                     f"wall, peak RSS; {v['cpu_s']:.1f} CPU s; load average {v['load_average']}"))
    rows.append((f"compare time {sizes[1]} / {sizes[0]}", f"{r['compare_scale_ratio']:.2f}",
                 f"wall; CPU-time ratio {r['compare_scale_cpu_ratio']:.2f} (linear: images x5 -> <= 5.5)"))
    rows.append((f"re-compare +1 run / first compare, {sizes[-1]}", f"{r['compare_scale_recompare_fraction']:.3f}",
                 f"wall; CPU-time fraction {r['compare_scale_recompare_cpu_fraction']:.3f} (target < 0.2)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="runs x images, comma-separated (at least two)")
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
    result = run(tuple(args.sizes.split(",")), args.keep)
    print(json.dumps(result, indent=2))
    for row in summary_rows(result):
        print(" | ".join(row))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
