"""`bench score --json` on real published system outputs equals pycocoevalcap called directly.

Each magic-flickr30k file is one zero-shot captioning system on the 1,000 Flickr30k test images
(predictions and their 5 references in one file). Two files run by default (about 15 s each on
2 CPU cores, most of it METEOR's JVM); BENCH_TEST_ALL_MAGIC=1 runs all ten.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

from bench.paths import shared_data_dir
from bench.testing import shared

MAGIC_DIR = shared_data_dir() / "external" / "magic-flickr30k"
DEFAULT_FILES = ("magic.json", "zerocap.json")
ALL_FILES = sorted(p.name for p in MAGIC_DIR.glob("*.json")) if MAGIC_DIR.is_dir() else list(DEFAULT_FILES)
RUN_ALL = os.environ.get("BENCH_TEST_ALL_MAGIC") == "1"
KEYS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


@pytest.fixture(scope="module")
def meteor():
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()  # one JVM for every file of this module's reference computations
    yield scorer
    with scorer.lock:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()


def pycocoevalcap_scores(items: list[dict], meteor) -> dict[str, float]:
    """COCOEvalCap.evaluate(), minus SPICE: PTB-tokenize gts and res, then each scorer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {it["image_name"]: [{"caption": c} for c in it["captions"]] for it in items}
    res = {it["image_name"]: [{"caption": it["prediction"]}] for it in items}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for scorer, method in ((Bleu(4), KEYS[:4]), (meteor, "METEOR"), (Rouge(), "ROUGE-L"), (Cider(), "CIDEr")):
            score, _ = scorer.compute_score(gts, res)
            if isinstance(method, list):
                out.update({m: float(s) for m, s in zip(method, score)})
            else:
                out[method] = float(score)
    return out


@pytest.mark.slow
@shared.skip_without_data("external/magic-flickr30k")
@pytest.mark.parametrize("name", ALL_FILES)
def test_bench_score_json_equals_pycocoevalcap(name, meteor):
    if name not in DEFAULT_FILES and not RUN_ALL:
        pytest.skip("set BENCH_TEST_ALL_MAGIC=1 to score all ten systems")
    path = MAGIC_DIR / name
    items = json.loads(path.read_text(encoding="utf-8"))
    # The CLI runs in its own process while this one computes the reference (mostly JVM waits).
    with subprocess.Popen(
        [sys.executable, "-m", "bench", "score", str(path), "--refs", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as cli:
        expected = pycocoevalcap_scores(items, meteor)
        stdout, stderr = cli.communicate(timeout=600)
    proc = subprocess.CompletedProcess(cli.args, cli.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON object, got: {proc.stdout[:500]}"
    got = json.loads(lines[0])
    assert list(got) == KEYS + ["n_images"]  # no CLIP keys without --images
    assert got["n_images"] == len(items) == 1000
    assert "CLIPScore/RefCLIPScore skipped" in proc.stderr
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
