"""A tiny random CLIP saved like a hub checkpoint, so tests load it through the hub-id code path."""

from __future__ import annotations

from pathlib import Path

from bench.tiny.text import TINY_CAPTION_CORPUS, build_bpe_tokenizer, bpe_vocab_and_merges

# CLIP's own pre-split pattern (as in transformers' CLIPTokenizer), so merges match how it splits.
CLIP_SPLIT_REGEX = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_MAX_TOKENS = 77


def build_tiny_clip_tokenizer(
    vocab_size: int = 700, *, corpus: tuple[str, ...] = TINY_CAPTION_CORPUS
):  # -> transformers.CLIPTokenizer
    """A CLIPTokenizer over a tiny BPE vocab: byte symbols, "</w>" forms, merges, then BOS, EOS."""
    from transformers import CLIPTokenizer

    bpe = build_bpe_tokenizer(
        corpus,
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        end_of_word_suffix="</w>",
        lowercase=True,
        split_regex=CLIP_SPLIT_REGEX,
    )
    vocab, merges = bpe_vocab_and_merges(bpe)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_TOKENS)


def build_tiny_clip(
    out_dir: Path,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    *,
    corpus: tuple[str, ...] = TINY_CAPTION_CORPUS,
    vocab_size: int = 700,
) -> Path:
    """Write a tiny random `CLIPModel` + `CLIPProcessor` (tokenizer, image processor) to out_dir.

    Text length is CLIP's 77 positions and EOS is the highest token id, as in the real
    checkpoint, so truncation and EOS pooling behave like openai/clip-vit-base-patch32.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = build_tiny_clip_tokenizer(vocab_size, corpus=tuple(corpus))
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": CLIP_MAX_TOKENS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out_dir)

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir
