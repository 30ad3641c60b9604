"""Without network and without HF_HUB_OFFLINE, a run that needs hub models fails in seconds with
one line, whichever way the hub is unreachable: a name that does not resolve, or a closed port
on loopback. (Only those two addresses are ever contacted.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.errors import BenchError

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE = ["http://bench-tests.invalid", "http://127.0.0.1:9"]  # .invalid never resolves; 9: nothing listens


def _offline_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in drop}
    env.update({
        "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"),  # an empty cache
        "BENCH_RUNS": str(tmp_path / "runs"), "BENCH_CACHE": str(tmp_path / "cache"), "COLUMNS": "200",
    })
    return env


@pytest.mark.parametrize("endpoint", UNREACHABLE)
def test_run_with_hub_models_fails_in_seconds_with_one_line(endpoint: str, tmp_path: Path, shared_data: Path) -> None:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--setting", "rank64_ep3", "--no-progress"],
        env=_offline_env(tmp_path, endpoint), cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        "error: settings/rank64_ep3.toml: vit-gpt2 model 'nlpconnect/vit-gpt2-image-captioning' is not "
        "a local folder, not in the Hugging Face cache and could not be fetched from the hub (offline?)"
    ), lines[0]
    assert "set models.vit-gpt2.model to DIR" in lines[0]
    assert elapsed < 10, f"{elapsed:.1f} s"
    run_dir = tmp_path / "runs" / "rank64_ep3" / "vit-gpt2"
    assert not (run_dir / "predictions.jsonl").exists() and not (run_dir / "train").exists()


def test_an_unreachable_hub_is_probed_once_and_never_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not cached and the probe fails: the loader is called once, cache-only, and never online."""
    import huggingface_hub.constants

    from bench import model_source

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", UNREACHABLE[1])
    for key in model_source.PROXY_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    model_source._probe.cache_clear()
    calls: list[dict[str, object]] = []

    def load(source: str, **kwargs: object) -> object:
        calls.append(kwargs)
        raise OSError("not in the cache")

    for _ in range(2):
        with pytest.raises(BenchError, match="could not be fetched from the hub"):
            model_source.from_source(load, "bench-tests/nothing", "test model", "models.x.model")
    assert all(call.get("local_files_only") is True for call in calls) and len(calls) == 2
    assert model_source._probe.cache_info().misses == 1  # one probe for both loads
