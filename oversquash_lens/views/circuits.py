"""Views: circuitsvis token/attention views and plotly figures, saved as self-contained HTML.

Every view renders with no network: circuitsvis' own ``local_src`` (its JS bundle inlined) is
used for Jupyter display — never its internet probe — and :func:`save_html` writes a file with
the circuitsvis bundle and plotly.js inlined exactly once, however many views it holds.

Example:
    >>> view = colored_tokens_multi(["a", "b"], {"sensitivity": [0.1, 0.9]})
    >>> save_html([view, profile.plot()], "report.html")
"""

import html
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .. import _validate
from ..errors import InvalidArgumentError

__all__ = [
    "View",
    "Columns",
    "colored_tokens",
    "colored_tokens_multi",
    "attention_heads",
    "save_html",
    "html_document",
    "MAX_ATTENTION_TOKENS",
]

#: Per-token values: a tensor, a numpy array or a list of numbers, one per token.
Values = Float[Tensor, " pos"] | np.ndarray | Sequence[float | int]

#: Attention views keep at most this many (final) positions so a page never freezes.
MAX_ATTENTION_TOKENS = 256


@lru_cache(maxsize=1)
def _bundle() -> str:
    """circuitsvis' browser bundle exactly as its ``render_local`` inlines it."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")


@dataclass(frozen=True)
class View:
    """One circuitsvis view: ``_repr_html_`` is self-contained (bundle inlined, no network)."""

    rendered: Any  # circuitsvis RenderedHTML
    title: str = ""

    def _repr_html_(self) -> str:
        head = f"<h4>{html.escape(self.title)}</h4>" if self.title else ""
        return head + _close_div(self.rendered.local_src)

    def body(self) -> str:
        """The view's div and render call without the bundle (the page inlines it once)."""
        return _close_div(self.rendered.local_src.replace(_bundle(), ""))


_SELF_CLOSED_DIV = re.compile(r'(<div id="circuits-vis-[^"]*"[^>]*?)\s*/>')


def _close_div(source: str) -> str:
    """circuitsvis writes ``<div id=.../>``; HTML has no self-closing div, so whatever follows
    would be nested inside it and wiped when React renders. Close it explicitly."""
    return _SELF_CLOSED_DIV.sub(r"\1></div>", source, count=1)


def _as_list(values: Any, name: str = "values", *, finite: bool = True) -> list[float]:
    """One number per token (a list, 1-D tensor or array) as floats; strings, nested lists,
    2-D arrays and (``finite``) NaN/inf raise InvalidArgumentError naming them."""
    if isinstance(values, Tensor):
        values = values.detach().float().cpu()  # bfloat16 etc. have no numpy dtype
    return _validate.vector(values, name, finite=finite)


def colored_tokens(tokens: Sequence[str], values: Values, *, title: str = "") -> View:
    """Tokens colored by one value each (e.g. measured sensitivity toward the target).
    Values must be finite (NaN/inf would not render; :func:`colored_tokens_multi` maps them
    to 0)."""
    import circuitsvis.tokens as cvt

    tokens = _validate.strings(tokens, "tokens")
    vals = _as_list(values)
    _check_len(tokens, vals)
    return View(cvt.colored_tokens(tokens, vals), _validate.text(title, "title"))


