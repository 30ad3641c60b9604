"""LoRA presets and QLoRA's full-precision parts resolved per VLM family, on each family's default
transformers config instantiated on the meta device (the real module tree, no memory, no weights)."""

from __future__ import annotations

import re

import pytest
import torch

from bench.models.vlm_lora import FULL_PRECISION_PARTS, language_model_scope, projector_layers, vlm_target_regex

ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}
FFN = {"gate_proj", "up_proj", "down_proj"}
# family -> (where its language model lives, how many projector Linear layers "projector" adds)
FAMILIES = {
    "Llava": ("model.language_model.", 2),
    "LlavaNext": ("model.language_model.", 2),
    "LlavaOnevision": ("model.language_model.", 2),
    "Qwen2VL": ("model.language_model.", 2),  # the projector is visual.merger
    "Qwen3VL": ("model.language_model.", 2),
    "Gemma3": ("model.language_model.", 0),  # its projector is a weight matrix, not a Linear
    "PaliGemma": ("model.language_model.", 1),
    "Idefics3": ("model.text_model.", 1),  # connector
    "SmolVLM": ("model.text_model.", 1),
    "Mistral3": ("model.language_model.", 3),
    "InternVL": ("model.language_model.", 2),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_presets_and_qlora_parts_per_family(family: str) -> None:
    from transformers.quantizers.quantizers_utils import should_convert_module
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, f"{family}ForConditionalGeneration")(getattr(transformers, f"{family}Config")())
    lm, n_projector = FAMILIES[family]
    assert language_model_scope(model) == re.escape(lm)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for preset, names in (("attn", ATTN), ("attn_ffn", ATTN | FFN)):
        regex = re.compile(vlm_target_regex(model, preset, family))
        chosen = [n for n in linears if regex.fullmatch(n)]
        assert chosen and all(n.startswith(lm) for n in chosen) and {n.rsplit(".", 1)[1] for n in chosen} == names
    assert len(projector_layers(model)) == n_projector
    # QLoRA: every Linear outside the language model (vision tower, projector, lm_head) stays full
    # precision, every Linear of the language model is quantized (transformers' own matcher).
    kept = [n for n in linears if not should_convert_module(n, list(FULL_PRECISION_PARTS))]
    assert kept == [n for n in linears if not n.startswith(lm)] and "lm_head" in kept
