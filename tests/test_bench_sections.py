"""`make bench` (benchmarks/run_all.py) in a clone without ../shared: the sections that declare
shared data or model files are skipped and named in performance.md, the command exits 0; a
section that fails for any other reason still exits 1 with a one-line cause."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ as a namespace package, as in test_device.py
import benchmarks.run_all as run_all  # noqa: E402
from benchmarks import (  # noqa: E402
    bootstrap, captioning, compare_scale, explorer, harness, real_architectures, scoring, served,
)

SECTIONS = {"captioning": captioning, "harness": harness, "scoring": scoring, "bootstrap": bootstrap,
            "real_architectures": real_architectures, "compare_scale": compare_scale, "explorer": explorer,
            "served": served}
# The sections that read the shared data, and the first path each declares.
NEEDS_DATA = {n: m.NEEDS_SHARED_DATA[0] for n, m in SECTIONS.items() if getattr(m, "NEEDS_SHARED_DATA", ())}


def _main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs: dict[str, object]) -> tuple[str, dict]:
    """run_all.main() --quick with each section's run() replaced (the real ones take minutes)."""
    for name, module in SECTIONS.items():
        monkeypatch.setattr(module, "run", runs[name])
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--out", str(tmp_path / "out")])
    run_all.main()
    return (tmp_path / "out" / "performance.md").read_text(), json.loads((tmp_path / "out" / "performance.json").read_text())


def _must_not_run(*args: object, **kwargs: object) -> dict:
    raise AssertionError("a section without its shared data ran")


def test_sections_without_shared_data_are_skipped_named_and_exit_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_SHARED_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("BENCH_SHARED_MODELS", str(tmp_path / "no-models"))
    runs = {n: _must_not_run if n in NEEDS_DATA else (lambda *a, **k: {}) for n in SECTIONS}
    md, results = _main(tmp_path, monkeypatch, runs)  # returns: exit status 0
    missing = {n: f"skipped: needs BENCH_SHARED_DATA ({tmp_path / 'no-data' / p} not found)" for n, p in NEEDS_DATA.items()}
    assert "explorer" not in NEEDS_DATA  # generated runs: it runs in a clone
    assert results["skipped"] == missing and results["errors"] == {}
    assert "## Skipped sections" in md and "## Failed sections" not in md
    for name, line in missing.items():
        assert f"- {name}: {line}" in md


def test_only_the_missing_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_data: Path) -> None:
    monkeypatch.setenv("BENCH_SHARED_DATA", str(stand_in_data))  # data there, model files not
    monkeypatch.setenv("BENCH_SHARED_MODELS", str(tmp_path / "no-models"))
    ran = dict.fromkeys(SECTIONS, lambda *a, **k: {})
    md, results = _main(tmp_path, monkeypatch, {**ran, "real_architectures": _must_not_run})
    first = real_architectures.NEEDS_SHARED_MODELS[0]
    assert results["skipped"] == {"real_architectures": f"skipped: needs BENCH_SHARED_MODELS ({tmp_path / 'no-models' / first} not found)"}


def test_a_section_failing_for_another_reason_exits_1_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     stand_in_data: Path) -> None:
    models = tmp_path / "models"
    for name in real_architectures.NEEDS_SHARED_MODELS:
        (models / name).mkdir(parents=True)
    monkeypatch.setenv("BENCH_SHARED_DATA", str(stand_in_data))
    monkeypatch.setenv("BENCH_SHARED_MODELS", str(models))

    def boom(*args: object, **kwargs: object) -> dict:
        raise RuntimeError("the scorer broke\non two lines")

    with pytest.raises(SystemExit) as info:
        _main(tmp_path, monkeypatch, {**dict.fromkeys(SECTIONS, lambda *a, **k: {}), "bootstrap": boom})
    assert info.value.code == "make bench: 1 section(s) failed: bootstrap: RuntimeError: the scorer broke on two lines"
    md = (tmp_path / "out" / "performance.md").read_text()
    assert "## Failed sections" in md and "## Skipped sections" not in md


def test_a_section_without_a_module_of_its_name_needs_nothing() -> None:
    assert run_all.missing_shared("no_such_section") is None
