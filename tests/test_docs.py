"""The commands in README.md and docs/*.md are real: every fenced ```bash `bench ...` command names
an existing subcommand and only flags that subcommand's `--help` lists, and the ones that need no
weights, network, GPU or ../shared are run. Pages added to docs/ later are covered as they come.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from conftest import REPO

FLAG = re.compile(r"--?[A-Za-z][\w-]*")
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class DocCommand:
    where: str  # "docs/x.md:12"
    line: str  # the command as written
    args: tuple[str, ...]  # what follows `bench` (or `-m bench`)


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _shell_lines(code: str, first_line: int) -> list[tuple[int, str]]:
    """(line number, command) of a bash block: continuations joined, heredoc bodies left out."""
    out: list[tuple[int, str]] = []
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        number, text = first_line + i, lines[i]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i]
        i += 1
        if heredoc := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", text):
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        if text.strip():
            out.append((number, text))
    return out


def _bench_args(line: str) -> list[tuple[str, ...]]:
    """The arguments of each `bench ...` / `... -m bench ...` command on one shell line."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens, found, current = list(lexer), [], []
    for token in tokens + [";"]:
        if token in SEPARATORS:
            if current:
                found.append(current)
            current = []
        else:
            current.append(token)
    invocations = []
    for words in found:
        if words[0] == "bench":
            invocations.append(tuple(words[1:]))
        elif "-m" in words and words.index("-m") + 1 < len(words) and words[words.index("-m") + 1] == "bench":
            invocations.append(tuple(words[words.index("-m") + 2:]))
    return invocations


def bash_commands(path: Path) -> list[DocCommand]:
    """Every `bench` command in the ```bash fences of one markdown file."""
    name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    commands = []
    for token in MarkdownIt().parse(path.read_text(encoding="utf-8")):
        if token.type == "fence" and token.info.strip() == "bash" and token.map:
            for number, line in _shell_lines(token.content, token.map[0] + 2):
                commands += [DocCommand(f"{name}:{number}", line.strip(), args) for args in _bench_args(line)]
    return commands


@functools.cache
def _root_command():  # -> click.Group
    import typer

    from bench.cli import app

    return typer.main.get_command(app)


def split_subcommand(args: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(subcommand path, e.g. ("data", "info"), the rest). An unknown subcommand stays in the rest."""
    command, path = _root_command(), []
    while _subcommands(command) and args and args[0] in _subcommands(command):
        command = command.commands[args[0]]
        path.append(args[0])
        args = args[1:]
    return tuple(path), args


@functools.cache
def help_flags(path: tuple[str, ...]) -> frozenset[str]:
    """The flags `bench PATH --help` lists in its options panel (one --help per subcommand)."""
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, [*path, "--help"], prog_name="bench")
    assert result.exit_code == 0, f"bench {' '.join(path)} --help: {result.output}"
    flags = set()
    for row in result.output.splitlines():
        words = row.strip("│ ").split()
        words = words[1:] if words[:1] == ["*"] else words  # the required marker
        for word in words:
            if not FLAG.fullmatch(word):
                break
            flags.add(word)
    return frozenset(flags)


def problems(command: DocCommand) -> list[str]:
    """What in a documented command the CLI does not have (empty when it matches)."""
    path, rest = split_subcommand(command.args)
    if not path:
        return [] if rest[:1] == ("--help",) else [f"no subcommand `bench {' '.join(rest[:1])}`"]
    if rest and not rest[0].startswith("-") and _subcommands(_subcommand(path)):
        return [f"`bench {' '.join(path)}` has no subcommand {rest[0]!r}"]
    known = help_flags(path)
    used = [arg.split("=", 1)[0] for arg in rest if FLAG.fullmatch(arg.split("=", 1)[0])]
    return [f"`bench {' '.join(path)}` has no flag {flag} (its --help lists {', '.join(sorted(known))})"
            for flag in used if flag not in known]


def _subcommands(command) -> dict:
    """A command group's subcommands by name ({} for a plain command; typer vendors click, so
    this asks the object rather than checking a click class)."""
    return getattr(command, "commands", None) or {}


def _subcommand(path: tuple[str, ...]):  # -> the typer/click command object
    command = _root_command()
    for name in path:
        command = command.commands[name]
    return command


def runnable(command: DocCommand) -> bool:
    """The explicit rule for what this test runs: help pages, `bench list`, and `bench data ...`
    on the built-in synthetic world. They need no weights, network, GPU or ../shared."""
    path, rest = split_subcommand(command.args)
    return "--help" in rest or path == ("list",) or (path[:1] == ("data",) and any("synth" in a for a in rest))


COMMANDS = [c for f in doc_files() for c in bash_commands(f)]


def test_the_docs_hold_bench_commands() -> None:
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert "README.md" in where and len(COMMANDS) >= 20, where
    assert any(runnable(c) for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_each_documented_command_matches_the_cli(command: DocCommand) -> None:
    assert problems(command) == [], f"{command.where}: {command.line}"


RUNNABLE = [c for c in COMMANDS if runnable(c)]


@pytest.mark.parametrize("command", RUNNABLE, ids=[c.where for c in RUNNABLE])
def test_documented_commands_that_need_nothing_run(command: DocCommand, tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_RUNS": str(tmp_path / "runs"), "BENCH_CACHE": str(tmp_path / "cache"),
           "COLUMNS": "80", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "bench", *command.args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command.where}: {command.line}\n{done.stdout}\n{done.stderr}"


def test_a_renamed_flag_or_subcommand_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        "bench run --settings rank64_ep3 --limit 5   # --setting renamed\n"
        "accelerate launch --multi_gpu -m bench run \\\n    --setting s --limits 3\n"
        "python - <<'EOF'\nbench run --nonsense\nEOF\n"
        "bench data inspect synth && bench list\n"
        "```\n```text\nbench run --not-a-command-here\n```\n"
    )
    commands = bash_commands(page)
    assert [c.args for c in commands] == [("run", "--settings", "rank64_ep3", "--limit", "5"),
                                         ("run", "--setting", "s", "--limits", "3"), ("data", "inspect", "synth"), ("list",)]
    found = [problems(c) for c in commands]
    assert found[0] == [f"`bench run` has no flag --settings (its --help lists {', '.join(sorted(help_flags(('run',))))})"]
    assert "no flag --limits" in found[1][0] and found[2] == ["`bench data` has no subcommand 'inspect'"]
    assert found[3] == [] and commands[1].where.endswith(":3")



def toml_blocks(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every ```toml fence of one markdown file."""
    return [(t.map[0] + 1, t.content) for t in MarkdownIt().parse(path.read_text(encoding="utf-8"))
            if t.type == "fence" and t.info.strip() == "toml" and t.map]


