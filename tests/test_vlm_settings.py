"""Zero-shot settings without torch: sweeps expand to one setting per (prompt, model), `--model`
settings, per-backend defaults made explicit in config.json, old run configs still matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.run.plan import resolved_config, run_identity, with_backend_defaults
from bench.settings import expanded, load_setting, prompt_setting
from bench.sweep import model_slug


def write(tmp_path: Path, text: str, name: str = "s") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_sweep_expands_prompt_major_into_named_single_runs(tmp_path: Path):
    setting = load_setting(write(tmp_path, (
        'backends = ["vlm"]\nprompts = ["brief", "llava_concise"]\n[models.vlm]\n'
        'models = ["Qwen/Qwen2-VL-2B-Instruct", "./local/SmolVLM"]\nquantization = "none"\n'
    ), "sweep"))
    runs = expanded([setting])
    assert [(r.name, r.prompt, r.models["vlm"].model) for r in runs] == [
        ("sweep--brief--Qwen__Qwen2-VL-2B-Instruct", "brief", "Qwen/Qwen2-VL-2B-Instruct"),
        ("sweep--brief--SmolVLM", "brief", str(tmp_path / "local" / "SmolVLM")),
        ("sweep--llava_concise--Qwen__Qwen2-VL-2B-Instruct", "llava_concise", "Qwen/Qwen2-VL-2B-Instruct"),
        ("sweep--llava_concise--SmolVLM", "llava_concise", str(tmp_path / "local" / "SmolVLM")),
    ]
    assert all(r.backends == ("vlm",) and not r.prompts and not r.models["vlm"].models for r in runs)
    # a run of a sweep has the config.json of the same run made by hand (no sweep fields)
    config = resolved_config(with_backend_defaults(runs[0], "vlm"), "vlm", "zero-shot", "t")
    assert "prompts" not in config and "models" not in config["model"]


def test_plain_settings_are_not_expanded():
    setting = load_setting("llava_brief")
    assert expanded([setting]) == [setting]


@pytest.mark.parametrize("text, message", [
    ('backends = ["vlm"]\nprompt = "brief"\nprompts = ["brief"]\n[models.vlm]\nmodel = "a/b"\n', "give prompt = \"NAME\" or prompts = [...], not both"),
    ('backends = ["vlm"]\nprompts = ["brief", "brief"]\n[models.vlm]\nmodel = "a/b"\n', "prompts lists a prompt twice"),
    ('backends = ["vlm"]\nprompts = ["nope"]\n[models.vlm]\nmodel = "a/b"\n', "prompt: unknown prompt 'nope'"),
    ('backends = ["vlm"]\nprompts = ["brief"]\n[models.vlm]\nmodels = ["x/m", "y/m2", "/p/x__m"]\n', "two models with the same run name"),
    ('backends = ["vlm"]\nprompt = "brief"\n', "models.vlm.model is missing"),
    ('backends = ["vlm"]\nprompts = "brief"\n[models.vlm]\nmodel = "a/b"\n', "prompts must be a list of strings"),
])
def test_bad_sweeps_are_one_line_errors_naming_the_file(tmp_path: Path, text: str, message: str):
    with pytest.raises(BenchError) as info:
        load_setting(write(tmp_path, text))
    assert message in str(info.value) and "s.toml" in str(info.value) and "\n" not in str(info.value)


def test_prompt_and_model_setting_runs_vlm():
    setting = prompt_setting("brief", model="HuggingFaceTB/SmolVLM-256M-Instruct")
    assert setting.name == "prompt-brief--HuggingFaceTB__SmolVLM-256M-Instruct"
    assert setting.backends == ("vlm",) and setting.models["vlm"].model == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert prompt_setting("brief").backends == ("llava",)  # without --model: LLaVA-1.5 as before


def test_zero_shot_decodes_64_tokens_and_lora_30_unless_the_setting_says():
    zero_shot = with_backend_defaults(load_setting("llava_brief"), "llava")
    assert zero_shot.generation.max_new_tokens == 64
    assert zero_shot.models["llava"].options == {"image_mode": "auto"}
    lora = with_backend_defaults(load_setting("lora_attn"), "vit-gpt2")
    assert lora.generation.max_new_tokens == 30
    demo = with_backend_defaults(load_setting("demo_zeroshot_brief"), "llava")
    assert demo.generation.max_new_tokens == 30  # stated in the file: the demo's figures were made with 30


def test_runs_from_before_image_mode_match_crop_only():
    new = resolved_config(with_backend_defaults(load_setting("llava_brief"), "llava"), "llava", "zero-shot", "t")
    from bench.run.folder import CONFIG, SCHEMA_VERSION, migrate

    old = {**new, "model": {**new["model"], "options": {}}}  # a config.json written before image_mode
    crop = {**new, "model": {**new["model"], "options": {"image_mode": "crop"}}}
    # Reading the old folder migrates it (bench.run.folder): its runs match "crop", not the default.
    assert run_identity(migrate(CONFIG, old)) == run_identity(crop) != run_identity(new)
    # A current config without image_mode is taken as written (every current zero-shot config has one).
    assert migrate(CONFIG, {**old, "schema_version": SCHEMA_VERSION}) == old


def test_model_slug():
    assert model_slug("llava-hf/llava-1.5-7b-hf") == "llava-hf__llava-1.5-7b-hf"
    assert model_slug("/data/models/llava-hf__llava-1.5-7b-hf/") == "llava-hf__llava-1.5-7b-hf"
    assert model_slug("org/we ird:name") == "org__we_ird_name"


def test_family_rules_by_model_type_never_by_name():
    from bench.models.vlm_families import family_for

    assert family_for("llava", True, "m").prompt_rule == "chat"
    assert family_for("llava", False, "m").prompt_rule == "llava15"  # old conversions: LLaVA-1.5's format
    assert family_for("paligemma", False, "m").task_prefix == "caption en"
    assert family_for("some_new_vlm", True, "m").prompt_rule == "chat"  # any family with a chat template
    for model_type in ("some_new_vlm", "qwen2_vl"):
        with pytest.raises(BenchError, match=f"m: its processor has no chat template .* model_type '{model_type}'"):
            family_for(model_type, False, "m")
