"""Endpoint runs (the `openai` backend) end to end against the loopback server: failed images
never scored and retried alone on a re-run, truncation counted, SIGKILL and resume without
re-requesting finished images (byte-identical predictions), the key never written anywhere,
`bench run --endpoint` beside an in-process run in `bench compare`, and `--shard`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.io import read_records
from bench.run import execute_plan, plan_run
from bench.settings import load_setting
from bench.testing.openai_server import Fault, OpenAIServer, ScriptedAnswerer
from conftest import REPO

pytestmark = pytest.mark.slow
KEY_ENV = "BENCH_TEST_SERVED_KEY"
SECRET = "sk-bench-test-secret-31337-do-not-write"


def served_setting(folder: Path, name: str, base_url: str, *, concurrency: int = 4, extra: str = "") -> Path:
    """A zero-shot setting on the openai backend, scored with BLEU and CIDEr only (no CLIP)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(
        'backends = ["openai"]\nprompt = "brief"\n'
        f'[models.openai]\nmodel = "tiny-vlm"\nbase_url = "{base_url}"\n{extra}'
        f"options = {{ timeout_s = 2.0, max_retry_s = 0.3, max_concurrency = {concurrency} }}\n"
        '[generation]\nmax_new_tokens = 8\n[scoring]\nmetrics = ["bleu", "cider"]\n'
    )
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture
def server():
    with OpenAIServer(ScriptedAnswerer(), idle_timeout_s=120) as srv:
        yield srv


@pytest.fixture
def reference(tmp_path: Path, bench_env, server: OpenAIServer):
    """predictions.jsonl bytes of an uninterrupted run of the same images."""
    def make(limit: int) -> bytes:
        plan = plan_run(load_setting(served_setting(tmp_path / "ref", "reference", server.base_url)), "openai", limit=limit)
        execute_plan(plan, device="cpu", progress=False)
        return (plan.run_dir / "predictions.jsonl").read_bytes()

    return make


def test_failed_images_are_never_scored_and_a_rerun_retries_only_them(
    tmp_path: Path, bench_env, server: OpenAIServer, reference, shared_data: Path,
) -> None:
    plan = plan_run(load_setting(served_setting(tmp_path, "faulty", server.base_url)), "openai", limit=6)
    bad = plan.samples[2]
    server.faults.append(Fault("503", times=None, match=lambda r: r.image_digest == digest(bad.path)))
    server.faults.append(Fault("length", times=1, match=lambda r: r.image_digest == digest(plan.samples[0].path)))
    with pytest.raises(BenchError, match=rf"1 of 6 images failed after retries and were not scored: {bad.image_id} \(HTTP 503"):
        execute_plan(plan, device="cpu", progress=False)
    captions = [r["image_id"] for r in read_records(plan.run_dir / "predictions.jsonl")]
    assert bad.image_id not in captions and len(captions) == 5  # no empty caption stands in for it
    assert not (plan.run_dir / "metrics.json").exists() and not (plan.run_dir / "results.json").exists()
    state = json.loads((plan.run_dir / "run_state.json").read_text())
    assert state["served"]["n_failed"] == 1 and bad.image_id in state["served"]["failed"]

    server.faults.clear()
    asked_before = len(server.stats.digests)
    results = execute_plan(plan, device="cpu", progress=False).results
    assert server.stats.digests[asked_before:] == [digest(bad.path)]  # only the failed image again
    assert results["n_failed"] == 0 and results["served"]["n_failed_then_answered"] == 1
    assert results["n_truncated"] == 1  # finish_reason "length" counts as cut
    assert results["served"]["server_models"] == ["tiny-vlm"]
    assert results["served"]["system_fingerprints"] == [server.fingerprint]
    assert results["served"]["decoding"]["temperature"] == 0.0 and results["served"]["decoding"]["max_tokens"] == 8
    assert results["cost"]["tokens_per_image"] > 0
    assert (plan.run_dir / "predictions.jsonl").read_bytes() == reference(6)  # split order, same bytes


