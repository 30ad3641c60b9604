"""The `openai` backend's checks before any image (one-line errors naming the setting field),
its options, its batch `generate`, and the setting/CLI plumbing of `--endpoint`."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from bench.backends import backend_class
from bench.models.caption_text import postprocess_caption
from bench.config import GenerationConfig, ModelConfig
from bench.data.types import Sample
from bench.errors import BenchError
from bench.prompts import load_prompt
from bench.run.plan import run_identity
from bench.settings import prompt_setting
from bench.testing.openai_server import OpenAIServer, ScriptedAnswerer
from conftest import REPO

CPU = torch.device("cpu")


def load(url: str, **kw: object):
    cfg = ModelConfig(model=str(kw.pop("model", "tiny-vlm")), base_url=url, **kw)  # type: ignore[arg-type]
    return backend_class("openai").load(cfg, CPU, prompt=load_prompt("brief", REPO / "prompts"))


@pytest.fixture
def server():
    with OpenAIServer(ScriptedAnswerer()) as srv:
        yield srv


def test_generate_through_the_endpoint(server: OpenAIServer, shared_data: Path) -> None:
    images = sorted((shared_data / "flickr8k-1k" / "images").glob("*.jpg"))[:3]
    captioner = load(server.base_url)
    batch = captioner.caption_collate()([Sample(p.stem, p, ()) for p in images])
    captions = captioner.generate(batch, GenerationConfig(max_new_tokens=8))
    expected = [postprocess_caption(ScriptedAnswerer().script(_parsed(p)), 1) for p in images]
    assert captions == expected and captioner.last_truncated == [False] * 3


def _parsed(path: Path):
    from bench.testing.openai_server import ParsedRequest

    return ParsedRequest(path.read_bytes(), True, "", None, None, ())


def test_a_model_the_endpoint_does_not_serve_names_the_field(server: OpenAIServer) -> None:
    with pytest.raises(BenchError, match=r"models.openai.model 'other': not served at .* \(it serves tiny-vlm\)"):
        load(server.base_url, model="other")


def test_an_unreachable_endpoint_names_base_url() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BenchError, match=rf"models.openai.base_url http://127.0.0.1:{port}/v1: cannot reach"):
        load(f"http://127.0.0.1:{port}/v1", options={"timeout_s": 1.0})


def test_a_missing_key_variable_names_api_key_env(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_TEST_UNSET_KEY", raising=False)
    with pytest.raises(BenchError, match="models.openai.api_key_env: environment variable BENCH_TEST_UNSET_KEY is not set"):
        load(server.base_url, api_key_env="BENCH_TEST_UNSET_KEY")


@pytest.mark.parametrize(("options", "message"), [
    ({"max_concurrency": 0}, "options.max_concurrency must be >= 1"),
    ({"timeout_s": "fast"}, "options.timeout_s must be float"),
    ({"stop": "x"}, "options.stop must be a list of strings"),
    ({"speed": 1}, "options: unknown key 'speed'"),
])
def test_bad_options_are_one_line_errors(server: OpenAIServer, options: dict, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        load(server.base_url, options=options)


def test_endpoint_settings_and_their_identity() -> None:
    setting = prompt_setting("brief", model="tiny-vlm", endpoint="http://127.0.0.1:9/v1", api_key_env="K")
    assert setting.backends == ("openai",) and setting.name == "prompt-brief--tiny-vlm"
    model = setting.models["openai"]
    assert (model.model, model.base_url, model.api_key_env) == ("tiny-vlm", "http://127.0.0.1:9/v1", "K")
    config = {"kind": "zero-shot", "model": {"model": "m", "base_url": "http://a/v1", "api_key_env": "K",
                                             "options": {"max_concurrency": 4, "system": "s"}}}
    moved = {"kind": "zero-shot", "model": {"model": "m", "base_url": "http://b/v1",
                                            "options": {"max_concurrency": 32, "system": "s"}}}
    assert run_identity(config) == run_identity(moved)  # where and how fast, not what
    other = {"kind": "zero-shot", "model": {"model": "m", "options": {"system": "t"}}}
    assert run_identity(config) != run_identity(other)


def test_endpoint_flags_need_a_model() -> None:
    from bench.commands.run import _settings_for

    with pytest.raises(BenchError, match="--endpoint: give it with --prompt NAME --model SERVED_NAME"):
        _settings_for(None, "brief", None, None, endpoint="http://127.0.0.1:9/v1")
    with pytest.raises(BenchError, match="--api-key-env: give it with --endpoint URL"):
        _settings_for(None, "brief", None, ["m"], api_key_env="K")


def test_images_are_sent_as_their_own_bytes_unless_the_format_or_max_side_asks(shared_data: Path, tmp_path: Path) -> None:
    import base64
    import hashlib

    from PIL import Image

    from bench.served.messages import image_payload

    jpeg = sorted((shared_data / "flickr8k-1k" / "images").glob("*.jpg"))[0]
    own = image_payload(jpeg)
    assert not own.re_encoded and own.mime == "image/jpeg"
    assert base64.b64decode(own.url.split(",", 1)[1]) == jpeg.read_bytes()
    assert own.sha256 == hashlib.sha256(jpeg.read_bytes()).hexdigest()
    bmp = tmp_path / "x.bmp"
    Image.open(jpeg).save(bmp)  # BMP: not a format every server takes
    sent = image_payload(bmp)
    assert sent.re_encoded and sent.mime == "image/jpeg" and sent.size == Image.open(jpeg).size
    small = image_payload(jpeg, max_side=100)
    assert small.re_encoded and max(small.size) == 100
    assert not image_payload(jpeg, max_side=10_000).re_encoded  # already small enough: untouched


def test_cost_by_tokens_or_by_the_hour_and_the_pareto_front() -> None:
    from bench.config import CostConfig
    from bench.cost import pareto_front, run_cost

    served = {"prompt_tokens": 2_000, "completion_tokens": 500}
    hosted = run_cost(CostConfig(usd_per_million_input=1.0, usd_per_million_output=4.0, usd_per_hour=10.0), served, 36.0, 10)
    assert hosted["basis"] == "tokens" and hosted["usd_per_1000_captions"] == pytest.approx((2_000 + 4 * 500) / 1e6 / 10 * 1000)
    assert hosted["tokens_per_image"] == 250
    local = run_cost(CostConfig(usd_per_hour=10.0), None, 36.0, 10)
    assert local["basis"] == "hours" and local["usd_per_1000_captions"] == pytest.approx(10.0 * 0.01 / 10 * 1000)
    assert run_cost(CostConfig(), served, 36.0, 10)["usd_per_1000_captions"] is None
    # cheaper-and-better wins; a tie on both is on the front; dearer-and-worse is not
    assert pareto_front([1.0, 2.0, 3.0, 1.0], [0.5, 0.9, 0.8, 0.5]) == [True, True, False, True]


def test_a_setting_on_the_openai_backend_needs_base_url_and_sane_prices(tmp_path: Path) -> None:
    from bench.settings import load_setting

    path = tmp_path / "hosted.toml"
    path.write_text('backends = ["openai"]\nprompt = "brief"\n[models.openai]\nmodel = "m"\n')
    with pytest.raises(BenchError, match=r"hosted.toml: models.openai.base_url is missing"):
        load_setting(path)
    path.write_text(path.read_text() + 'base_url = "http://127.0.0.1:9/v1"\n[cost]\nusd_per_hour = -1.0\n')
    with pytest.raises(BenchError, match=r"hosted.toml: cost.usd_per_hour must be >= 0 \(got -1.0\)"):
        load_setting(path)
