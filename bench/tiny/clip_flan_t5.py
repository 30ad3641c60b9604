"""A tiny random CLIP-vision + Flan-T5 pair for the `clip-flan-t5` backend.

Layout written by `build_tiny_clip_flan_t5(out_dir)` (the one convention the backend accepts for a
bundle directory)::

    out_dir/t5/       T5ForConditionalGeneration + T5 tokenizer      (the `model` part)
    out_dir/vision/   CLIPVisionModel + CLIPImageProcessor            (the `vision_model` part)

`ModelConfig(model=str(out_dir))` then loads both; `ModelConfig(model=str(out_dir / "t5"),
options={"vision_model": str(out_dir / "vision")})` is the same thing spelled out. The T5
tokenizer is a Unigram model trained here on a small embedded corpus (Flan-T5's id layout:
<pad>=0, </s>=1, <unk>=2).
"""

from __future__ import annotations

import json
import math
import string
from collections import Counter
from pathlib import Path

from bench.tiny.vit_gpt2 import CAPTION_CORPUS


def build_t5_tokenizer(
    out_dir: Path, corpus: tuple[str, ...] = CAPTION_CORPUS, vocab_size: int = 300, *, whole_words: bool = False
):
    """Train and save a T5 tokenizer (Unigram + Metaspace, like Flan-T5's sentencepiece model).

    `whole_words` adds every word of the corpus as one piece (scored by its frequency): the
    `tokenizers` Unigram trainer keeps only ~250 pieces on a small corpus and splits even its
    most frequent words into letters, which a tiny decoder then has to spell out.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        # Every letter, digit and punctuation mark, so unseen words split into characters, not <unk>.
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    if whole_words:
        counts = Counter(f"▁{w}" for text in corpus for w in text.split())
        total = sum(counts.values())
        known = {piece for piece, _ in vocab}
        vocab += [(w, math.log(n / total)) for w, n in sorted(counts.items()) if w not in known]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_clip_flan_t5(
    out_dir: Path,
    seed: int = 0,
    *,
    corpus: tuple[str, ...] = CAPTION_CORPUS,
    vocab_size: int = 300,
    whole_words: bool = False,
) -> Path:
    """CLIP vision (32 px, patch 8, hidden 32, 2 layers) + T5 (d_model 64, 2+2 layers, gated-gelu).

    `corpus`/`vocab_size` choose the tokenizer's training text (the demo passes its own captions).
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    out_dir = Path(out_dir)
    t5_dir, vision_dir = out_dir / "t5", out_dir / "vision"
    tokenizer = build_t5_tokenizer(t5_dir, tuple(corpus), vocab_size, whole_words=whole_words)

    torch.manual_seed(seed)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, projection_dim=32,
        )
    )
    vision.save_pretrained(vision_dir, safe_serialization=True)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        vision_dir
    )

    # Flan-T5's gated-GELU FFN (wi_0, wi_1, wo); decoder starts with <pad>. Output scaling by
    # d_model**-0.5 (the T5 default) keeps the first loss near log(vocab), so a few LoRA steps overfit.
    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
            num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    # transformers 5 always ties T5's LM head to the input embedding, so a random model would
    # predict its <pad> start token forever; a zero <pad> row lets the image pick the first token.
    with torch.no_grad():
        t5.shared.weight[tokenizer.pad_token_id].zero_()
    t5.save_pretrained(t5_dir, safe_serialization=True)
    return out_dir