def test_sigkill_mid_run_resumes_without_rerequesting_finished_images(
    tmp_path: Path, bench_env, reference, shared_data: Path,
) -> None:
    with OpenAIServer(ScriptedAnswerer(), latency_s=0.4, idle_timeout_s=120) as slow:
        path = served_setting(tmp_path, "killed", slow.base_url, concurrency=2)
        plan = plan_run(load_setting(path), "openai", limit=10)
        predictions = plan.run_dir / "predictions.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "run", "--setting", str(path), "--limit", "10", "--no-progress"],
            env=bench_env.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                if predictions.exists() and len(read_records(predictions)) >= 3:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the run finished before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(30)
        done = {r["image_id"] for r in read_records(predictions, repair=True)}
        assert 3 <= len(done) < 10
        for _ in range(200):  # the killed run's requests in flight end on the server's side
            if slow.stats.in_flight == 0:
                break
            time.sleep(0.05)
        slow.stats.max_in_flight = 0
        asked_before = len(slow.stats.digests)
        results = execute_plan(plan, device="cpu", progress=False).results
        asked_after = slow.stats.digests[asked_before:]
    finished = {digest(s.path) for s in plan.samples if s.image_id in done}
    assert not finished & set(asked_after)  # nothing finished was asked for again
    assert len(asked_after) == 10 - len(done) and results["n_images"] == 10
    assert slow.stats.max_in_flight == 2  # the setting's max_concurrency
    with OpenAIServer(ScriptedAnswerer()) as fresh:
        ref = served_setting(tmp_path / "ref", "reference", fresh.base_url)
        ref_plan = plan_run(load_setting(ref), "openai", limit=10)
        execute_plan(ref_plan, device="cpu", progress=False)
    assert predictions.read_bytes() == (ref_plan.run_dir / "predictions.jsonl").read_bytes()


