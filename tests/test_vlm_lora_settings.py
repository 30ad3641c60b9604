"""The kind rule of prompt settings: a [lora] table in the setting's own files (not base.toml) makes
a VLM LoRA run; every other setting keeps its kind and its config.json."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from bench import paths
from bench.errors import BenchError
from bench.run.plan import plan_run
from bench.settings import expanded, list_settings, load_setting, prompt_setting

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A BENCH_HOME with the project's base.toml, prompts and datasets, and no other setting."""
    (tmp_path / "settings").mkdir()
    shutil.copy(REPO / "settings" / "base.toml", tmp_path / "settings" / "base.toml")
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    shutil.copytree(REPO / "datasets", tmp_path / "datasets")
    monkeypatch.setenv("BENCH_SHARED_DATA", str(paths.shared_data_dir()))  # before BENCH_HOME moves it
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))
    return tmp_path


def write(home: Path, name: str, text: str) -> None:
    (home / "settings" / f"{name}.toml").write_text(text)


@pytest.mark.parametrize("text,vlm_lora", [
    ("prompt = 'brief'\n[lora]\nr = 8\n", True),
    ("prompt = 'brief'\n[lora]\n", True),  # an empty table counts: it is in the file
    ("prompt = 'brief'\n", False),  # base.toml's [lora] never does
    ("prompt = 'brief'\n[generation]\nmax_new_tokens = 9\n", False),
    ("[lora]\nr = 8\n", False),  # no prompt: the LoRA captioners, as before
])
def test_a_lora_table_in_the_settings_own_file_decides(home: Path, text: str, vlm_lora: bool) -> None:
    write(home, "s", text)
    setting = load_setting("s")
    assert setting.vlm_lora is vlm_lora
    assert setting.backends == (("llava",) if "prompt" in text else ("vit-gpt2", "clip-flan-t5"))


def test_the_kind_is_inherited_through_extends_but_not_from_base(home: Path) -> None:
    write(home, "tuned", "prompt = 'brief'\n[lora]\nr = 8\n")
    write(home, "tuned_more", "extends = 'tuned'\n[train]\nepochs = 5\n")
    write(home, "zero", "prompt = 'brief'\n")
    assert load_setting("tuned_more").vlm_lora and not load_setting("zero").vlm_lora
    assert not prompt_setting("brief").vlm_lora  # bench run --prompt stays zero-shot


def test_train_without_lora_and_an_untunable_vlm_are_one_line_errors(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(home, "t", "prompt = 'brief'\n[train]\nepochs = 2\n")
    with pytest.raises(BenchError) as info:
        load_setting("t")
    assert str(info.value).startswith("settings/t.toml: train.epochs: a prompt setting trains nothing") and "\n" not in str(info.value)

    import bench.settings.checks as checks

    catalog = checks.backend_table()
    frozen = {**catalog, "llava": dataclasses.replace(catalog["llava"], supports_vlm_lora=False)}
    monkeypatch.setattr(checks, "backend_table", lambda: frozen)
    write(home, "l", "prompt = 'brief'\n[lora]\nr = 8\n")
    with pytest.raises(BenchError, match=r"^settings/l.toml: lora.r applies only to LoRA backends; llava is zero-shot and cannot be fine-tuned$"):
        load_setting("l")


def test_plan_of_a_vlm_lora_setting(home: Path) -> None:
    write(home, "tuned", "prompt = 'brief'\n[lora]\nr = 8\n")
    plan = plan_run(load_setting("tuned"), "llava")
    assert plan.kind == "lora" and plan.config["kind"] == "lora"
    assert plan.prompt.name == "brief" and plan.config["prompt_text"] == plan.prompt.template
    assert plan.config["lora"]["r"] == 8 and "vlm_lora" not in plan.config
    with pytest.raises(BenchError, match="^dataset 'coco-12': the split has no training images, so 'llava' has nothing"):
        plan_run(load_setting("tuned"), "llava", dataset="coco-12")


def test_shipped_settings_keep_their_kind_and_config_keys() -> None:
    """config.json of every existing setting is unchanged: no new key, the same kind. (Its full
    content was also compared with the main branch's output by hand before merging.)"""
    for setting in expanded(list_settings()):  # a sweep runs as its one-run settings
        for backend in setting.backends:
            plan = plan_run(setting, backend)
            assert "vlm_lora" not in plan.config
            if setting.name.startswith("llava_lora_"):
                assert plan.kind == "lora" and setting.prompt
            else:
                assert plan.kind == ("zero-shot" if setting.prompt else "lora"), setting.name