def colored_tokens_multi(
    tokens: Sequence[str],
    measures: Mapping[str, Values],
    *,
    title: str = "",
    scale: str = "per-measure",
    log: bool | Iterable[str] = (),
    selected: str | None = None,
) -> View:
    """Tokens colored by several switchable measures (buttons), e.g. log path counts, rollout,
    Theorem 5.1 bound and measured Jacobian sensitivity side by side.

    circuitsvis keeps the colour bound of the first measure for every button, so with
    ``scale="per-measure"`` (default) each measure is mapped onto [0, 1] over its own range
    before drawing — ``v / max|v|``, or for the measures named in ``log`` (``True``: all)
    ``(log10 v − log10 min) / (log10 max − log10 min)`` over its positive values (0 for
    v ≤ 0) — and its button says so, e.g. ``"rollout (log 1.2e-05…0.98)"``; the tooltips then
    show these [0, 1] values. ``scale="shared"`` draws the raw values with one bound.
    ``selected`` is the measure shown on load (default: the first).
    """
    import circuitsvis.tokens as cvt

    tokens = _validate.strings(tokens, "tokens")
    if not isinstance(measures, Mapping):
        raise InvalidArgumentError(
            f"measures={_validate.short(measures)} must be a dict of named values, e.g. "
            "{'sensitivity': values} (for one measure use colored_tokens)"
        )
    if not measures:
        raise InvalidArgumentError("measures={} is empty: give at least one named measure")
    _validate.strings(list(measures), "measure names")
    _validate.choice(scale, "scale", ("per-measure", "shared"))
    _validate.text(title, "title")
    names = list(measures)
    if isinstance(log, bool):
        logged = set(names) if log else set()
    else:
        logged = set(_validate.strings(log, "log"))
    unknown = sorted(logged - set(names))
    if unknown:
        raise InvalidArgumentError(f"log={unknown} names no measure; measures: {names}")
    if selected is not None:
        if selected not in measures:
            raise InvalidArgumentError(f"selected={selected!r} is not one of {names}")
        names = [selected] + [n for n in names if n != selected]  # circuitsvis shows the first
    columns, labels = [], []
    for name in names:
        col = _as_list(measures[name], f"measures[{name!r}]", finite=False)  # NaN/inf -> 0
        _check_len(tokens, col, name=name)
        label = name
        if scale == "per-measure":
            col, label = _unit_scale(col, name, name in logged)
        columns.append(col)
        labels.append(label)
    matrix = torch.tensor(np.nan_to_num(np.array(columns, dtype=np.float64).T).astype(np.float32))
    rendered = cvt.colored_tokens_multi(tokens, matrix, labels)
    return View(rendered, title)


