"""Plain-text and Markdown tables for CLI output (a few lines; no dependency needed for this)."""
from __future__ import annotations

from typing import List, Sequence


def render_table(headers: Sequence[str], rows: List[Sequence[object]], markdown: bool = False) -> str:
    """Columns aligned with spaces, or a GitHub Markdown table when ``markdown``."""
    cells = [[str(h) for h in headers]] + [['' if c is None else str(c) for c in row] for row in rows]
    if markdown:
        lines = ['| ' + ' | '.join(r) + ' |' for r in cells]
        lines.insert(1, '|' + '|'.join('---' for _ in headers) + '|')
        return '\n'.join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)
