"""The judge metric against the served-VLM loopback server with scripted judge answers: valid,
invalid JSON, out of range, refused, slow, a failing endpoint; caching (a rerun makes no
requests), retries, counting, and its intervals and paired tests in `bench compare`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.errors import BenchError
from bench.judge import cache_file, judge_rows, load_judge, parse_answer
from bench.paths import REPO_DIR
from bench.testing.openai_server import Fault, OpenAIServer, ScriptedAnswerer

MODEL = "judge-model"


def candidate_of(text: str) -> str:
    """The candidate line of a rendered CLAIR prompt."""
    return re.search(r"Candidate set:\n- (.*)\n", text).group(1)


class Script:
    """Judge answers by candidate: 'good N' -> score N; others misbehave as named."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, request) -> str:
        cand = candidate_of(request.text)
        self.seen[cand] = self.seen.get(cand, 0) + 1
        if cand.startswith("good"):
            return f'Sure. ```json\n{{"score": {cand.split()[1]}, "reason": "matches the references"}}\n```'
        if cand == "invalid json":
            return '{"score": 70, "reason": "unterminated'
        if cand == "out of range":
            return '{"score": 150, "reason": "very good"}'
        if cand == "refused":
            return "I'm sorry, but I can't help with that."
        if cand == "flaky":  # unusable once, then fine: the retry recovers it
            return "no idea" if self.seen[cand] == 1 else '{"score": 40, "reason": "partly"}'
        return '{"score": 55, "reason": "slow but fine"}'


def judge_file(folder: Path, base_url: str, **fields) -> Path:
    (folder / "prompts").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_DIR / "judges" / "prompts" / "clair_v1.toml", folder / "prompts" / "clair_v1.toml")
    values = {"prompt": "clair_v1", "base_url": base_url, "model": MODEL, "temperature": 0.0, "max_tokens": 64,
              "seed": 0, "max_concurrency": 4, "timeout_s": 5.0, "parse_retries": 2, "max_retry_s": 3.0, **fields}
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    path = folder / "test_judge.toml"
    path.write_text(body)
    return path


