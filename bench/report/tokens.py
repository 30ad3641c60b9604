"""PTB tokenization of runs (as pycocoevalcap scores them), cached in each run's tokens.json.

All text that is not cached yet is tokenized in ONE call of the Stanford PTBTokenizer (a Java
process), each distinct string once: with -preserveLines the tokenizer works line by line, and the
quote tokens that could depend on context are removed as punctuation afterwards.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from bench.io import atomic_write_json, read_json
from bench.report.load import RunData, inputs_digest

CACHE_NAME = "tokens.json"
_CACHE_VERSION = 1
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True)
class RunTokens:
    captions: tuple[str, ...]  # aligned with RunData.image_ids
    refs: tuple[tuple[str, ...], ...]


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Tokenize each text as `bench score` does (bench.scoring.tokenize: pycocoevalcap's
    PTBTokenizer, one JVM for everything), each distinct text once."""
    unique = sorted(set(texts))
    if not unique:
        return []
    try:
        from bench.scoring import tokenize
    except ImportError:  # scoring not installed: the same tokenizer, called directly
        return _ptb_direct(unique, texts)
    gts, _ = tokenize({str(k): [t] for k, t in enumerate(unique)}, {})
    mapping = {t: gts[str(k)][0] for k, t in enumerate(unique)}
    return [mapping[t] for t in texts]


def _ptb_direct(unique: list[str], texts: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer (same jar, same flags, same punctuation removal), with the temp
    file outside site-packages, the jar's chatter on stderr captured, and every line checked."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar_dir = Path(ptb.__file__).resolve().parent
    # pycocoevalcap replaces "\n"; other line breaks would split a caption into two lines.
    lines = [_LINE_BREAKS.sub(" ", t) for t in unique]
    with tempfile.TemporaryDirectory(prefix="bench-ptb-") as tmp:
        src = Path(tmp) / "sentences.txt"
        src.write_text("\n".join(lines), encoding="utf-8")
        cmd = ["java", "-cp", ptb.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", str(src)]
        try:
            proc = subprocess.run(cmd, cwd=jar_dir, capture_output=True, check=False)
        except FileNotFoundError as exc:
            raise BenchError("java: not found; PTB tokenization needs Java (>= 8) on PATH") from exc
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"PTBTokenizer (java) failed with exit code {proc.returncode}: {last}")
    out = proc.stdout.decode("utf-8").split("\n")
    if len(out) < len(lines):
        raise BenchError(f"PTBTokenizer returned {len(out)} lines for {len(lines)} captions")
    mapping = {
        t: " ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS)
        for t, line in zip(unique, out)
    }
    return [mapping[t] for t in texts]


def _read_cache(run: RunData, digest: str) -> RunTokens | None:
    path = run.folder / CACHE_NAME
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except BenchError:
        return None  # a damaged cache is rebuilt, never trusted
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or data.get("digest") != digest:
        return None
    caps, refs = data.get("captions"), data.get("refs")
    if not isinstance(caps, list) or not isinstance(refs, list) or len(caps) != len(run.captions):
        return None
    return RunTokens(tuple(caps), tuple(tuple(r) for r in refs))


def tokenize_runs(runs: Sequence[RunData], *, write_cache: bool = True) -> dict[str, RunTokens]:
    """Tokens of every run (cached ones read, the rest tokenized together and cached)."""
    out: dict[str, RunTokens] = {}
    todo: list[tuple[RunData, str]] = []
    for run in runs:
        digest = inputs_digest(run)
        cached = _read_cache(run, digest)
        if cached is not None:
            out[run.run] = cached
        else:
            todo.append((run, digest))
    if not todo:
        return out
    # The tokenizer works line by line, so a text already tokenized in another run's cache (the
    # references every run of a split shares) is not sent to the JVM again.
    known: dict[str, str] = {}
    for run in runs:
        if run.run in out:
            known.update(zip(run.captions, out[run.run].captions))
            known.update(zip((r for refs in run.refs for r in refs), (t for refs in out[run.run].refs for t in refs)))
    texts: list[str] = []
    for run, _ in todo:
        texts.extend(run.captions)
        texts.extend(r for refs in run.refs for r in refs)
    new = sorted({t for t in texts if t not in known})
    known.update(zip(new, ptb_tokenize(new)))
    tokens = iter([known[t] for t in texts])
    for run, digest in todo:
        caps = tuple(next(tokens) for _ in run.captions)
        refs = tuple(tuple(next(tokens) for _ in image_refs) for image_refs in run.refs)
        out[run.run] = RunTokens(caps, refs)
        if write_cache:
            _write_cache(run.folder / CACHE_NAME, digest, caps, refs)
    return out


def _write_cache(path: Path, digest: str, caps: tuple[str, ...], refs: tuple[tuple[str, ...], ...]) -> None:
    payload = {"version": _CACHE_VERSION, "tokenizer": "PTBTokenizer (pycocoevalcap)", "digest": digest,
               "captions": list(caps), "refs": [list(r) for r in refs]}
    try:
        atomic_write_json(path, payload)
    except BenchError:
        pass  # a read-only run folder only costs a re-tokenization next time
