"""Small helpers shared by result objects for Jupyter display (HTML tables)."""

import html
from typing import Any


def frame_html(title: str, frame: Any, *, max_rows: int = 30) -> str:
    """A bold title line above a (truncated) DataFrame or Series rendered as an HTML table."""
    body = frame.to_html(max_rows=max_rows, float_format=lambda v: f"{v:.4g}")
    title = html.escape(title) if "<" not in title else title
    # A wide table scrolls inside its own box instead of widening the page.
    return f'<div><p>{title}</p><div style="overflow-x:auto;max-width:100%">{body}</div></div>'
