"""Plain aligned tables for the CLI's terminal output (`--json` is the machine-readable form)."""

from __future__ import annotations

from collections.abc import Sequence

GAP = "  "


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns as wide as their widest cell; `None` shows as `-`. No trailing spaces, ends without a newline."""
    cells = [[("-" if value is None else str(value)) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = [GAP.join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
             for row in [list(headers), *cells]]
    return "\n".join(lines)