@pytest.fixture(autouse=True)
def _text_only_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loopback server parses VLM requests (one image each); a judge request is text only. It
    is parsed here as the server parses a request whose image is empty bytes."""
    from bench.testing import openai_server

    original = openai_server.parse_chat

    def parse(body):
        has_image = any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
                        for m in body.get("messages") or [] if isinstance(m, dict))
        if has_image:
            return original(body)
        stand_in = {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}
        messages = [dict(m) for m in body["messages"]]
        user = next(m for m in messages if m.get("role") == "user")
        user["content"] = [{"type": "text", "text": user["content"]}, stand_in]
        return original({**body, "messages": messages})

    monkeypatch.setattr(openai_server, "parse_chat", parse)


@pytest.fixture()
def server():
    script = Script()
    # idle_timeout_s: the server outlives bench meta's scoring before the first judge request
    with OpenAIServer(ScriptedAnswerer(script), model_ids=(MODEL,), idle_timeout_s=120) as s:
        s.script = script
        yield s


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))


REFS = ["a dog runs on the grass", "a brown dog in a park"]


def test_answers_are_scored_retried_counted_and_cached(tmp_path: Path, server) -> None:
    spec = load_judge(judge_file(tmp_path, server.base_url))
    cands = ["good 80", "invalid json", "out of range", "refused", "flaky", "good 80", "good 20"]
    judged = judge_rows(spec, cands, [REFS] * len(cands))
    s = judged.scores
    assert s[0] == s[5] == pytest.approx(0.8) and s[6] == pytest.approx(0.2) and s[4] == pytest.approx(0.4)
    assert np.isnan(s[1:4]).all()  # unusable answers are missing, never 0
    assert judged.n_unparsable == 3 and judged.n_transport == 0 and judged.n_cached == 0
    # 6 distinct items asked once; 4 unusable first answers asked again; 3 still unusable asked a third time
    assert judged.n_requests == 6 + 4 + 3 == server.stats.requests
    assert server.script.seen["refused"] == 3 and server.script.seen["flaky"] == 2 and server.script.seen["good 80"] == 1
    assert "3 of 7 captions have no judgement" in judged.notes[0]
    assert judged.reasons[0] == "matches the references"

    before = server.stats.requests
    again = judge_rows(spec, cands, [REFS] * len(cands))
    assert server.stats.requests == before and again.n_requests == 0  # a rerun makes no requests
    np.testing.assert_array_equal(again.scores, judged.scores)
    assert again.n_unparsable == 3 and again.n_cached == 6
    assert cache_file(spec).is_file() and str(tmp_path / "cache") in str(cache_file(spec))


def test_cache_key_is_judge_prompt_version_candidate_and_references(tmp_path: Path, server) -> None:
    spec = load_judge(judge_file(tmp_path, server.base_url))
    judge_rows(spec, ["good 10"], [REFS])
    judge_rows(spec, ["good 10"], [REFS[:1]])  # other references: asked
    assert server.stats.requests == 2
    prompt = tmp_path / "prompts" / "clair_v1.toml"
    prompt.write_text(prompt.read_text().replace('version = "clair-v1"', 'version = "clair-v2"'))
    judge_rows(load_judge(tmp_path / "test_judge.toml"), ["good 10"], [REFS])  # new prompt version: asked
    assert server.stats.requests == 3


def test_slow_answers_are_retried_and_failed_requests_counted_not_cached(tmp_path: Path, server) -> None:
    spec = load_judge(judge_file(tmp_path, server.base_url, timeout_s=0.5, max_retry_s=3.0))
    server.faults.append(Fault("slow", times=1, delay_s=1.5, match=lambda r: "slow one" in r.text))
    server.faults.append(Fault("500", times=None, match=lambda r: "broken one" in r.text))
    judged = judge_rows(spec, ["slow one", "broken one", "good 90"], [REFS] * 3)
    assert judged.scores[0] == pytest.approx(0.55)  # timed out once, answered on the retry
    assert np.isnan(judged.scores[1]) and judged.scores[2] == pytest.approx(0.9)
    assert judged.n_transport == 1 and judged.n_unparsable == 0
    before = server.stats.requests
    rerun = judge_rows(spec, ["slow one", "broken one", "good 90"], [REFS] * 3)
    assert rerun.n_requests == 1 and server.stats.requests > before  # only the failed one is asked again


def test_requests_are_text_only_greedy_and_pinned(tmp_path: Path, server) -> None:
    seen = []
    server.answerer = ScriptedAnswerer(lambda r: seen.append(r) or '{"score": 5, "reason": "x"}')
    spec = load_judge(judge_file(tmp_path, server.base_url, max_tokens=77))
    judge_rows(spec, ["a cat"], [REFS])
    (request,) = seen
    assert request.image == b"" and request.max_tokens == 77
    assert request.system == spec.prompt.system and "- a brown dog in a park" in request.text
    assert server.stats.models == [MODEL]


def test_parse_answer_accepts_only_a_score_in_range() -> None:
    assert parse_answer('{"score": 0, "reason": "no"}') == (0.0, "no")
    assert parse_answer('text {"score": 100} text') == (100.0, "")
    for bad in ("", "none", '{"score": "high"}', '{"score": -1}', '{"score": true}', "[1, 2]", '{"reason": "x"}'):
        assert parse_answer(bad)[0] is None, bad


def test_judge_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"test_judge.toml: field 'temperature' must be 0"):
        load_judge(judge_file(tmp_path, "http://bench-tests.invalid/v1", temperature=0.7))
    with pytest.raises(BenchError, match=r"test_judge.toml: unknown field 'top_p'"):
        load_judge(judge_file(tmp_path, "http://bench-tests.invalid/v1", top_p=0.9))
    with pytest.raises(BenchError, match=r"clair_v9.toml: file not found"):
        load_judge(judge_file(tmp_path, "http://bench-tests.invalid/v1", prompt="clair_v9"))
    assert load_judge("clair_local").prompt.version == "clair-v1"  # the shipped judge setting


def test_judge_metric_in_bench_compare_with_intervals_and_paired_tests(tmp_path: Path, server, monkeypatch) -> None:
    from bench.report import build_report
    from bench.report.bootstrap import resample_counts
    from bench.testing.run_folders import write_run

    n, n_boot = 12, 200
    samples = [{"image_id": f"img{k}", "path": "", "refs": REFS} for k in range(n)]
    scores = {"a": [30 + 5 * k for k in range(n)], "b": [20 + 3 * k for k in range(n)]}
    root = tmp_path / "runs"
    for name, values in scores.items():
        caps = {f"img{k}": f"good {v}" for k, v in enumerate(values)}
        caps["img3"] = "refused" if name == "a" else caps["img3"]  # one unusable answer
        write_run(root, setting=name, backend="external", kind="external", dataset="toy", fingerprint="fp",
                  samples=samples, captions=caps, corpus={})
    spec = load_judge(judge_file(tmp_path / "judge", server.base_url))
    result = build_report(root, tmp_path / "r.md", json_out=tmp_path / "r.json", n_boot=n_boot, judge=spec, baseline="b/external")
    data = json.loads(result.json.read_text())
    runs = {r["run"]: r for r in data["sections"][0]["runs"]}
    judged_a = np.array([v / 100 for k, v in enumerate(scores["a"]) if k != 3])
    clair = runs["a/external"]["metrics"]["CLAIR"]
    assert clair["value"] == pytest.approx(judged_a.mean())  # the unusable answer is left out, not 0
    # The interval: percentiles of the mean over the judged images of each resample, as stated.
    counts = resample_counts(n, n_boot, seed=0).astype(float)
    order = sorted(range(n), key=lambda k: f"img{k}")  # a section resamples its images in id order
    per = np.array([np.nan if k == 3 else scores["a"][k] / 100 for k in order])
    ok = np.isfinite(per)
    means = counts @ np.where(ok, per, 0) / (counts @ ok)
    assert (clair["lo"], clair["hi"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert clair["p_vs_baseline"] < 0.05 and clair["p_holm"] >= clair["p_vs_baseline"]
    assert data["judge"]["model"] == MODEL and data["judge"]["prompt_version"] == "clair-v1"

    md = result.markdown.read_text()
    assert "| CLAIR |" in md.replace(" CLAIR ", "| CLAIR |") and "Holm p CLAIR" in md
    notes = data["sections"][0]["notes"]
    assert notes[0].startswith("CLAIR: judge test_judge (model judge-model, prompt clair_v1 version clair-v1, temperature 0")
    assert notes[1].startswith("a/external: CLAIR: 1 of 12 captions have no judgement") and len(notes) == 2
    assert "Note: CLAIR: judge test\\_judge" in md
    before = server.stats.requests
    build_report(root, tmp_path / "r2.md", n_boot=50, judge=spec)
    assert server.stats.requests == before  # the second report is served from the cache
    plain = build_report(root, tmp_path / "r3.md", json_out=tmp_path / "r3.json", n_boot=50)
    off = json.loads((tmp_path / "r3.json").read_text())
    assert "judge" not in off and all("CLAIR" not in r["metrics"] for r in off["sections"][0]["runs"])  # off by default
    assert "| CLAIR" not in plain.markdown.read_text() and "Holm p CLAIR" not in plain.markdown.read_text()


def test_bench_meta_has_a_judge_row_when_a_judge_is_configured(tmp_path: Path, server, capsys, shared_data: Path) -> None:
    from bench.paths import shared_data_dir
    from tests.test_score_cli import run_cli

    pairs = json.loads((shared_data_dir() / "human/pascal-50s/pascal_50s.json").read_text())
    sub = {cat: p[:6] for cat, p in pairs.items()}
    path = tmp_path / "pascal_50s.json"
    path.write_text(json.dumps(sub))
    # The judge scores a caption by its length: a scripted judge with an opinion, not a constant.
    server.answerer = ScriptedAnswerer(lambda r: json.dumps({"score": min(100, len(candidate_of(r.text))), "reason": "-"}))
    judge = judge_file(tmp_path / "judge", server.base_url)
    code, out, err = run_cli(["meta", "--data", "pascal-50s", "--path", path, "--out", tmp_path / "m.md",
                              "--resamples", "20", "--judge", judge], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "m.json").read_text())["rows"]
    judged = {r["aspect"]: r for r in rows if r["metric"] == "CLAIR"}
    assert set(judged) == {"HC", "HI", "HM", "MM"}
    for cat, r in judged.items():
        length = [[min(100, len(" ".join(c.split()))) for c in p["captions"]] for p in sub[cat]]
        agree = sum(int(b > a) == p["label"] for (a, b), p in zip(length, sub[cat]))  # a tie picks the first
        assert r["value"] == pytest.approx(100 * agree / 6) and r["n"] == 6
    assert "CLAIR" in out


def test_a_wrong_endpoint_or_model_is_a_one_line_error_before_any_judgement(tmp_path: Path, server) -> None:
    spec = load_judge(judge_file(tmp_path, server.base_url, model="other-model"))
    with pytest.raises(BenchError, match=r"test_judge.toml: field 'model': 'other-model' is not served .*judge-model"):
        judge_rows(spec, ["good 10"], [REFS])
    assert server.stats.requests == 0  # only GET /models, no chat request
    spec = load_judge(judge_file(tmp_path, "http://bench-tests.invalid/v1", timeout_s=2.0))
    with pytest.raises(BenchError, match=r"test_judge.toml: field 'base_url': http://bench-tests.invalid/v1 did not answer"):
        judge_rows(spec, ["good 10"], [REFS])


def test_a_rejected_key_names_api_key_env_and_never_shows_the_key(tmp_path: Path, server, monkeypatch) -> None:
    server.api_key = "sk-right"
    monkeypatch.setenv("BENCH_TEST_JUDGE_KEY", "sk-wrong-secret")
    spec = load_judge(judge_file(tmp_path, server.base_url, api_key_env="BENCH_TEST_JUDGE_KEY"))
    with pytest.raises(BenchError, match=r"field 'api_key_env'") as caught:
        judge_rows(spec, ["good 10"], [REFS])
    assert "sk-wrong-secret" not in str(caught.value)
    monkeypatch.setenv("BENCH_TEST_JUDGE_KEY", "sk-right")
    assert judge_rows(spec, ["good 10"], [REFS]).scores[0] == pytest.approx(0.1)
