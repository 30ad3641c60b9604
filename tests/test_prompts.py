"""Prompt templates: the shipped files, and every way a prompt file can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.prompts import PromptTemplate, list_prompts, load_prompt

REPO_PROMPTS = Path(__file__).resolve().parents[1] / "prompts"


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(body, encoding="utf-8")
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(BenchError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"error must be one line: {message!r}"
    return message


# --- shipped prompts ---------------------------------------------------------------------------

def test_shipped_prompts_are_valid_and_sourced():
    prompts = {p.name: p for p in list_prompts(REPO_PROMPTS)}
    assert {"brief", "key_objects", "lmms_eval_caption", "llava_concise"} <= set(prompts)
    for p in prompts.values():
        assert p.template.count("<image>") == 1
        assert p.source.strip() and p.description.strip()
        assert p.sentences == 1
        assert p.path == REPO_PROMPTS / f"{p.name}.toml"


def test_report_prompts_have_the_reports_exact_wording():
    brief = load_prompt("brief", REPO_PROMPTS)
    assert brief.text == "Briefly describe this image in a sentence. Thank you."
    key = load_prompt("key_objects", REPO_PROMPTS)
    assert key.text == (
        "In one sentence, describe the key objects in the image and their state. For example, "
        "'A red apple lies on a wooden table' or 'A dog sleeps peacefully on a couch.'"
    )
    assert load_prompt("lmms_eval_caption", REPO_PROMPTS).text == (
        "Provide a one-sentence caption for the provided image."
    )
    assert "lmms_eval/tasks/coco_cap" in load_prompt("lmms_eval_caption", REPO_PROMPTS).source


def test_load_by_name_uses_bench_home(monkeypatch, tmp_path):
    (tmp_path / "prompts").mkdir()
    write(tmp_path / "prompts", "mine", 'template = "<image>\\nSay it."\n')
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))
    p = load_prompt("mine")
    assert isinstance(p, PromptTemplate)
    assert (p.name, p.template, p.text, p.description, p.source, p.sentences) == (
        "mine", "<image>\nSay it.", "Say it.", "", "", 1
    )


def test_load_by_path_and_text_around_placeholder(tmp_path):
    path = write(tmp_path, "after", 'template = "Look at this: <image> What is it?"\nsentences = 0\n')
    p = load_prompt(str(path))
    assert p.name == "after" and p.sentences == 0
    assert p.text == "Look at this: What is it?"
    assert not p.image_first
    assert p.render("<IMG>") == "Look at this: <IMG> What is it?"


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "body, expected",
    [
        ('template = "Describe the image."\n', "'template' must contain the <image> placeholder exactly once, found 0"),
        ('template = "<image> and <image>"\n', "exactly once, found 2"),
        ('template = "<image>"\n', "'template' has no instruction text"),
        ('description = "no template"\n', "missing key 'template'"),
        ('template = "<image>\\nHi."\ncolour = "red"\n', "unknown key 'colour'"),
        ('template = 3\n', "key 'template' must be a string, got int"),
        ('template = "<image>\\nHi."\nsentences = "one"\n', "key 'sentences' must be an integer, got str"),
        ('template = "<image>\\nHi."\nsentences = true\n', "key 'sentences' must be an integer, got bool"),
        ('template = "<image>\\nHi."\nsentences = -1\n', "key 'sentences' must be >= 0"),
        ('template = "<image>\\nHi."\nsource = ["a"]\n', "key 'source' must be a string, got list"),
        ('template = "<image>\n', "invalid TOML"),
    ],
)
def test_bad_prompt_file_is_one_line_naming_file_and_key(tmp_path, body, expected):
    path = write(tmp_path, "bad", body)
    message = error_of(load_prompt, "bad", tmp_path)
    assert message.startswith(f"{path}:")
    assert expected in message


def test_non_utf8_prompt_file(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'template = "<image>\\nD\xe9cris."\n')
    assert error_of(load_prompt, "latin", tmp_path) == f"{path}: not UTF-8 text (byte 22)"


def test_unknown_name_lists_available(tmp_path):
    write(tmp_path, "alpha", 'template = "<image>\\nA."\n')
    write(tmp_path, "beta", 'template = "<image>\\nB."\n')
    message = error_of(load_prompt, "gamma", tmp_path)
    assert message == "unknown prompt 'gamma'; available: alpha, beta"


def test_missing_path(tmp_path):
    message = error_of(load_prompt, str(tmp_path / "nope.toml"))
    assert message == f"{tmp_path / 'nope.toml'}: prompt file not found"


def test_list_prompts_sorted_and_bad_file_raises(tmp_path):
    write(tmp_path, "b", 'template = "<image>\\nB."\n')
    write(tmp_path, "a", 'template = "<image>\\nA."\n')
    assert [p.name for p in list_prompts(tmp_path)] == ["a", "b"]
    write(tmp_path, "c", 'template = "C."\n')
    assert "c.toml: key 'template'" in error_of(list_prompts, tmp_path)
