"""The run folder has one owner (bench.run.folder): folders written by today's main (52324d6 =
446f6c1's code) are read and migrated, re-written byte for byte apart from `schema_version`, and
reported; a newer schema is refused; no other module builds a path to its JSON members."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.run.folder import CONFIG, METRICS, RESULTS, SCHEMA_VERSION, SPLIT, STATE, RunFolder

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runs-446f6c1"
REPO = Path(__file__).resolve().parent.parent
ZERO_SHOT, LORA = "demo_zeroshot_brief/llava", "demo_lora_r2/vit-gpt2"


@pytest.fixture
def old_runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES, root, ignore=shutil.ignore_patterns("README.md"))
    return root


def test_fixture_folders_are_schema_version_0() -> None:
    for run in (ZERO_SHOT, LORA):
        for name in (CONFIG, SPLIT, STATE, METRICS, RESULTS):
            assert "schema_version" not in json.loads((FIXTURES / run / name).read_text())


def test_old_folders_read_as_typed_records(old_runs: Path) -> None:
    zs, lora = RunFolder(old_runs / ZERO_SHOT), RunFolder(old_runs / LORA)
    results = zs.read_results()
    assert (results.kind, results.backend, results.dataset) == ("zero-shot", "llava", "synth")
    assert results.config["model"]["options"]["image_mode"] == "auto"  # written with image_mode: kept
    split = zs.read_split()
    assert len(split.samples) == 100 and split.fingerprint == results.fingerprint
    metrics = zs.read_metrics()
    assert metrics is not None and set(metrics.meteor_stats) == {s.image_id for s in split.samples}
    assert zs.read_state().model == {"model_type": "llava", "prompt_rule": "chat", "image_mode": "pad"}
    state = lora.read_state()
    assert state.train is not None and state.train.steps == 94 and state.caption.n_captioned == 100
    assert lora.read_results().params["trainable"] == state.train.trainable


@pytest.mark.parametrize("run", [ZERO_SHOT, LORA])
def test_rewriting_an_old_folder_changes_only_schema_version(old_runs: Path, run: str) -> None:
    folder = RunFolder(old_runs / run)
    folder.write_split(folder.read_split())
    folder.write_metrics(folder.read_metrics())
    folder.write_state(folder.read_state())
    for name in (SPLIT, METRICS, STATE):
        new = json.loads((folder.path / name).read_text())
        assert new.pop("schema_version") == SCHEMA_VERSION
        assert json.dumps(new) == json.dumps(json.loads((FIXTURES / run / name).read_text())), name
        lines = (folder.path / name).read_text().splitlines()
        old = (FIXTURES / run / name).read_text().splitlines()
        assert lines[:1] + lines[2:] == old, name  # byte for byte, but for the schema_version line


def test_a_config_from_before_image_mode_migrates_to_crop(old_runs: Path) -> None:
    path = old_runs / ZERO_SHOT / CONFIG
    config = json.loads(path.read_text())
    del config["model"]["options"]["image_mode"]
    path.write_text(json.dumps(config))
    assert RunFolder(path.parent).read_config()["model"]["options"] == {"image_mode": "crop"}
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, **config}))  # current: taken as written
    assert RunFolder(path.parent).read_config()["model"]["options"] == {}


def test_a_newer_schema_is_a_one_line_error_naming_the_file(old_runs: Path) -> None:
    path = old_runs / ZERO_SHOT / RESULTS
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(BenchError, match=rf"^{path}: schema_version {SCHEMA_VERSION + 1} is newer"):
        RunFolder(path.parent).read_results()


def test_old_folders_are_listed_and_reported(old_runs: Path, tmp_path: Path) -> None:
    from bench.report import build_report
    from bench.run import list_runs

    infos = {i.name: i for i in list_runs(old_runs)}
    assert infos[ZERO_SHOT].status == infos[LORA].status == "complete"
    out, js = tmp_path / "report.md", tmp_path / "report.json"
    build_report(old_runs, out, json_out=js, n_boot=20)  # the zero-shot run's tokens: its old tokens.json
    runs = {r["run"]: r for r in json.loads(js.read_text())["sections"][0]["runs"]}
    assert set(runs) == {ZERO_SHOT, LORA}
    recorded = RunFolder(old_runs / LORA).read_results().metrics["CIDEr"]
    assert runs[LORA]["metrics"]["CIDEr"]["value"] == recorded
    assert runs[LORA]["metrics"]["CIDEr"]["recomputed"] == pytest.approx(recorded, abs=1e-9)


# --- one owner ---------------------------------------------------------------------------------

MEMBERS = {RESULTS, SPLIT, METRICS, STATE, "tokens.json"}
OWNER = {"bench/run/folder.py"}


def test_no_module_but_the_owner_names_a_run_folder_json_member() -> None:
    """A module that spells "results.json" (etc.) as a value builds a path to it: only the owner
    may (messages inside f-strings and docstrings are not values of their own)."""
    found = []
    for path in sorted((REPO / "bench").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in OWNER:
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Constant) and node.value in MEMBERS:
                found.append(f"{rel}:{node.lineno}: {node.value}")
    assert not found, "build these paths through bench.run.folder.RunFolder:\n" + "\n".join(found)
