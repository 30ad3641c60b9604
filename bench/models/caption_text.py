"""Post-processing of generated text into one caption, shared by the zero-shot backends.

Role prefixes ("ASSISTANT:") and quotes around the whole text are stripped, a hallucinated next
turn is cut, whitespace is folded into single spaces and the first `sentences` sentences of the
prompt file are kept.
"""

from __future__ import annotations

import re

_ROLE_PREFIX = re.compile(r"^\s*(?:ASSISTANT|USER|Assistant|User)\s*:\s*")
# A role marker later in the text starts a new (hallucinated) turn: the caption ends before it.
_NEXT_TURN = re.compile(r"\s*\b(?:ASSISTANT|USER)\s*:")
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"
_QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "'": "'", "\u2018": "\u2019", "`": "`"}
# End of a sentence: terminal punctuation, closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(rf"[.!?]+[{_QUOTES})\]]*\s+")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev gen col lt sgt mt ft vs etc e.g i.e cf approx no inc ltd co "
    "u.s u.k a.m p.m".split()
)


def _strip_quotes(text: str) -> str:
    """Drop quotes around the whole text ('"A dog."', '\u201cA dog\u201d.'), never a quoted part of it
    ('"Stop" signs stand here' keeps its quotes)."""
    while len(text) >= 2 and text[0] in _QUOTE_PAIRS:
        opening, closing = text[0], _QUOTE_PAIRS[text[0]]
        body, tail = text[1:], ""
        if len(body) >= 2 and body[-1] in ".!?" and body[-2] == closing:
            body, tail = body[:-2], body[-1]
        elif body.endswith(closing):
            body = body[:-1]
        else:
            return text
        if opening == closing and opening == "'":
            # apostrophes inside words ("dog's") are fine; a quote at a word edge is another span
            inner = re.search(r"(^|\s)'|'(\s|$)", body) is not None
        else:
            inner = opening in body or closing in body
        if inner:
            return text
        text = (body.strip() + tail).strip()
    return text


def split_sentences(text: str) -> list[str]:
    """Split after . ! ? followed by whitespace, except after abbreviations ("Mr.", "e.g."),
    single-letter initials, or before a lowercase word; decimals ("3.5") never match."""
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        if end < len(text) and text[end].islower():
            continue
        if text[m.start()] == ".":
            word = text[start:m.start()].split()[-1:] or [""]
            token = word[0].strip(_QUOTES + "(").lower()
            if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
                continue
        sentences.append(text[start:m.end()].strip())
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def postprocess_caption(text: str, sentences: int = 1) -> str:
    """One clean caption from generated text: no role prefix, one line, no surrounding quotes,
    the first `sentences` sentences (0 keeps all)."""
    while True:
        stripped = _ROLE_PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    m = _NEXT_TURN.search(text)
    if m:
        text = text[: m.start()]
    text = _strip_quotes(" ".join(text.split()))
    if sentences > 0:
        text = " ".join(split_sentences(text)[:sentences])
    return _strip_quotes(text)
