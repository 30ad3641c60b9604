"""Settings: shipped files, extends/deep-merge, strict validation with one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.settings import (
    list_settings,
    load_setting,
    prompt_setting,
    settings_in_group,
)

REPO = Path(__file__).resolve().parent.parent
LORA = ("vit-gpt2", "clip-flan-t5")
REPORT = ("rank32_ep10", "rank32_ep5", "rank64_ep3", "rank32_ep7", "rank32_ep13")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A BENCH_HOME with the project's base.toml and prompts, and no other setting."""
    (tmp_path / "settings").mkdir()
    shutil.copy(REPO / "settings" / "base.toml", tmp_path / "settings" / "base.toml")
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))
    return tmp_path


def write(home: Path, name: str, text: str) -> Path:
    path = home / "settings" / f"{name}.toml"
    path.write_text(text)
    return path


# --- shipped settings ----------------------------------------------------------------------------

def test_every_shipped_setting_loads() -> None:
    settings = {s.name: s for s in list_settings()}
    assert "base" not in settings
    for name in (*REPORT, "lora_attn", "lora_attn_ffn", "llava_brief", "llava_key_objects"):
        assert name in settings, name
        assert settings[name].group == "report"
        assert settings[name].description
    prompts = {p.stem for p in (REPO / "prompts").glob("*.toml")}
    covered = {s.prompt for s in settings.values() if s.prompt}
    assert prompts <= covered, f"prompts without a llava setting: {prompts - covered}"


def test_report_settings_match_the_course_report() -> None:
    best = load_setting("rank32_ep10")
    assert (best.lora.r, best.train.epochs, best.train.lr) == (32, 10, 5e-5)
    assert (best.generation.strategy, best.generation.num_beams) == ("beam", 5)
    assert best.backends == LORA  # "applies to both LoRA backends unless it names one"
    assert best.prompt is None
    assert best.data.dataset == "flickr8k-1k"
    assert best.scoring.clip_model == "openai/clip-vit-base-patch32"
    assert best.models["vit-gpt2"].model == "nlpconnect/vit-gpt2-image-captioning"
    assert best.models["llava"].model == "llava-hf/llava-1.5-7b-hf"
    r64 = load_setting("rank64_ep3")
    assert (r64.lora.r, r64.train.epochs, r64.generation.num_beams) == (64, 3, 5)
    for name, epochs in (("rank32_ep5", 5), ("rank32_ep7", 7), ("rank32_ep13", 13)):
        s = load_setting(name)
        assert (s.lora.r, s.train.epochs, s.generation.num_beams) == (32, epochs, 5)
    attn, ffn = load_setting("lora_attn"), load_setting("lora_attn_ffn")
    assert (attn.lora.targets, ffn.lora.targets) == ("attn", "attn_ffn")
    assert attn.backends == ffn.backends == ("clip-flan-t5",)
    brief = load_setting("llava_brief")
    assert (brief.backends, brief.prompt) == (("llava",), "brief")


def test_group_is_just_a_field(home: Path) -> None:
    write(home, "a", 'group = "demo"\n')
    write(home, "b", 'group = "demo"\n[lora]\nr = 4\n')
    write(home, "c", "")
    assert [s.name for s in settings_in_group("demo")] == ["a", "b"]
    with pytest.raises(BenchError, match="no setting has group = 'nope'"):
        settings_in_group("nope")


# --- extends and merge ---------------------------------------------------------------------------

def test_extends_chain_deep_merges_tables(home: Path) -> None:
    write(home, "parent", '[lora]\nr = 8\n[train]\nepochs = 2\n[models.clip-flan-t5]\noptions = { extra = 1 }\n')
    write(home, "child", 'extends = "parent"\n[train]\nlr = 0.5\n')
    s = load_setting("child")
    assert s.lora.r == 8  # from parent
    assert s.lora.alpha == 32  # from base
    assert (s.train.epochs, s.train.lr) == (2, 0.5)  # parent + child in one table
    assert s.models["clip-flan-t5"].options == {"vision_model": "openai/clip-vit-base-patch16", "extra": 1}
    assert s.source == "settings/child.toml"
    assert s.name == "child"


