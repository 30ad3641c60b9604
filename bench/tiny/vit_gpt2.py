"""A tiny random ViT-GPT2 captioner (same layout as `nlpconnect/vit-gpt2-image-captioning`).

Everything is built from configs with a fixed seed and written with `save_pretrained`, so tests
load it through exactly the code path a hub id takes. The GPT-2 tokenizer is a byte-level BPE
trained here on a small embedded caption corpus (byte-level, so any text still encodes).
"""

from __future__ import annotations

import json
from pathlib import Path

# A few caption-like sentences: enough for the BPE trainer to learn common caption words.
CAPTION_CORPUS: tuple[str, ...] = (
    "A child in a pink dress is climbing up a set of stairs in an entry way .",
    "A black dog and a spotted dog are fighting .",
    "A little girl is sitting in front of a large painted rainbow .",
    "A man lays on a bench while his dog sits by him .",
    "A man in an orange hat starring at something .",
    "Two dogs of different breeds looking at each other on the road .",
    "A group of people are standing in the snow near a red building .",
    "A boy jumps into the water at the beach .",
    "A woman wearing a blue shirt is riding a bicycle down the street .",
    "Two young men play soccer on a green field .",
    "A brown dog runs through the tall grass with a ball in its mouth .",
    "The people are walking on the sidewalk next to a white car .",
    "A skier is jumping over a snowy hill under a clear sky .",
    "Children are playing with toys on the floor of a small room .",
    "A man with a hat is climbing a rock wall .",
    "A girl and her father are smiling at the camera .",
)


def _train_bpe(corpus: tuple[str, ...], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocab and merges, in the form `GPT2Tokenizer(vocab=, merges=)` takes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def build_gpt2_tokenizer(out_dir: Path, corpus: tuple[str, ...] = CAPTION_CORPUS, vocab_size: int = 400):
    """Train and save a GPT-2 tokenizer with pad = bos = eos = <|endoftext|> (as nlpconnect's)."""
    from transformers import GPT2Tokenizer

    vocab, merges = _train_bpe(corpus, vocab_size)
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_vit_gpt2(
    out_dir: Path, seed: int = 0, *, corpus: tuple[str, ...] = CAPTION_CORPUS, vocab_size: int = 400
) -> Path:
    """ViT (32 px, patch 8, hidden 32, 2 layers) + GPT-2 (n_embd 64, 2 layers, cross-attention).

    `corpus`/`vocab_size` choose the tokenizer's training text (the demo passes its own captions).
    """
    import torch
    from transformers import (
        GPT2Config,
        ViTConfig,
        ViTImageProcessorPil,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_gpt2_tokenizer(out_dir, tuple(corpus), vocab_size)
    eos = tokenizer.eos_token_id

    encoder = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
    )
    # Dropout 0 keeps the tiny overfit tests quick (LoRA dropout still exercises the RNG); the
    # larger init (0.2, not 0.02) makes the untrained model's captions differ between images
    # instead of all stopping at once, so batched-vs-single tests compare real text.
    decoder = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
        add_cross_attention=True, is_decoder=True, bos_token_id=eos, eos_token_id=eos,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2,
    )
    config = VisionEncoderDecoderConfig(encoder=encoder, decoder=decoder)
    config.decoder_start_token_id = eos
    config.pad_token_id = eos
    config.eos_token_id = eos
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config=config)
    model.save_pretrained(out_dir, safe_serialization=True)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out_dir)
    return out_dir
