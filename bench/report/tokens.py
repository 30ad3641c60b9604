"""PTB tokenization of runs (as pycocoevalcap scores them), cached in each run's tokens.json
(a declared, derived member of the run folder: bench.run.folder).

All text that is not cached yet is tokenized in ONE call of bench.scoring's tokenizer (one Java
process), each distinct string once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.report.load import RunData, inputs_digest
from bench.run.folder import RunFolder
from bench.scoring.text_metrics import tokenize

TOKENS_VERSION = 1  # of the cache's content: bump when the tokenization changes


@dataclass(frozen=True)
class RunTokens:
    captions: tuple[str, ...]  # aligned with RunData.image_ids
    refs: tuple[tuple[str, ...], ...]


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Tokenize each text as `bench score` does (bench.scoring.tokenize: pycocoevalcap's
    PTBTokenizer, one JVM for everything, its line-break guard), each distinct text once."""
    unique = sorted(set(texts))
    if not unique:
        return []
    gts, _ = tokenize({str(k): [t] for k, t in enumerate(unique)}, {})
    mapping = {t: gts[str(k)][0] for k, t in enumerate(unique)}
    return [mapping[t] for t in texts]


def _read_cache(run: RunData, digest: str) -> RunTokens | None:
    data = RunFolder(run.folder).read_tokens()  # None when missing or damaged: rebuilt, never trusted
    if data is None or data.get("version") != TOKENS_VERSION or data.get("digest") != digest:
        return None
    caps, refs = data.get("captions"), data.get("refs")
    if not isinstance(caps, list) or not isinstance(refs, list) or len(caps) != len(run.captions):
        return None
    return RunTokens(tuple(caps), tuple(tuple(r) for r in refs))


def tokenize_runs(
    runs: Sequence[RunData], *, write_cache: bool = True, known: Sequence[tuple[RunData, RunTokens]] = ()
) -> dict[str, RunTokens]:
    """Tokens of every run (cached ones read, the rest tokenized together and cached); `known`:
    runs whose tokens are already at hand, whose text is not sent to the tokenizer again."""
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
    known_text: dict[str, str] = {}
    seen_refs: set[int] = set()  # runs read from one split entry share their references' object
    for run, got in [*known, *((r, out[r.run]) for r in runs if r.run in out)]:
        known_text.update(zip(run.captions, got.captions))
        if id(run.refs) not in seen_refs:
            seen_refs.add(id(run.refs))
            known_text.update(zip((r for refs in run.refs for r in refs), (t for refs in got.refs for t in refs)))
    texts: list[str] = []
    for run, _ in todo:
        texts.extend(run.captions)
        texts.extend(r for refs in run.refs for r in refs)
    new = sorted({t for t in texts if t not in known_text})
    known_text.update(zip(new, ptb_tokenize(new)))
    tokens = iter([known_text[t] for t in texts])
    for run, digest in todo:
        caps = tuple(next(tokens) for _ in run.captions)
        refs = tuple(tuple(next(tokens) for _ in image_refs) for image_refs in run.refs)
        out[run.run] = RunTokens(caps, refs)
        if write_cache:
            _write_cache(RunFolder(run.folder), digest, caps, refs)
    return out


def _write_cache(folder: RunFolder, digest: str, caps: tuple[str, ...], refs: tuple[tuple[str, ...], ...]) -> None:
    # A read-only run folder only costs a re-tokenization next time (write_tokens never fails).
    folder.write_tokens({"version": TOKENS_VERSION, "tokenizer": "PTBTokenizer (pycocoevalcap)", "digest": digest,
                         "captions": list(caps), "refs": [list(r) for r in refs]})
