"""BLEU, METEOR, ROUGE-L and CIDEr(-D) exactly as pycocoevalcap computes them.

pycocoevalcap's COCOEvalCap runs the Java PTB tokenizer once for the references and once for the
candidates, then hands the tokenized text to each scorer. Here tokenization runs ONCE per scoring
call over references and candidates together (the tokenizer is line-preserving, so the tokens are
identical) and the scorers below take already tokenized text. They are thin wrappers: the numbers
come from pycocoevalcap's own scorer classes.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Mapping, Sequence
from typing import Protocol

from bench.errors import BenchError

JAVA_MISSING = (
    "Java is needed for PTB tokenization and METEOR: install it with "
    "'apt-get install -y default-jre-headless'"
)

# Characters Java reads as line breaks. PTBTokenizer runs with -preserveLines, so one of these
# inside a caption would shift every later caption onto the wrong image; pycocoevalcap only
# guards against "\n". They are whitespace to the tokenizer, so a space gives the same tokens.
_JAVA_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\u2028\u2029\x85\x0b\x0c"})  # \v, \f too

Gts = Mapping[str, Sequence[str]]
# Numbers on the METEOR 1.5 jar's answer to a SCORE line: one image's sufficient statistics.
METEOR_STATS_LENGTH = 23


def require_java() -> None:
    if shutil.which("java") is None:
        raise BenchError(JAVA_MISSING)


def tokenize(gts: Gts, res: Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """PTB-tokenize references and candidates in ONE tokenizer run (one JVM start).

    Returns (gts, res) with the same keys and list lengths, lower-cased, punctuation removed, as
    pycocoevalcap's PTBTokenizer produces them.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java()
    merged: dict[tuple[str, str], list[dict[str, str]]] = {}
    for side, data in (("gts", gts), ("res", res)):
        for key, caps in data.items():
            merged[(side, key)] = [{"caption": c.translate(_JAVA_LINE_BREAKS)} for c in caps]
    n_lines = sum(len(v) for v in merged.values())
    if n_lines == 0:
        return {k: [] for k in gts}, {k: [] for k in res}
    try:
        out = PTBTokenizer().tokenize(merged)
    except FileNotFoundError as exc:  # java vanished between the check and the call
        raise BenchError(JAVA_MISSING) from exc
    except OSError as exc:  # e.g. pycocoevalcap's folder (where it writes its temp file) is read-only
        raise BenchError(f"PTB tokenizer (pycocoevalcap) failed: {exc}") from exc
    got = sum(len(v) for v in out.values())
    if got != n_lines or out.keys() != merged.keys():
        raise BenchError(f"PTB tokenizer returned {got} lines for {n_lines} captions; is Java working?")
    tok_gts = {key: out[("gts", key)] for key in gts}
    tok_res = {key: out[("res", key)] for key in res}
    return tok_gts, tok_res


class TextMetric(Protocol):
    """pycocoevalcap's interface: (corpus score, per-image scores in gts key order)."""

    names: tuple[str, ...]

    def compute_score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[object, object]: ...

    def close(self) -> None: ...


class BleuMetric:
    names = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")

    def compute_score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[list[float], list[list[float]]]:
        from pycocoevalcap.bleu.bleu import Bleu

        # pycocoevalcap's Bleu prints its statistics to stdout; `--json` must own stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            score, scores = Bleu(4).compute_score(gts, res)
        return [float(s) for s in score], [[float(x) for x in per] for per in scores]

    def close(self) -> None:
        pass


class RougeMetric:
    names = ("ROUGE-L",)

    def compute_score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
        from pycocoevalcap.rouge.rouge import Rouge

        score, scores = Rouge().compute_score(gts, res)
        return float(score), [float(x) for x in scores]

    def close(self) -> None:
        pass


class CiderMetric:
    """CIDEr-D, as pycocoevalcap's `Cider` (document frequencies from the scored references)."""

    names = ("CIDEr",)

    def compute_score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
        from pycocoevalcap.cider.cider import Cider

        score, scores = Cider().compute_score(gts, res)
        return float(score), [float(x) for x in scores]

    def close(self) -> None:
        pass


class MeteorMetric:
    """METEOR 1.5 through pycocoevalcap's jar wrapper; one JVM per instance, closed by close().

    `start()` launches the JVM without waiting for it, so the scorer can start it before
    tokenizing and the paraphrase table loads while the tokenizer runs.
    """

    names = ("METEOR",)

    def __init__(self) -> None:
        self._meteor = None

    def start(self) -> None:
        if self._meteor is not None:
            return
        from pycocoevalcap.meteor.meteor import Meteor

        require_java()
        try:
            self._meteor = Meteor()
        except FileNotFoundError as exc:
            raise BenchError(JAVA_MISSING) from exc

    def compute_score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
        score, scores, _ = self.compute_with_stats(gts, res)
        return score, scores

    def compute_with_stats(
        self, gts: dict[str, list[str]], res: dict[str, list[str]]
    ) -> tuple[float, list[float], list[list[float]]]:
        """pycocoevalcap's Meteor.compute_score, keeping each image's statistics (the jar's answer
        to its SCORE line) so that bootstrap resamples can be aggregated as the jar aggregates."""
        self.start()
        meteor = self._meteor
        try:
            with meteor.lock:  # type: ignore[union-attr]
                return self._score_and_eval(gts, res)
        except (ValueError, BrokenPipeError, OSError) as exc:
            # The jar died (e.g. not enough memory for -Xmx2G): its last stderr line says why.
            detail = self._jar_error()
            self.close()
            raise BenchError(f"METEOR (Java) failed: {detail or exc}") from exc

    def _score_and_eval(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float], list[list[float]]]:
        """The lines pycocoevalcap's compute_score sends: one SCORE per image (through its own
        `_stat`, so the text is cleaned exactly as it cleans it), then one EVAL of all statistics."""
        meteor = self._meteor
        if gts.keys() != res.keys():
            raise BenchError("METEOR: references and candidates have different image ids")
        stats = []
        for key in gts:
            if len(res[key]) != 1:
                raise BenchError(f"METEOR: image {key!r} needs exactly one candidate")
            stats.append(meteor._stat(res[key][0], gts[key]))  # type: ignore[union-attr]
        proc = meteor.meteor_p  # type: ignore[union-attr]
        proc.stdin.write(("EVAL" + "".join(f" ||| {line}" for line in stats) + "\n").encode())
        proc.stdin.flush()
        scores = [float(proc.stdout.readline().strip()) for _ in stats]
        score = float(proc.stdout.readline().strip())
        parsed = [[float(x) for x in line.split()] for line in stats]
        return score, scores, parsed

    def _jar_error(self) -> str:
        proc = self._meteor.meteor_p if self._meteor is not None else None  # type: ignore[attr-defined]
        if proc is None or proc.poll() is None:
            return ""
        try:
            lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return lines[-1] if lines else ""

    @property
    def process(self):  # -> subprocess.Popen | None, for tests that check nothing is leaked
        return None if self._meteor is None else self._meteor.meteor_p

    def close(self) -> None:
        """Stop the JVM and close its pipes; safe to call twice."""
        meteor, self._meteor = self._meteor, None
        if meteor is None:
            return
        proc = meteor.meteor_p
        with meteor.lock:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        # pycocoevalcap's __del__ would kill it again; on a reaped process that is a no-op.

