"""Per-run peak memory: several runs in one process (`bench run --group`) each record their own
peak, not the highest of the process so far."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bench.run import execute_plan, plan_run
from bench.run.environment import peak_memory, reset_peak_memory
from bench.settings import load_setting

BIG_MB = 400

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="VmHWM / clear_refs are Linux")


def _touch_big() -> None:
    """Make this process's resident set BIG_MB larger for a moment (pages written, then freed)."""
    block = bytearray(BIG_MB * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    del block


def test_reset_starts_a_new_peak() -> None:
    _touch_big()
    high = peak_memory()["peak_rss_mb"]
    reset_peak_memory()
    assert peak_memory()["peak_rss_mb"] < high - BIG_MB / 2


def test_each_run_of_one_process_records_its_own_peak(bench_env, shared_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.run.execute as execute

    recorded: dict[str, Any] = {}

    def model_work(run: Any) -> None:  # the first run is the memory-hungry one (LLaVA before LoRA)
        if not recorded:
            _touch_big()

    def record(run: Any, scorers: Any) -> dict[str, Any]:
        recorded[run.plan.name] = peak_memory(run.device)["peak_rss_mb"]
        return {"run": run.plan.name}

    monkeypatch.setattr(execute, "check_models_available", lambda plan: None)
    monkeypatch.setattr(execute, "train_and_caption", model_work)
    monkeypatch.setattr(execute, "score_and_record", record)
    for name in ("big", "small"):
        path = tmp_path / f"{name}.toml"
        path.write_text('prompt = "brief"\n')
        execute_plan(plan_run(load_setting(path), "llava", limit=2), device="cpu", progress=False)
    assert recorded["small/llava"] < recorded["big/llava"] - BIG_MB / 2
