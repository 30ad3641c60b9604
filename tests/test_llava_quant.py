"""4-bit (NF4) and 8-bit LLaVA loading through bitsandbytes: run where bitsandbytes supports the
device (CUDA), skipped with the reason elsewhere. The CPU error path is in test_llava.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.backends import backend_class
from bench.tiny.llava import build_tiny_llava
from bench.config import GenerationConfig, ModelConfig
from bench.data.types import Sample
from bench.paths import shared_data_dir
from bench.prompts import load_prompt

REPO = Path(__file__).resolve().parents[1]


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "bitsandbytes 4-bit/8-bit inference needs a CUDA GPU; none on this machine"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError or a CUDA setup error inside bitsandbytes
        return f"bitsandbytes cannot be imported here: {exc}"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava-q"), seed=0)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    paths = sorted((shared_data_dir() / "flickr8k-1k" / "images").glob("*.jpg"))[:3]
    if len(paths) < 3:
        pytest.skip("needs 3 Flickr8k images")
    return [Sample(p.stem, p, ()) for p in paths]


@pytest.mark.parametrize("quantization, layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_load_and_caption(tiny_dir, samples, quantization, layer):
    import bitsandbytes as bnb

    c = backend_class("llava").load(
        ModelConfig(model=str(tiny_dir), quantization=quantization), torch.device("cuda"),
        prompt=load_prompt("brief", REPO / "prompts"),
    )
    kinds = {type(m).__name__ for m in c.model.modules()}
    assert layer in kinds, kinds
    assert any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in c.model.modules())
    if quantization == "4bit":
        qc = c.model.config.quantization_config
        qc = qc if isinstance(qc, dict) else qc.to_dict()
        assert qc["bnb_4bit_quant_type"] == "nf4" and qc["bnb_4bit_use_double_quant"] is True
    captions = c.generate(c.caption_collate()(samples), GenerationConfig(max_new_tokens=6))
    assert len(captions) == len(samples) and all(isinstance(t, str) for t in captions)


def test_bf16_on_cuda(tiny_dir, samples):
    c = backend_class("llava").load(
        ModelConfig(model=str(tiny_dir)), torch.device("cuda"), prompt=load_prompt("brief", REPO / "prompts")
    )
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    assert next(c.model.parameters()).dtype == expected
    assert c.model.device.type == "cuda"
    captions = c.generate(c.caption_collate()(samples), GenerationConfig(max_new_tokens=6))
    assert len(captions) == len(samples)