@pytest.mark.parametrize("path", doc_files(), ids=[p.relative_to(REPO).as_posix() for p in doc_files()])
def test_every_toml_block_parses(path: Path) -> None:
    import tomllib

    for line, text in toml_blocks(path):
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"{path.name}:{line}: {exc}")


def test_the_readme_example_checks_and_plans(tmp_path: Path, stand_in_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's worked example: its dataset and setting files, with the dataset's two paths pointed
    at a stand-in CSV dataset, pass `bench data info` and plan both runs its commands start."""
    home = tmp_path / "home"
    for folder in ("settings", "prompts", "datasets"):
        shutil.copytree(REPO / folder, home / folder)
    written = []
    for _, text in toml_blocks(REPO / "README.md"):
        target = re.match(r"# ((?:datasets|settings)/[\w-]+\.toml)\n", text)
        if target:
            text = re.sub(r'(?m)^annotations = ".*"', f'annotations = "{stand_in_data}/flickr8k-1k/captions.txt"', text)
            text = re.sub(r'(?m)^images = ".*"', f'images = "{stand_in_data}/flickr8k-1k/images"', text)
            (home / target.group(1)).write_text(text)
            written.append(target.group(1))
    assert sorted(written) == ["datasets/my-photos.toml", "settings/my_lora.toml"]
    env = {**os.environ, "BENCH_HOME": str(home), "BENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    readme = {c.args[:2]: c.args for c in bash_commands(REPO / "README.md")}
    info = subprocess.run([sys.executable, "-m", "bench", *readme[("data", "info")]], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "my-photos" in info.stdout, info.stdout + info.stderr

    from bench.run.plan import plan_run
    from bench.settings import load_setting, prompt_setting

    monkeypatch.setenv("BENCH_HOME", str(home))
    lora = plan_run(load_setting("my_lora"), "vit-gpt2")
    assert lora.kind == "lora" and lora.config["model"]["model"] == "/models/my-vit-gpt2" and len(lora.samples) == 200
    args = readme[("run", "--prompt")]
    zero = prompt_setting(args[2], model=args[args.index("--model") + 1])
    plan = plan_run(zero, zero.backends[0], dataset=args[args.index("--data") + 1])
    assert plan.kind == "zero-shot" and plan.split.fingerprint == lora.split.fingerprint


def test_the_readme_stays_a_five_minute_read() -> None:
    """Under 150 lines: the rest belongs in a docs/ page, linked from the README's table."""
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) < 150


REPO_PATH = re.compile(r"`((?:bench|tests|benchmarks|examples|settings|prompts|datasets|reports)/[\w./-]*)`")


@pytest.mark.parametrize("path", doc_files(), ids=[p.relative_to(REPO).as_posix() for p in doc_files()])
def test_every_repository_path_the_docs_name_exists(path: Path) -> None:
    """`bench/...py`, `tests/...py`, `settings/x.toml` and the like, so a moved module is noticed."""
    named = REPO_PATH.findall(path.read_text(encoding="utf-8"))
    # placeholders a reader replaces (`datasets/NAME.toml`, `bench/backends/my_backend.py`) name no file
    real = [p for p in named if not re.search(r"(^|/)(my[_-]|[A-Z]+[./])", p)]
    missing = [p for p in real if not (REPO / p).exists()]
    # a generated output the repository ignores on purpose (reports/demo.html) is named, not kept
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *missing], cwd=REPO, capture_output=True, text=True)
    assert [p for p in missing if p not in ignored.stdout.split()] == []
