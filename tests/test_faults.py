"""Fault tests (issue 9): SIGKILL at seeded points of a tiny LoRA run, then resume; a full disk.

Every run here is a real `bench run` process. To keep eight kills affordable on a 2-core machine,
the processes are forked from a "zygote" that imported torch/transformers/bench once (like a fork
server): each child is a fresh process that runs `bench.cli.main`, holds its own run lock and dies
by SIGKILL exactly like a `bench run` started from a shell.

Kill points are drawn with a seeded RNG inside each phase and armed by hooks in the child (test
code, not bench's): "kill at a random time inside optimizer step n" (a timer, bounded by the next
hooked event so the kill stays inside that step), "kill before the atomic rename of file F",
"kill half-way through appending batch n" (a torn line), "kill at a random time while scoring".
After each kill the next process resumes; the final predictions.jsonl and metrics.json must equal
an uninterrupted run's byte for byte (timings live in results.json, which is not compared).

Already covered elsewhere, not repeated here: two concurrent `bench run` on one run folder (the
second refuses with exit code 3) in test_run_cli.py::test_sigkill_mid_generation_then_resume_is_
byte_identical and test_runs.py::test_second_process_on_a_run_folder_refuses.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.io import read_records
from conftest import REPO, tiny_setting_text

pytestmark = pytest.mark.slow  # real runs of tiny models (still part of make test)

SEED = 20240609  # picks the kill points
SETTING = "faulty"
N_VAL, BATCH = 8, 2  # 4 captioning batches
TRAIN_IMAGES, EPOCHS = 2, 2  # 2 images x 5 refs = 10 pairs = 5 optimizer steps per epoch
STEPS_PER_EPOCH = TRAIN_IMAGES * 5 // BATCH
N_BATCHES = N_VAL // BATCH
EXTRA = f"""
[lora]
r = 2
alpha = 4
dropout = 0.0
targets = "attn"
[train]
epochs = {EPOCHS}
lr = 1e-3
batch_size = {BATCH}
train_size = {TRAIN_IMAGES}
[generation]
max_new_tokens = 8
batch_size = {BATCH}
"""
# METEOR's JVM costs seconds per run; BLEU/ROUGE/CIDEr still go through the PTB tokenizer (Java).
METRICS = 'metrics = ["bleu", "rouge", "cider", "clipscore"]\n'

# --- the zygote: imports once, forks one child per `bench` invocation ----------------------------

ZYGOTE = r'''
import errno, json, os, pathlib, signal, sys, threading, time
os.environ["OMP_NUM_THREADS"] = "1"
import torch
torch.set_num_threads(1)
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import pandas, peft
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, CLIPModel, VisionEncoderDecoderModel, ViTImageProcessorPil
import bench.captioning, bench.cli, bench.io, bench.run, bench.scoring.scorer, bench.training
from bench.backends import backend_class
backend_class("vit-gpt2")


def install(spec, log):
    """Arm the kill (or full-disk) described by `spec` in this child."""
    state = {"armed": False, "counts": {}, "last": {}, "interval": {}}

    def die(why):
        log.write(f"KILLED {why}\n")
        log.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def event(name):
        # An armed timer kill never outlives its step: the next hooked event kills at once.
        if state["armed"]:
            die(f"at next event {name}")
        now = time.perf_counter()
        if name in state["last"]:
            state["interval"][name] = now - state["last"][name]
        state["last"][name] = now
        state["counts"][name] = state["counts"].get(name, 0) + 1
        return state["counts"][name]

    def arm(what, delay):
        state["armed"] = True
        delay = max(delay, 0.0)
        timer = threading.Timer(delay, die, args=(f"{what} after {delay:.3f}s",))
        timer.daemon = True
        timer.start()

    hook = spec.get("hook")
    cls = backend_class("vit-gpt2")
    for method in ("loss", "generate"):
        original = getattr(cls, method)
        def wrapped(self, batch, *args, _original=original, _name=method, **kwargs):
            n = event(_name)
            if hook == _name and n == spec["n"]:
                # A random point of this step: a fraction of the previous step's duration.
                arm(f"inside {_name} call {n}", spec["frac"] * state["interval"].get(_name, 0.05))
            return _original(self, batch, *args, **kwargs)
        setattr(cls, method, wrapped)

    original_append = bench.captioning.append_records
    def append(path, records):
        n = event("append")
        if hook == "torn_append" and n == spec["n"]:
            data = "".join(bench.io.encode_record(r) for r in records).encode("utf-8")
            cut = min(len(data) - 1, max(1, int(len(data) * spec["cut"])))
            with open(path, "ab") as f:  # what a SIGKILL inside write() leaves behind
                f.write(data[:cut])
                f.flush()
                os.fsync(f.fileno())
            die(f"after {cut} of {len(data)} bytes of append {n}")
        result = original_append(path, records)
        if hook == "after_append" and n == spec["n"]:
            die(f"right after append {n}")
        return result
    bench.captioning.append_records = append

    original_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        event("replace")
        if hook == "replace" and pathlib.Path(dst).name == spec["name"]:
            die(f"before renaming {pathlib.Path(dst).name} into place")
        return original_replace(src, dst, *args, **kwargs)
    os.replace = replace

    original_train = bench.training.train
    def train(*args, **kwargs):
        result = original_train(*args, **kwargs)
        event("train_end")
        return result
    bench.training.train = train

    original_caption = bench.captioning.caption_samples
    def caption_samples(*args, **kwargs):
        result = original_caption(*args, **kwargs)
        event("caption_end")
        return result
    bench.captioning.caption_samples = caption_samples

    original_score = bench.scoring.scorer.Scorer.score
    def score(self, *args, **kwargs):
        event("score")
        if hook == "score":
            arm("while scoring", spec["delay"])
        result = original_score(self, *args, **kwargs)
        event("score_end")
        return result
    bench.scoring.scorer.Scorer.score = score

    if hook == "enospc":
        install_full_disk(spec, log)


class FullFile:
    """A file on a disk that is full: write() stores a prefix of the data, then ENOSPC."""

    def __init__(self, f, cut):
        self._f, self._cut = f, cut

    def write(self, data):
        self._f.write(data[: int(len(data) * self._cut)])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def install_full_disk(spec, log):
    """From the n-th write of file `name` on, every write (appends and atomic writes) fails."""
    state = {"full": False, "n": 0}

    def hit(name):
        if name == spec["name"] or name.startswith(f".{spec['name']}."):
            state["n"] += 1
            if state["n"] >= spec["n"] and not state["full"]:
                state["full"] = True
                log.write(f"DISK FULL at {name}\n")
                log.flush()
        return state["full"]

    original_open = pathlib.Path.open
    def path_open(self, mode="r", *args, **kwargs):
        f = original_open(self, mode, *args, **kwargs)
        if any(c in mode for c in "wax") and hit(self.name):
            return FullFile(f, spec["cut"])
        return f
    pathlib.Path.open = path_open

    original_fdopen = os.fdopen
    def fdopen(fd, mode="r", *args, **kwargs):
        f = original_fdopen(fd, mode, *args, **kwargs)
        if any(c in mode for c in "wax") and hit(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))):
            return FullFile(f, spec["cut"])
        return f
    os.fdopen = fdopen


def child(job):
    out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.environ.update(job["env"])
    log = open(job["log"], "w")
    install(job.get("spec") or {}, log)
    from bench.cli import main
    try:
        main(job["argv"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


print("READY", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            child(job)
        except BaseException:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall_s": time.perf_counter() - started}), flush=True)
'''


class Zygote:
    """Runs `bench ARGV` in forked children of one pre-imported Python process."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.workdir = workdir
        self.err = (workdir / "zygote.err").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.err, text=True,
        )
        self.n = 0
        self.orphans: set[Path] = set()
        assert self._line(300) == "READY", (workdir / "zygote.err").read_text()[-3000:]

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            raise AssertionError(f"zygote: no answer in {timeout} s")
        return self.proc.stdout.readline().strip()

    def run(self, argv: list[str], env: dict[str, str], spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """{rc, stdout, stderr, log} of one child; rc is -9 for a SIGKILLed child."""
        self.n += 1
        ptb_before = set(_ptb_dir().iterdir())
        files = {k: str(self.workdir / f"job{self.n}.{k}") for k in ("out", "err", "log")}
        job = {"argv": argv, "env": env, "spec": spec, **files}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        result = json.loads(self._line(300))
        if result["rc"] == -signal.SIGKILL:
            # Killed inside pycocoevalcap's PTBTokenizer, the child leaves its temp file in the
            # package folder; removed at the end (another process's in-flight file is gone by then).
            self.orphans |= {p for p in set(_ptb_dir().iterdir()) - ptb_before if p.name.startswith("tmp")}
        result.update({k: Path(files[k2]).read_text() for k, k2 in (("stdout", "out"), ("stderr", "err"), ("log", "log"))})
        return result

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.err.close()
        for orphan in self.orphans:
            orphan.unlink(missing_ok=True)


# --- fixtures ------------------------------------------------------------------------------------

def _ptb_dir() -> Path:
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    return Path(ptb.__file__).resolve().parent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_vit_gpt2: Path, tiny_clip: Path) -> Iterator[dict[str, Any]]:
    """A synthetic dataset, a tiny LoRA setting, the zygote and one uninterrupted reference run."""
    from bench.data.synth import write_synth

    root = tmp_path_factory.mktemp("faults")
    write_synth(root / "synth", n=N_VAL + TRAIN_IMAGES + 2, seed=3, variant="target", size=48)
    dataset = root / "synth.toml"
    dataset.write_text(
        'annotations = "synth/captions.txt"\nimages = "synth/images"\nformat = "csv"\n'
        f"[split]\nval_size = {N_VAL}\nseed = 0\n"
    )
    text = tiny_setting_text({"vit-gpt2": tiny_vit_gpt2}, tiny_clip, extra=EXTRA, backends=("vit-gpt2",))
    setting = root / f"{SETTING}.toml"
    setting.write_text(text.replace("[scoring]\n", "[scoring]\n" + METRICS))
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "BENCH_CACHE": str(root / "cache")}
    zygote = Zygote(base_env, root)
    argv = ["run", "--setting", str(setting), "--data", str(dataset), "--workers", "0", "--no-progress"]
    reference = root / "reference"
    result = zygote.run(argv, {"BENCH_RUNS": str(reference)})
    assert result["rc"] == 0, result["stderr"][-3000:]
    try:
        yield {"root": root, "zygote": zygote, "argv": argv, "reference": reference / SETTING / "vit-gpt2"}
    finally:
        zygote.close()