def test_the_key_is_never_written_or_printed(tmp_path: Path, bench_env, shared_data: Path) -> None:
    env = {**bench_env.env, KEY_ENV: SECRET}
    with OpenAIServer(ScriptedAnswerer(), api_key=SECRET, idle_timeout_s=120) as server:
        path = served_setting(tmp_path, "keyed", server.base_url, extra=f'api_key_env = "{KEY_ENV}"\n')
        ok = subprocess.run(
            [sys.executable, "-m", "bench", "run", "--setting", str(path), "--limit", "3", "--no-progress",
             "--log-with", "tensorboard"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert server.stats.auth and set(server.stats.auth) == {f"Bearer {SECRET}"}  # it was sent
        report = tmp_path / "report.md"
        compared = subprocess.run([sys.executable, "-m", "bench", "compare", "--out", str(report), "--resamples", "20"],
                                  env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert compared.returncode == 0, compared.stderr[-2000:]
        files = {name: data for root in (bench_env.runs, tmp_path) for name, data in run_files(root).items()}
        wrong = {**env, KEY_ENV: "sk-wrong-" + SECRET}  # the server echoes a rejected key back
        other = served_setting(tmp_path / "other", "refused", server.base_url, extra=f'api_key_env = "{KEY_ENV}"\n')
        refused = subprocess.run([sys.executable, "-m", "bench", "run", "--setting", str(other), "--limit", "3",
                                  "--no-progress"], env=wrong, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "models.openai.api_key_env BENCH_TEST_SERVED_KEY" in refused.stdout + refused.stderr
    outputs = [ok.stdout, ok.stderr, compared.stdout, compared.stderr, refused.stdout, refused.stderr]
    assert any("served.jsonl" in name for name in files) and any("tfevents" in name for name in files)
    assert any(name.endswith("report.md") for name in files)
    assert not [n for n, data in files.items() if SECRET.encode() in data]
    assert not [o for o in outputs if SECRET in o]
    after = [p for p in bench_env.runs.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not after  # the refused run's folder neither


def test_bench_run_endpoint_beside_an_in_process_run_in_compare(
    tmp_path: Path, bench_env, tiny_root: Path, tiny_clip: Path, shared_data: Path,
) -> None:
    from conftest import tiny_vlm_dir
    from bench.testing.openai_server import TinyVlmAnswerer

    llava = tiny_vlm_dir(tiny_root, "llava")
    home = tmp_path / "home"
    (home / "settings").mkdir(parents=True)
    base = (REPO / "settings" / "base.toml").read_text()
    # base.toml states only the models: the scoring and decoding this test wants are its own tables
    base += f'\n[scoring]\nclip_model = "{tiny_clip}"\nmetrics = ["bleu", "cider", "clipscore"]\n'
    base += "\n[generation]\nmax_new_tokens = 8\n"
    base += "\n[cost]\nusd_per_million_input = 0.15\nusd_per_million_output = 0.6\nusd_per_hour = 0.5\n"
    (home / "settings" / "base.toml").write_text(base)
    for folder in ("prompts", "datasets"):
        os.symlink(REPO / folder, home / folder)
    env = {**bench_env.env, "BENCH_HOME": str(home), "HF_HUB_OFFLINE": "1", "BENCH_SHARED_DATA": str(shared_data)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    with OpenAIServer(TinyVlmAnswerer(llava), idle_timeout_s=300) as server:
        served = cli("run", "--prompt", "brief", "--model", "tiny-vlm", "--endpoint", server.base_url, "--limit", "4",
                     "--no-progress", "--workers", "0")
    local = cli("run", "--prompt", "brief", "--model", str(llava), "--limit", "4", "--no-progress", "--workers", "0")
    assert served.returncode == 0, served.stderr[-3000:]
    assert local.returncode == 0, local.stderr[-3000:]
    runs = bench_env.runs
    via = [r["caption"] for r in read_records(runs / "prompt-brief--tiny-vlm" / "openai" / "predictions.jsonl")]
    inproc = [r["caption"] for r in read_records(runs / f"prompt-brief--{llava.name}" / "vlm" / "predictions.jsonl")]
    assert via == inproc  # the same tiny model, greedy, through HTTP or in process
    report = tmp_path / "report.md"
    compared = cli("compare", "--out", str(report), "--resamples", "50")
    assert compared.returncode == 0, compared.stderr[-3000:]
    text = report.read_text()
    cost_rows = text.split("### Cost", 1)[1].split("###", 1)[0]
    assert "Tokens/image" in cost_rows and "$ per 1,000 captions" in cost_rows.replace("\\$", "$")
    served_row = next(line for line in cost_rows.splitlines() if "prompt-brief--tiny-vlm/openai" in line)
    local_row = next(line for line in cost_rows.splitlines() if f"prompt-brief--{llava.name}/vlm" in line)
    results = json.loads((runs / "prompt-brief--tiny-vlm" / "openai" / "results.json").read_text())
    assert f"{results['cost']['usd_per_1000_captions']:,.4f}" in served_row
    assert results["cost"]["basis"] == "tokens" and f"{results['cost']['tokens_per_image']:,.1f}" in served_row
    assert local_row.count("—") >= 1 and "0." in local_row.split("|")[-2]  # priced by the hour
    assert "![quality vs $ per 1,000 captions](report-figures/s1-cost.png)" in text
    assert (tmp_path / "report-figures" / "s1-cost.png").stat().st_size > 0


def test_shards_run_every_planned_run_exactly_once(
    tmp_path: Path, bench_env, server: OpenAIServer, shared_data: Path,
) -> None:
    from bench.commands.run import _plans, _settings_for
    from bench.shards import parse_shard, shard_share

    plans = _plans(_settings_for(None, None, "report"), None, None, 2)
    names = [p.name for p in plans]
    assert len(names) >= 5
    for n in range(1, 7):
        shares = [[p.name for p in shard_share(plans, i, n)] for i in range(1, n + 1)]
        assert sorted(x for s in shares for x in s) == sorted(names)  # each once, none lost
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        with pytest.raises(BenchError, match=rf"--shard {bad}: "):
            parse_shard(bad)

    home = tmp_path / "home"
    (home / "settings").mkdir(parents=True)
    (home / "settings" / "base.toml").write_text((REPO / "settings" / "base.toml").read_text())
    for folder in ("prompts", "datasets"):
        os.symlink(REPO / folder, home / folder)
    for name in ("g1", "g2", "g3"):
        path = served_setting(home / "settings", name, server.base_url)
        path.write_text('group = "sweep"\n' + path.read_text())
    env = {**bench_env.env, "BENCH_HOME": str(home), "BENCH_SHARED_DATA": str(shared_data)}
    second = subprocess.run([sys.executable, "-m", "bench", "run", "--group", "sweep", "--shard", "2/2", "--limit", "2",
                             "--no-progress"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name for p in bench_env.runs.iterdir()) == ["g2"]  # g1, g3 are shard 1's
    assert "shard 2/2: 1 run(s): g2/openai" in second.stdout
