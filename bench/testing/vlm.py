"""Tiny random vision-language models, one per family, for offline tests of the `vlm` backend.

Each is built from the family's own config classes (a few thousand times smaller than a hub
checkpoint), with the family's processor class, a small local tokenizer carrying the family's
special tokens and the chat template its checkpoints ship, and saved with `save_pretrained` so
that loading goes through the exact path of a hub id. Image sizes and token counts are small, but
the dynamic-resolution machinery is the real one: Qwen2-VL's variable patch grid, Idefics3's image
splitting, LLaVA-NeXT's anyres tiles, Gemma 3's pooled soft tokens.

Every language model gets `initializer_range=0.1` (wider than the usual 0.02): random logits are
spread out, so greedy choices are not near-ties that float rounding could flip between batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.testing import vlm_text

IMAGE = 32  # pixels of a vision-tower input (a tile, for the tiling families)
PATCH = 8
INIT = 0.1


def _llama_text(vocab: int, tok: Any, **extra: Any) -> dict[str, Any]:
    return dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, initializer_range=INIT,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra,
    )


def _vision(**extra: Any) -> dict[str, Any]:
    return dict(
        image_size=IMAGE, patch_size=PATCH, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, **extra,
    )


def _save(model_class: Any, config: Any, processor: Any, out_dir: Path, seed: int, random_zeros: tuple[str, ...] = ()) -> Path:
    """Build with a seed and save; `random_zeros` names parameters the family initialises to zeros
    (a checkpoint overwrites them), drawn at random here so that images reach the tiny model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in random_zeros:
                params[name].normal_(0.0, INIT)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def build_llava(out_dir: Path, seed: int) -> Path:
    from bench.tiny.llava import build_tiny_llava

    return build_tiny_llava(out_dir, seed)


def build_llava_next(out_dir: Path, seed: int) -> Path:
    """LLaVA-NeXT (1.6, Vicuna template): anyres tiles on a 1x2 / 2x1 / 2x2 grid plus the base image."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    from bench.tiny.llava import LLAVA15_CHAT_TEMPLATE

    tok = vlm_text.llama_tokenizer(["<image>"])
    pinpoints = [[IMAGE, IMAGE * 2], [IMAGE * 2, IMAGE], [IMAGE * 2, IMAGE * 2]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}, image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA15_CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config={"model_type": "clip_vision_model", **_vision(projection_dim=32)},
        text_config={"model_type": "llama", **_llama_text(len(tok), tok)},
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=(IMAGE // PATCH) ** 2,
    )
    return _save(LlavaNextForConditionalGeneration, config, processor, out_dir, seed)


def build_qwen2_vl(out_dir: Path, seed: int) -> Path:
    """Qwen2-VL: native resolution, 14-px patches merged 2x2, between 4 and 16 tokens per image."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    from bench.models.processors import image_only, needs_image_only

    tok = vlm_text.qwen2_tokenizer(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor_class = image_only(Qwen2VLProcessor) if needs_image_only(Qwen2VLProcessor) else Qwen2VLProcessor
    processor = processor_class(image_processor=image_processor, tokenizer=tok, chat_template=vlm_text.QWEN2_VL_CHAT_TEMPLATE)
    ids = tok.convert_tokens_to_ids
    text = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=INIT,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_chans=3)
    config = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    return _save(Qwen2VLForConditionalGeneration, config, processor, out_dir, seed)


def build_idefics3(out_dir: Path, seed: int) -> Path:
    """Idefics3: images split into up to 3x3 tiles of 32 px plus a global view, 4 tokens per tile."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3 import Idefics3ImageProcessorPil

    grid = [f"<row_{r}_col_{c}>" for r in range(1, 4) for c in range(1, 4)]
    tok = vlm_text.llama_tokenizer(
        ["<fake_token_around_image>", "<image>", "<global-img>", *grid],
        bos="<|begin_of_text|>", eos="<end_of_utterance>",
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": IMAGE * 3}, max_image_size={"longest_edge": IMAGE},
    )
    scale = 2
    seq_len = (IMAGE // PATCH) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len, chat_template=vlm_text.IDEFICS3_CHAT_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config=_vision(), text_config={"model_type": "llama", **_llama_text(len(tok), tok)},
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale, tie_word_embeddings=False,
    )
    return _save(Idefics3ForConditionalGeneration, config, processor, out_dir, seed)


def build_paligemma(out_dir: Path, seed: int) -> Path:
    """PaliGemma: no chat template; the processor puts image tokens + bos before the task prefix."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip import SiglipImageProcessorPil

    tok = vlm_text.gemma_tokenizer(["<image>"])
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    image_processor.image_seq_length = (IMAGE // PATCH) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    # An untied random lm_head: tied to the embeddings, the tiny Gemma repeats its last input token.
    text = dict(_llama_text(len(tok), tok), num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)
    config = PaliGemmaConfig(
        vision_config={"model_type": "siglip_vision_model", **_vision(projection_dim=64)},
        text_config={"model_type": "gemma", **text}, image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=64, tie_word_embeddings=False,
    )
    return _save(PaliGemmaForConditionalGeneration, config, processor, out_dir, seed)


def build_gemma3(out_dir: Path, seed: int) -> Path:
    """Gemma 3: SigLIP patches as soft tokens between <start_of_image>/<end_of_image>."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3 import Gemma3ImageProcessorPil

    marks = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tok = vlm_text.gemma_tokenizer(["<start_of_turn>", "<end_of_turn>", *marks.values()], extra=marks)
    tokens = 16  # one soft token per patch: no pooling in the tiny model, so images differ more
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, chat_template=vlm_text.GEMMA3_CHAT_TEMPLATE, image_seq_length=tokens,
    )
    ids = tok.convert_tokens_to_ids
    text = dict(_llama_text(len(tok), tok), num_key_value_heads=1, head_dim=16, sliding_window=64, tie_word_embeddings=False)
    config = Gemma3Config(
        vision_config={"model_type": "siglip_vision_model", **_vision()}, text_config=text,
        mm_tokens_per_image=tokens, image_token_index=ids(marks["image_token"]), boi_token_index=ids(marks["boi_token"]),
        eoi_token_index=ids(marks["eoi_token"]), tie_word_embeddings=False,
    )
    projection = "model.multi_modal_projector.mm_input_projection_weight"  # zeros after Gemma 3's init
    return _save(Gemma3ForConditionalGeneration, config, processor, out_dir, seed, (projection,))


def build_blip(out_dir: Path, seed: int) -> Path:
    """BLIP captioning: ViT encoder + BERT decoder with cross-attention; no chat template."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil

    tok = vlm_text.bert_tokenizer()
    image_processor = BlipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tok)
    text = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        encoder_hidden_size=32, initializer_range=INIT, bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, max_position_embeddings=128,
    )
    config = BlipConfig(text_config=text, vision_config=_vision(initializer_range=INIT), projection_dim=32)
    return _save(BlipForConditionalGeneration, config, processor, out_dir, seed)


# config model_type -> builder: the families the tests build (see README, "Zero-shot families").
BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "qwen2_vl": build_qwen2_vl,
    "idefics3": build_idefics3,
    "paligemma": build_paligemma,
    "gemma3": build_gemma3,
    "blip": build_blip,
}


def build_tiny_vlm(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny model of `family` (a config model_type in BUILDERS) to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return BUILDERS[family](out_dir, seed)