def test_extends_cycle_is_an_error(home: Path) -> None:
    write(home, "a", 'extends = "b"\n')
    write(home, "b", 'extends = "a"\n')
    with pytest.raises(BenchError, match=r"extends cycle: settings/a.toml -> settings/b.toml -> settings/a.toml"):
        load_setting("a")


def test_extends_unknown_parent(home: Path) -> None:
    write(home, "a", 'extends = "nope"\n')
    with pytest.raises(BenchError, match=r"^settings/a.toml: extends: setting 'nope' not found"):
        load_setting("a")


def test_error_names_the_file_that_set_the_key(home: Path) -> None:
    write(home, "parent", "[lora]\nr = 0\n")
    write(home, "child", 'extends = "parent"\n[train]\nepochs = 2\n')
    with pytest.raises(BenchError, match=r"^settings/parent.toml: lora.r must be >= 1 \(got 0\)$"):
        load_setting("child")


def test_cross_key_error_names_the_file_that_changed_it(home: Path) -> None:
    write(home, "beam", "[generation]\nstrategy = 'beam'\n")  # num_beams = 1: the dataclass default
    with pytest.raises(BenchError, match=r"^settings/beam.toml: generation.num_beams must be >= 2 with strategy"):
        load_setting("beam")


def test_paths_are_expanded_and_relative_to_the_file(home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "elsewhere"
    other.mkdir()
    path = other / "mine.toml"
    path.write_text('[models.vit-gpt2]\nmodel = "./tiny"\n[models.clip-flan-t5]\nmodel = "${BENCH_CACHE}/t5"\n')
    s = load_setting(path)
    assert s.models["vit-gpt2"].model == str(other / "tiny")
    assert s.models["clip-flan-t5"].model == str(tmp_path / "cache" / "t5")
    assert s.name == "mine"


def test_default_backends_follow_the_kind(home: Path) -> None:
    write(home, "lora", "[lora]\nr = 4\n")
    write(home, "zs", 'prompt = "brief"\n')
    write(home, "one", 'backends = ["clip-flan-t5"]\n')
    assert load_setting("lora").backends == LORA
    assert load_setting("zs").backends == ("llava",)
    assert load_setting("one").backends == ("clip-flan-t5",)


def test_prompt_setting(home: Path) -> None:
    s = prompt_setting("key_objects")
    assert (s.name, s.backends, s.prompt) == ("prompt-key_objects", ("llava",), "key_objects")
    assert s.models["llava"].model == "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(BenchError, match=r"^prompts: no prompt named 'brif'; did you mean 'brief'\?$"):
        prompt_setting("brif")


def test_unknown_setting_name(home: Path) -> None:
    write(home, "rank8", "")
    with pytest.raises(BenchError, match=r"^settings/rank9.toml: no such setting; did you mean 'rank8'\?$"):
        load_setting("rank9")


# --- validation: one line naming the file and the key --------------------------------------------

BAD = [
    ("[lora]\nr = 0\n", "lora.r must be >= 1 (got 0)"),
    ("[lora]\nalpha = 0\n", "lora.alpha must be > 0 (got 0)"),
    ("[lora]\ndropout = 1.0\n", "lora.dropout must be in [0, 1) (got 1.0)"),
    ("[lora]\ndropout = -0.1\n", "lora.dropout must be in [0, 1) (got -0.1)"),
    ("[lora]\ntargets = []\n", "lora.targets must name a preset"),
    ("[train]\nepochs = 0\n", "train.epochs must be >= 1 (got 0)"),
    ("[train]\nlr = 0\n", "train.lr must be > 0 (got 0.0)"),
    ("[train]\nlr = -1e-4\n", "train.lr must be > 0 (got -0.0001)"),
    ("[train]\nbatch_size = 0\n", "train.batch_size must be >= 1 (got 0)"),
    ("[train]\ntrain_size = 0\n", "train.train_size must be >= 1 (got 0)"),
    ("[train]\nprecision = 'fp8'\n", "train.precision must be 'auto' or 'fp32' or 'bf16' or 'fp16' (got 'fp8')"),
    ("[generation]\nbatch_size = 0\n", "generation.batch_size must be >= 1 (got 0)"),
    ("[generation]\nnum_beams = 0\n", "generation.num_beams must be >= 1 (got 0)"),
    ("[generation]\nstrategy = 'beam'\nnum_beams = 1\n", "generation.num_beams must be >= 2 with strategy = 'beam'"),
    ("[generation]\nnum_beams = 3\n", "generation.num_beams must be 1 with strategy = 'greedy'"),
    ("[generation]\nmax_new_tokens = 0\n", "generation.max_new_tokens must be >= 1 (got 0)"),
    ("[generation]\nstrategy = 'sample'\n", "generation.strategy must be 'greedy' or 'beam' (got 'sample')"),
    ("[scoring]\nmetrics = ['bleu', 'spice']\n", "scoring.metrics must be a non-empty list of"),
    ("[data]\nlimit = 0\n", "data.limit must be >= 1 (got 0)"),
    ("seed = -1\n", "seed must be >= 0 (got -1)"),
    ("[lora]\nrank = 8\n", "unknown key 'lora.rank' (known keys: r, alpha, dropout, targets)"),
    ("[train]\nepoch = 3\n", "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
    ("promt = 'brief'\n", "unknown key 'promt'; did you mean 'prompt'?"),
    ("[lora]\nr = 'big'\n", "lora.r must be an integer (got 'big')"),
    ("[lora]\nr = 8.5\n", "lora.r must be an integer (got 8.5)"),
    ("[train]\nlr = true\n", "train.lr must be a number (got True)"),
    ("lora = 3\n", "lora must be a table ([lora])"),
    ("backends = 'vit-gpt2'\n", "backends must be a list of backend names (got 'vit-gpt2')"),
    ("backends = ['vit-gtp2']\n", "backends: unknown backend 'vit-gtp2'; did you mean 'vit-gpt2'?"),
    ("backends = []\n", "backends must name at least one backend"),
    ("backends = ['llava']\n", "backend 'llava' is zero-shot and needs a prompt"),
    ("prompt = 'nope'\n", "prompt: unknown prompt 'nope'"),
    ("backends = ['vit-gpt2']\nprompt = 'brief'\n", "prompt: backends vit-gpt2 take no prompt"),
    # A prompt setting with its own [lora] table fine-tunes the VLM (tests/test_vlm_lora_settings.py);
    # [train] alone trains nothing.
    ("prompt = 'brief'\n[train]\nepochs = 2\n", "train.epochs: a prompt setting trains nothing without its own [lora] table"),
    ("[models.vit-gtp2]\nmodel = 'x'\n", "unknown key 'models.vit-gtp2'; did you mean 'models.vit-gpt2'?"),
    ("[models.llava]\nquantization = '3bit'\n", "models.llava.quantization must be 'none' or '4bit' or '8bit' (got '3bit')"),
    ("[models.llava]\nmodel = ''\n", "models.llava.model is empty"),
    ("[models.llava]\nrevision = 'main'\n", "unknown key 'models.llava.revision'"),
    ("[lora\nr = 1\n", "invalid TOML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(" ")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_value_is_one_line_naming_file_and_key(home: Path, text: str, message: str) -> None:
    write(home, "bad", text)
    with pytest.raises(BenchError) as info:
        load_setting("bad")
    text_out = str(info.value)
    assert text_out.startswith("settings/bad.toml: "), text_out
    assert message in text_out, text_out
    assert "\n" not in text_out


def test_bad_prompt_file_is_reported_through_the_setting(home: Path) -> None:
    (home / "prompts" / "noimg.toml").write_text('template = "Describe it."\n')
    write(home, "bad", "prompt = 'noimg'\n")
    with pytest.raises(BenchError, match=r"noimg.toml: key 'template' must contain the <image> placeholder"):
        load_setting("bad")


CLI_CASES = [
    ("[lora]\nr = 0\n", "settings/bad.toml: lora.r must be >= 1 (got 0)"),
    ("[train]\nepoch = 3\n", "settings/bad.toml: unknown key 'train.epoch'; did you mean 'train.epochs'?"),
    ("prompt = 'nope'\n", "settings/bad.toml: prompt: unknown prompt 'nope'"),
]


@pytest.mark.parametrize("text,message", CLI_CASES)
def test_cli_bad_setting_exits_non_zero_without_traceback(home: Path, text: str, message: str) -> None:
    write(home, "bad", text)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--setting", "bad"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "BENCH_HOME": str(home), "COLUMNS": "300"},
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert not (home / "runs").exists()  # nothing was started
