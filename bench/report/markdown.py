"""Safe markdown: any text (captions, prompts, run names) can go into a table cell or a line.

`cell()` folds every kind of line break and whitespace into single spaces, drops control
characters, truncates with an ellipsis BEFORE escaping (so an escape is never cut in half),
turns `&`, `<`, `>` into HTML entities (no raw HTML, no entity injection) and backslash-escapes
the characters markdown gives a meaning inside a line: `\\`, `` ` ``, `|`, `*`, `_`, `[`, `]`, `~`,
`$` (GitHub math), `!`. Everything else (the full text) belongs in the CSV/JSON.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from urllib.parse import quote

import pandas as pd

ELLIPSIS = "…"
_ESCAPE = {c: "\\" + c for c in "\\`|*_[]~$!#"}
_ESCAPE.update({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_TABLE = str.maketrans(_ESCAPE)


def plain(text: str, max_len: int | None = None) -> str:
    """One line of text: whitespace folded, control/format characters dropped, truncated."""
    text = "".join(ch for ch in str(text) if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    text = " ".join(text.split())
    if max_len is not None and len(text) > max_len:
        text = text[: max(max_len - 1, 0)].rstrip() + ELLIPSIS
    return text


def cell(text: object, max_len: int | None = 80) -> str:
    """Text made safe for a markdown table cell or a running line."""
    return plain(str(text), max_len).translate(_TABLE)


def link(target: str) -> str:
    """A relative link target that survives spaces, parentheses and angle brackets."""
    return quote(target, safe="/._-")


def table(df: pd.DataFrame, align: Sequence[str] | None = None) -> str:
    """A GFM table from a DataFrame of ALREADY SAFE cell strings (see `cell`).

    Header names are escaped here; `align` gives "l" or "r" per column.
    """
    cols = [cell(c, None) for c in df.columns]
    align = list(align) if align is not None else ["l"] * len(cols)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join(rule) + " |"]
    for row in df.itertuples(index=False):
        values = [str(v) if v is not None else "" for v in row]
        lines.append("| " + " | ".join(v if v else " " for v in values) + " |")
    return "\n".join(lines) + "\n"