def kill_plan(seed: int) -> list[dict[str, Any]]:
    """Eight kill points, in run order: three in training, three in captioning, two in scoring."""
    rng = random.Random(seed)
    checkpoint_files = [".epoch-1.partial", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng.pt", "train_state.json", "epoch-1"]
    first_gen = rng.randint(1, N_BATCHES)
    return [
        # 1. inside an optimizer step of epoch 1 (nothing saved yet)
        {"phase": "training", "hook": "loss", "n": rng.randint(1, STEPS_PER_EPOCH), "frac": rng.random()},
        # 2. while epoch 1's checkpoint is being written (before one of its atomic renames)
        {"phase": "training", "hook": "replace", "name": rng.choice(checkpoint_files)},
        # 3. inside an optimizer step of epoch 2 (epoch 1 is on disk; resume restores it)
        {"phase": "training", "hook": "loss", "n": STEPS_PER_EPOCH + rng.randint(1, STEPS_PER_EPOCH), "frac": rng.random()},
        # 4. inside a generate() call (the batches before it are on disk)
        {"phase": "captioning", "hook": "generate", "n": first_gen, "frac": rng.random()},
        # 5. half-way through appending a batch of predictions (a torn last line)
        {"phase": "captioning", "hook": "torn_append", "n": rng.randint(1, N_BATCHES - first_gen + 1),
         "cut": rng.uniform(0.05, 0.95)},
        # 6. right after the resumed process appended its first batch (the torn line must have been
        #    cut off first, or this batch would be merged into it)
        {"phase": "captioning", "hook": "after_append", "n": 1},
        # 7. at a random time while scoring (PTB tokenizer in Java, BLEU/ROUGE/CIDEr, CLIP)
        {"phase": "scoring", "hook": "score", "delay": rng.uniform(0, 1.5)},
        # 8. after scoring, before metrics.json or results.json is renamed into place
        {"phase": "scoring", "hook": "replace", "name": rng.choice(["metrics.json", "results.json"])},
    ]


def _check_state(run: Path, point: dict[str, Any], reference: Path) -> None:
    """What a kill at `point` must leave on disk (and never a half file under a final name)."""
    adapters = run / "train" / "adapter"
    epochs = sorted(p.name for p in adapters.glob("epoch-*")) if adapters.is_dir() else []
    preds = run / "predictions.jsonl"
    assert not (run / "results.json").exists()
    if point["phase"] == "training":
        assert not preds.exists()
        in_epoch_2 = point["hook"] == "loss" and point["n"] > STEPS_PER_EPOCH
        assert epochs == (["epoch-1"] if in_epoch_2 else [])
    else:
        assert epochs == ["epoch-1", "epoch-2"]
        for epoch in epochs:  # complete checkpoints only
            assert {p.name for p in (adapters / epoch).iterdir()} >= {
                "adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "rng.pt", "train_state.json",
            }
    if point["hook"] == "torn_append":
        assert not preds.read_bytes().endswith(b"\n")  # a torn line, dropped on resume
    if preds.exists():  # whole lines so far are exactly the uninterrupted run's first lines
        data = preds.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        assert reference.joinpath("predictions.jsonl").read_bytes().startswith(whole)
    if point["phase"] == "scoring":
        assert len(read_records(preds)) == N_VAL
    if point["hook"] == "replace" and point["name"] == "metrics.json":
        assert not (run / "metrics.json").exists()
    for name in ("config.json", "split.json", "run_state.json", "metrics.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())  # whole, parseable files only


def test_sigkill_at_seeded_points_then_resume_is_byte_identical(world: dict[str, Any], tmp_path: Path) -> None:
    zygote, argv = world["zygote"], world["argv"]
    env = {"BENCH_RUNS": str(tmp_path / "runs")}
    run = tmp_path / "runs" / SETTING / "vit-gpt2"
    plan = kill_plan(SEED)
    assert len(plan) >= 5 and {p["phase"] for p in plan} == {"training", "captioning", "scoring"}
    for point in plan:
        result = zygote.run(argv, env, point)
        assert result["rc"] == -signal.SIGKILL, (point, result["rc"], result["stderr"][-3000:])
        assert result["log"].startswith("KILLED"), (point, result["log"])
        print(point, "->", result["log"].strip(), f"({result['wall_s']:.1f} s)")  # where the kill landed (shown with -s or on failure)
        _check_state(run, point, world["reference"])
    final = zygote.run(argv, env)
    assert final["rc"] == 0, final["stderr"][-3000:]
    assert "cached" not in final["stdout"]
    reference = world["reference"]
    assert (run / "predictions.jsonl").read_bytes() == (reference / "predictions.jsonl").read_bytes()
    assert (run / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    results = json.loads((run / "results.json").read_text())
    assert results["metrics"] == json.loads((reference / "results.json").read_text())["metrics"]
    assert sorted(p.name for p in (run / "train" / "adapter").iterdir()) == ["epoch-1", "epoch-2"]
    # Captions of a tiny random model may not show a small training difference: the trained
    # weights and the loss curve must match too.
    for name in ("adapter/epoch-2/adapter_model.safetensors", "loss.csv"):
        assert (run / "train" / name).read_bytes() == (reference / "train" / name).read_bytes(), name


def _one_error_line(result: dict[str, Any]) -> str:
    assert result["rc"] not in (0, -signal.SIGKILL), result
    text = result["stderr"] + result["stdout"]
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result["stderr"][-3000:]
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_disk_full_while_captioning_and_while_writing_results(world: dict[str, Any], tmp_path: Path) -> None:
    """ENOSPC mid-append, then ENOSPC on results.json: one line each, earlier state readable."""
    zygote, argv, reference = world["zygote"], world["argv"], world["reference"]
    runs = tmp_path / "runs"
    env = {"BENCH_RUNS": str(runs)}
    # A finished run of another setting in the same registry must come through untouched.
    other = runs / "finished" / "vit-gpt2"
    other.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(reference, other)
    before_other = _snapshot(other)
    run = runs / SETTING / "vit-gpt2"

    # 1. The disk fills up while the second batch of predictions is appended.
    full = zygote.run(argv, env, {"hook": "enospc", "name": "predictions.jsonl", "n": 2, "cut": 0.5})
    line = _one_error_line(full)
    assert full["rc"] == 2 and "DISK FULL at predictions.jsonl" in full["log"]
    assert line == f"error: {run / 'predictions.jsonl'}: no space left on device; the previous complete state was kept"
    assert not (run / "predictions.jsonl").read_bytes().endswith(b"\n")  # the torn half line is there...
    kept = read_records(run / "predictions.jsonl")  # ...and dropped by the reader
    reference_records = read_records(reference / "predictions.jsonl")
    # The first batch and whatever whole lines of the second made it to disk; nothing torn.
    assert BATCH <= len(kept) < 2 * BATCH and kept == reference_records[: len(kept)]
    assert not (run / "results.json").exists()
    assert sorted(p.name for p in (run / "train" / "adapter").iterdir()) == ["epoch-1", "epoch-2"]  # training kept

    # 2. Space again, but it runs out while results.json is written: metrics.json is whole, no
    #    results.json (the run does not claim to be complete), no temp file left behind.
    full = zygote.run(argv, env, {"hook": "enospc", "name": "results.json", "n": 1, "cut": 0.5})
    line = _one_error_line(full)
    assert line == f"error: {run / 'results.json'}: no space left on device; the previous complete state was kept"
    # resumed after the intact records: exactly the missing images are captioned
    assert f"captioning {N_VAL - len(kept)} of {N_VAL} images" in " ".join(full["stdout"].split())
    assert (run / "predictions.jsonl").read_bytes() == (reference / "predictions.jsonl").read_bytes()
    assert (run / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert not (run / "results.json").exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]

    # 3. With space, the run completes from there (nothing is recaptioned).
    done = zygote.run(argv, env)
    assert done["rc"] == 0, done["stderr"][-3000:]
    assert "captioning" not in done["stdout"]
    assert (run / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert json.loads((run / "results.json").read_text())["metrics"] == json.loads((reference / "results.json").read_text())["metrics"]
    assert _snapshot(other) == before_other


def test_disk_full_while_writing_a_report_keeps_the_old_report(world: dict[str, Any], tmp_path: Path) -> None:
    zygote, reference = world["zygote"], world["reference"]
    runs = tmp_path / "runs"
    import shutil

    shutil.copytree(reference, runs / SETTING / "vit-gpt2")
    env = {"BENCH_RUNS": str(runs)}
    out = tmp_path / "reports" / "report.md"
    argv = ["compare", "--out", str(out), "--resamples", "20"]
    first = zygote.run(argv, env)
    assert first["rc"] == 0, first["stderr"][-3000:]
    old = out.read_bytes()
    full = zygote.run(argv, env, {"hook": "enospc", "name": "report.md", "n": 1, "cut": 0.3})
    line = _one_error_line(full)
    assert line == f"error: {out}: no space left on device; the previous complete state was kept"
    assert out.read_bytes() == old
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
