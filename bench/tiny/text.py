"""Tiny byte-level BPE tokenizers trained offline on an embedded corpus, for tiny test models.

No tokenizer is ever downloaded: every tiny model (CLIP, GPT-2, ...) gets a vocabulary trained here
in milliseconds. The vocabulary always holds all 256 byte symbols (and, with an end-of-word
suffix, their suffixed forms), so ANY text tokenizes without an unknown token — a 10,000-character
caption of random symbols included. Special tokens take the highest ids, in the order given, as in
CLIP (`<|startoftext|>`, `<|endoftext|>` last) and GPT-2 (`<|endoftext|>` last).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

# Caption-like sentences: enough variety that the trained merges form real words.
TINY_CAPTION_CORPUS: tuple[str, ...] = (
    "A child in a pink dress is climbing up a set of stairs in an entry way.",
    "A girl going into a wooden building.",
    "A black dog and a spotted dog are fighting.",
    "A little girl covered in paint sits in front of a painted rainbow with her hands in a bowl.",
    "A man lays on a bench while his dog sits by him.",
    "A man in an orange hat starring at something.",
    "Two dogs run across the grass in the park.",
    "A brown dog is running through the snow.",
    "A group of people are standing on the beach near the water.",
    "A woman is riding a bicycle down the street.",
    "A boy jumps into the blue water of a swimming pool.",
    "Two men are playing soccer on a green field.",
    "A cat is sleeping on a red sofa next to a window.",
    "A giraffe standing outside of a building next to a tree.",
    "A person rides a surfboard on a large wave in the ocean.",
    "The skier is going down a snowy mountain slope.",
    "A young man skateboards on a ramp at the skate park.",
    "An old woman sits on a chair and reads a book.",
    "A plate of food with broccoli, rice and meat on a table.",
    "A red bus drives along a busy city street with cars.",
    "A photo depicts a white horse standing in a field of flowers.",
    "Three children are smiling and playing with a ball outside.",
    "A bird flies over the lake at sunset.",
    "A man wearing a hat and glasses is standing in front of a brick wall.",
    "People walk past a shop window on a rainy day.",
    "A small boat floats on the calm river under a bridge.",
    "The little dog carries a stick in its mouth.",
    "A train is stopped at the station platform.",
    "Two women are talking and drinking coffee in a cafe.",
    "A baby sits in the grass and looks at the camera.",
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> tuple[tuple[int, str], ...]:
    """GPT-2/CLIP's byte -> printable character table, in byte order (their vocab order)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return tuple(sorted(zip(printable, (chr(c) for c in chars))))


def byte_alphabet() -> list[str]:
    return [ch for _, ch in bytes_to_unicode()]


def _pre_tokenizer(split_regex: str | None) -> pre_tokenizers.PreTokenizer:
    if split_regex is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    steps: list[normalizers.Normalizer] = [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " ")]
    if lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps)


def build_bpe_tokenizer(
    words: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str],
    *,
    end_of_word_suffix: str = "",
    lowercase: bool = False,
    split_regex: str | None = None,
) -> Tokenizer:
    """Train a byte-level BPE on `words` (sentences or words) and return a complete tokenizer.

    vocab ids: the 256 byte symbols, then (with `end_of_word_suffix`, CLIP uses "</w>") their
    suffixed forms, then one token per learned merge, then `special_tokens` last. `vocab_size` is a
    target: it bounds the number of learned merges. `split_regex` is an optional pre-split pattern
    (CLIP's word regex) applied before byte mapping. Deterministic for a given input.
    """
    corpus = list(words)
    # tokenizers rejects end_of_word_suffix=None: pass it only when there is one.
    suffix_kw = {"end_of_word_suffix": end_of_word_suffix} if end_of_word_suffix else {}
    trainer_tok = Tokenizer(BPE(continuing_subword_prefix="", **suffix_kw))
    trainer_tok.normalizer = _normalizer(lowercase)
    trainer_tok.pre_tokenizer = _pre_tokenizer(split_regex)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=byte_alphabet(),
        continuing_subword_prefix="",
        **suffix_kw,
    )
    trainer_tok.train_from_iterator(corpus, trainer)
    merges = _trained_merges(trainer_tok)

    vocab = bpe_base_vocab(end_of_word_suffix)
    kept: list[tuple[str, str]] = []
    for left, right in merges:
        if len(vocab) + len(special_tokens) >= vocab_size:
            break
        if left in vocab and right in vocab and left + right not in vocab:
            vocab[left + right] = len(vocab)
            kept.append((left, right))
    for tok in special_tokens:
        vocab.setdefault(tok, len(vocab))

    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=kept,
            continuing_subword_prefix="",
            fuse_unk=False,
            **suffix_kw,
        )
    )
    tokenizer.normalizer = _normalizer(lowercase)
    tokenizer.pre_tokenizer = _pre_tokenizer(split_regex)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(special_tokens))
    return tokenizer


def bpe_base_vocab(end_of_word_suffix: str = "") -> dict[str, int]:
    """The 256 byte symbols (and their suffixed forms) in CLIP/GPT-2 order."""
    alphabet = byte_alphabet()
    symbols = alphabet + ([ch + end_of_word_suffix for ch in alphabet] if end_of_word_suffix else [])
    return {s: i for i, s in enumerate(symbols)}


def _trained_merges(tok: Tokenizer) -> list[tuple[str, str]]:
    import json

    raw = json.loads(tok.to_str())["model"]["merges"]
    # tokenizers writes merges as ["a", "b"] pairs (new) or "a b" strings (old).
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in raw]  # type: ignore[misc]


def bpe_vocab_and_merges(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab and merges of a BPE tokenizer, e.g. to build a transformers tokenizer class from them."""
    import json

    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for added in tok.get_added_tokens_decoder().values():
        vocab.setdefault(added.content, tok.token_to_id(added.content))
    return vocab, _trained_merges(tok)