def _unit_scale(values: list[float], name: str, log: bool) -> tuple[list[float], str]:
    """``values`` mapped onto [0, 1] (or [-1, 1] with negatives, linear only) and the label
    that says how."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if log:
        pos = finite[finite > 0]
        if len(pos) == 0:
            return np.zeros_like(v).tolist(), f"{name} (log: no positive values)"
        lo, hi = float(pos.min()), float(pos.max())
        out = np.zeros_like(v)
        ok = np.isfinite(v) & (v > 0)
        span = math.log10(hi) - math.log10(lo)
        out[ok] = (np.log10(v[ok]) - math.log10(lo)) / span if span > 0 else 1.0
        return out.tolist(), f"{name} (log {lo:.2g}…{hi:.2g})"
    top = float(np.abs(finite).max()) if len(finite) else 0.0
    if top == 0:
        return np.zeros_like(v).tolist(), f"{name} (all 0)"
    return (np.where(np.isfinite(v), v, 0.0) / top).tolist(), f"{name} (÷ {top:.3g})"


def attention_heads(
    attention: Tensor,
    tokens: Sequence[str],
    *,
    head_names: Sequence[str] | None = None,
    max_tokens: int = MAX_ATTENTION_TOKENS,
    title: str = "",
) -> View:
    """circuitsvis attention-heads view of a ``[head_index, query_pos, key_pos]`` pattern; long
    sequences keep only the last ``max_tokens`` positions (rows and columns) so the page stays
    responsive. (The shape is validated by hand, with an OversquashError naming it.)"""
    import circuitsvis.attention as cva

    if not isinstance(attention, (Tensor, np.ndarray)):
        raise InvalidArgumentError(
            f"attention={_validate.short(attention)} must be a [head, query, key] tensor or "
            "numpy array"
        )
    attention = torch.as_tensor(attention).detach()
    if not attention.is_floating_point():
        raise InvalidArgumentError(f"attention must hold weights, got dtype {attention.dtype}")
    attention = attention.float().cpu()
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
        raise InvalidArgumentError(
            f"attention must be [head, query, key] with query == key, got {tuple(attention.shape)}"
        )
    if not bool(torch.isfinite(attention).all()):
        bad = (~torch.isfinite(attention)).nonzero()[0].tolist()
        raise InvalidArgumentError(
            f"attention contains {float(attention[tuple(bad)])} at [head, query, key]={bad}; "
            "pass finite post-softmax weights"
        )
    tokens = _validate.strings(tokens, "tokens")
    _check_len(tokens, range(attention.shape[-1]), name="attention positions")
    names = _validate.strings(head_names, "head_names") if head_names is not None else None
    if names is not None and len(names) != attention.shape[0]:
        raise InvalidArgumentError(
            f"head_names has {len(names)} names for {attention.shape[0]} heads"
        )
    max_tokens = _validate.integer(max_tokens, "max_tokens", minimum=1)
    title = _validate.text(title, "title")
    if len(tokens) > max_tokens:
        attention = attention[:, -max_tokens:, -max_tokens:]
        tokens = tokens[-max_tokens:]
        title = f"{title} (last {max_tokens} tokens)".strip()
    return View(cva.attention_heads(attention, tokens, attention_head_names=names), title)


def _check_len(tokens: Sequence[Any], values: Sequence[Any], *, name: str = "values") -> None:
    if len(tokens) == 0:
        raise InvalidArgumentError("tokens=[] is empty: nothing to draw")
    if len(tokens) != len(values):
        raise InvalidArgumentError(f"{len(tokens)} tokens but {len(values)} {name}")


def _is_figure(obj: Any) -> bool:
    return type(obj).__module__.startswith("plotly") and hasattr(obj, "to_html")


@dataclass(frozen=True)
class Columns:
    """Page items side by side (one grid column each), e.g. the same view for two models."""

    items: tuple[Any, ...]


def _fragment(item: Any) -> tuple[str, bool, bool]:
    """HTML of one item, and whether it needs the circuitsvis bundle / plotly.js."""
    if isinstance(item, Columns):
        parts = [_fragment(i) for i in item.items]
        cells = "".join(f"<div style='min-width:0'>{p[0]}</div>" for p in parts)
        grid = f"display:grid;gap:1em;grid-template-columns:repeat({len(parts)},minmax(0,1fr))"
        html_ = f"<div class='columns' style='{grid}'>{cells}</div>"
        return html_, any(p[1] for p in parts), any(p[2] for p in parts)
    if isinstance(item, View):
        head = f"<h3>{html.escape(item.title)}</h3>" if item.title else ""
        return head + item.body(), True, False
    if type(item).__name__ == "RenderedHTML":
        return _close_div(item.local_src.replace(_bundle(), "")), True, False
    if _is_figure(item):
        return item.to_html(full_html=False, include_plotlyjs=False), False, True
    if isinstance(item, str):
        return item, False, False
    if hasattr(item, "_repr_html_"):
        return item._repr_html_(), False, False
    raise InvalidArgumentError(
        f"cannot put {type(item).__name__} in an HTML page: give a View, a plotly figure, "
        "a result object or an HTML string"
    )


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
h1, h2 { border-bottom: 1px solid #ccc; }
.note { color: #555; font-size: 0.9em; }
"""


def html_document(items: Iterable[Any], *, title: str = "oversquash_lens") -> str:
    """One self-contained page: each item's HTML, with the circuitsvis bundle and plotly.js
    inlined at most once each."""
    if isinstance(items, (str, bytes, View, Columns)) or not isinstance(items, Iterable):
        raise InvalidArgumentError(
            f"items={_validate.short(items)} must be a list of page items (Views, plotly "
            "figures, result objects, HTML strings); wrap a single one as [item]"
        )
    _validate.text(title, "title")
    parts, need_cv, need_plotly = [], False, False
    for item in items:
        frag, cv, pl = _fragment(item)
        parts.append(frag)
        need_cv |= cv
        need_plotly |= pl
    head = [f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>"]
    if need_cv:
        head.append(f"<script>{_bundle()}</script>")
    if need_plotly:
        from plotly.offline import get_plotlyjs

        head.append(f"<script>{get_plotlyjs()}</script>")
    body = "\n".join(parts)
    return f"<!DOCTYPE html><html><head>{''.join(head)}</head><body>{body}</body></html>"


def save_html(view: Any, path: str | Path, *, title: str = "oversquash_lens") -> Path:
    """Write a view, a figure, a result object, or a list of them, to one self-contained HTML
    file that renders with no network access. Returns the path."""
    items = view if isinstance(view, (list, tuple)) else [view]
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"path={_validate.short(path)} must be a file path (str)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_document(items, title=title), encoding="utf-8")
    return path
