"""Small local tokenizers and chat templates for the tiny vision-language models of `bench.testing.vlm`.

Each family gets its own tokenizer class (Llama, Qwen2, Gemma, BERT) with the family's special
tokens (image placeholders, turn markers, pad/eos) registered as special tokens, and the chat
template its hub checkpoints ship (written out here because nothing is downloaded). The
vocabularies are trained in milliseconds on a small caption corpus that also holds every word of
the shipped prompts, so prompts tokenize into word pieces.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any

from bench.tiny.llava import _CORPUS as LLAVA_CORPUS

CORPUS: tuple[str, ...] = (
    *LLAVA_CORPUS,
    "caption en . a picture of a photography of",
    "user model assistant system You are a helpful assistant .",
)

# Qwen2-VL-*-Instruct's chat template (images and videos numbered only with add_vision_id).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# HuggingFaceM4/Idefics3-8B-Llama3's chat template ("User:<image>text<end_of_utterance>\nAssistant:").
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# google/gemma-3-*-it's chat template, reduced to what a caption prompt uses (no system turn).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' }}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def metaspace_vocab(vocab_size: int, corpus: Sequence[str] = CORPUS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a Llama/Gemma-style BPE (words start with "▁"), trained on `corpus`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>"],
        # Every printable ASCII character: no prompt loses characters without byte fallback.
        initial_alphabet=list(string.printable),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]


def byte_level_vocab(vocab_size: int, specials: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a GPT-2/Qwen2-style byte-level BPE holding every byte (no unknowns)."""
    from bench.tiny.text import bpe_vocab_and_merges, build_bpe_tokenizer

    return bpe_vocab_and_merges(build_bpe_tokenizer(CORPUS, vocab_size, specials))


def with_specials(tokenizer: Any, specials: Sequence[str], *, pad: str | None = None) -> Any:
    """Register the family's extra special tokens (and the pad token) on a tokenizer."""
    added: dict[str, Any] = {"additional_special_tokens": list(specials)}
    if pad is not None:
        added["pad_token"] = pad
    tokenizer.add_special_tokens(added)
    tokenizer.padding_side = "left"
    return tokenizer


def llama_tokenizer(specials: Sequence[str], *, bos: str = "<s>", eos: str = "</s>", pad: str = "<pad>") -> Any:
    from transformers import LlamaTokenizer

    vocab, merges = metaspace_vocab(320)
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, bos_token=bos, eos_token=eos)
    return with_specials(tok, [bos, eos, *specials], pad=pad)


def qwen2_tokenizer(specials: Sequence[str]) -> Any:
    from transformers import Qwen2Tokenizer

    vocab, merges = byte_level_vocab(400, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    return with_specials(tok, ["<|im_start|>", "<|im_end|>", *specials])


def gemma_tokenizer(specials: Sequence[str], extra: dict[str, str] | None = None) -> Any:
    from transformers import GemmaTokenizer

    vocab, merges = metaspace_vocab(320)
    for token in ("<pad>", "<eos>", "<bos>", "<mask>"):
        vocab.setdefault(token, len(vocab))
    tok = GemmaTokenizer(vocab=vocab, merges=merges, extra_special_tokens=extra or {})
    return with_specials(tok, list(specials))


def bert_tokenizer() -> Any:
    """BLIP's tokenizer: BERT WordPiece, lower-cased, [DEC] as bos, [SEP] ends a caption."""
    from transformers import BertTokenizer

    words = sorted({w for line in CORPUS for w in line.lower().replace(",", " , ").split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *words])}
    tok = BertTokenizer(vocab=vocab)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok
