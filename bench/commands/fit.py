"""Terminal tables that fit the console: widths decided here, never left to rich's wrapping.

Rich shrinks every column of a too-wide table, down to zero width, and wraps free text one word
a line. `fit_table` instead gives each column its natural width while the console allows, else
at least MIN_WIDTH, drops the optional columns that do not fit, and cuts each cell to its
column's line budget itself: generated names are shortened in the middle (both ends carry the
meaning: the sweep and the model), free text at its end.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

MIN_WIDTH = 6  # no column gets narrower than this
ELLIPSIS = "…"
Cell = str | tuple[str, str]  # text, or (text, rich style)


@dataclass(frozen=True)
class Col:
    header: str
    lines: int = 1  # lines a cell may take
    middle: bool = False  # shorten in the middle instead of at the end
    justify: str = "left"
    drop: int = 0  # 0: always shown; otherwise dropped (highest first) when the console is too narrow
    want: int = MIN_WIDTH  # width it gets before the others share the rest, room allowing
    weight: float = 1.0  # its share of the rest, relative to the other columns


def shorten(text: str, width: int, middle: bool = False) -> str:
    """One line of at most `width` characters, cut with an ellipsis at its end or its middle."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    if not middle:
        return text[: width - 1] + ELLIPSIS
    head = width // 2
    tail = width - 1 - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def clip_lines(text: str, width: int, lines: int, middle: bool = False) -> str:
    """The text wrapped to `width`, at most `lines` lines (the last cut with an ellipsis)."""
    if lines <= 1:
        return shorten(text, width, middle)
    wrapped = textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False) or [""]
    if len(wrapped) <= lines:
        return "\n".join(wrapped)
    rest = " ".join(wrapped[lines - 1 :])
    return "\n".join(wrapped[: lines - 1] + [shorten(rest, width)])


def _plain(cell: Cell) -> tuple[str, str]:
    return (cell, "") if isinstance(cell, str) else cell


def _fill(got: dict[int, int], cap: list[int], spare: int, cols: Sequence[Col]) -> None:
    """Weighted water-fill: each next character to the column with the least width per weight."""
    while spare > 0:
        short = [k for k in got if got[k] < cap[k]]
        if not short:
            return
        k = min(short, key=lambda k: (got[k] / cols[k].weight, k))
        got[k] += 1
        spare -= 1


def _widths(cols: Sequence[Col], rows: Sequence[Sequence[Cell]], width: int) -> list[int | None]:
    """Each column's width, None for a dropped column. Borders and padding take 3 per column + 1.

    Columns are dropped (highest `drop` first) until the others get their `want`; then the
    spare room goes to the columns still below their natural width, by weight."""
    natural = []
    for k, c in enumerate(cols):
        longest = max([len(c.header)] + [len(" ".join(_plain(r[k])[0].split())) for r in rows])
        natural.append(max(MIN_WIDTH, longest))
    base = [max(MIN_WIDTH, min(natural[k], c.want)) for k, c in enumerate(cols)]
    shown = list(range(len(cols)))
    room = lambda: width - 3 * len(shown) - 1  # noqa: E731
    for k in sorted((k for k, c in enumerate(cols) if c.drop), key=lambda k: -cols[k].drop):
        if sum(base[j] for j in shown) <= room():
            break
        shown.remove(k)
    if sum(base[j] for j in shown) <= room():
        got = {k: base[k] for k in shown}
        _fill(got, natural, room() - sum(got.values()), cols)
    else:  # not even the wants fit: everyone from the minimum up towards its want
        got = {k: MIN_WIDTH for k in shown}
        _fill(got, base, room() - sum(got.values()), cols)
    return [got.get(k) for k in range(len(cols))]


def fit_table(title: str, cols: Sequence[Col], rows: Sequence[Sequence[Cell]], width: int) -> Table:
    """A rich Table of `rows` that fits `width` columns (see module doc)."""
    widths = _widths(cols, rows, width)
    table = Table(title=title, header_style="bold", title_justify="left")
    keep = [k for k, w in enumerate(widths) if w is not None]
    for k in keep:
        table.add_column(shorten(cols[k].header, widths[k]), width=widths[k], no_wrap=True,
                         justify=cols[k].justify, overflow="ellipsis")  # type: ignore[arg-type]
    for row in rows:
        cells = []
        for k in keep:
            text, style = _plain(row[k])
            cells.append(Text(clip_lines(text, widths[k] or MIN_WIDTH, cols[k].lines, cols[k].middle), style=style))
        table.add_row(*cells)
    return table
