"""Text for the terminal: tables and lines that fit its width (80 columns
when it is wider, or when output goes to a file or a CI log).

Hand-written rather than `rich`: msdb prints a few plain tables, and a
dependency that redraws, colours and detects terminals would change every
log line CI keeps for the sake of wrapping one column.
"""

from __future__ import annotations

import shutil
import textwrap

__all__ = ["width", "table", "wrap", "wrap_items"]

MAX_WIDTH = 80
MIN_LAST = 24      # narrower than this, the last column goes on lines of its own


def width() -> int:
    """The terminal's width, at most 80 (COLUMNS wins, as in shutil)."""
    return max(40, min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns))


def wrap(text: str, *, indent: str = "", first: str = "", cols: int | None = None) -> list[str]:
    """One paragraph wrapped to the width, breaking only at spaces."""
    cols = cols or width()
    return textwrap.wrap(text, width=cols, initial_indent=first, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False) or [first.rstrip()]


def table(rows: list[list], headers: list[str], *, cols: int | None = None,
          right: tuple[int, ...] = ()) -> list[str]:
    """Columns padded to their widest cell (`right`: right-aligned); when the
    row is wider than the terminal, the last column is wrapped into what is
    left, or (when too little is left) printed on indented lines under its row."""
    cols = cols or width()
    cells = [[str(x) for x in r] for r in rows]
    n = len(headers)
    widths = [max(len(r[i]) for r in cells + [list(headers)]) for i in range(n)]
    lead = sum(widths[:-1]) + 2 * (n - 1)
    last_room = cols - lead
    if widths[-1] <= last_room:     # everything fits: a plain table
        def line(r):
            return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                             for i, c in enumerate(r)).rstrip()
        return [line(list(headers)), line(["-" * w for w in widths])] + [line(r) for r in cells]
    under = last_room < MIN_LAST
    last_w = 0 if under else last_room

    def fmt(r: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                         for i, c in enumerate(r[:-1]))

    out = [(fmt(list(headers)) + "  " + ("" if under else headers[-1])).rstrip(),
           ("  ".join("-" * w for w in widths[:-1]) + "  " + "-" * last_w).rstrip()]
    for r in cells:
        head = fmt(r)
        if under:
            out.append(head.rstrip())
            if r[-1]:
                out += wrap(r[-1], first="    ", indent="    ", cols=cols)
            continue
        parts = wrap(r[-1], cols=last_room) if r[-1] else [""]
        out.append((head + "  " + parts[0]).rstrip())
        out += [(" " * lead + p).rstrip() for p in parts[1:]]
    return out


def wrap_items(items: list[str], *, first: str = "", indent: str = "  ", sep: str = ", ",
               cols: int | None = None) -> list[str]:
    """Items joined by `sep`, broken into lines only between items."""
    cols = cols or width()
    lines, cur = [], first
    for i, item in enumerate(items):
        piece = item + (sep.rstrip() if i < len(items) - 1 else "")
        candidate = (cur + " " + piece) if cur.strip() and cur != first else cur + piece
        if len(candidate) > cols and cur.strip():
            lines.append(cur.rstrip())
            cur = indent + piece
        else:
            cur = candidate
    lines.append(cur.rstrip())
    return lines
