"""The report's plotly figures; with two models every figure puts them side by side.

- :func:`collapse_figure`: relative L∞ gap vs n at the last layer, per precision and mode, on
  log axes fitted to the data and to the resolution lines that fall near it (lines far below
  the data are named in the title instead of stretching the axis over empty decades).
- :func:`gap_heatmap`: layer × n of log10(gap / resolution) per precision (rounded states):
  blue cells are below the precision's resolution ("collapsed"), grey ones bit-identical.
- :func:`head_heatmaps`: block × head of each head score.
- :func:`profile_figure`: every profile measure vs position (log where one token dominates).
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["collapse_figure", "gap_heatmap", "head_heatmaps", "profile_figure", "HEAD_SCORES"]

_COLOURS = {"float32": "#1f77b4", "bfloat16": "#d62728", "float16": "#2ca02c",
            "float64": "#9467bd", "float8_e4m3fn": "#ff7f0e", "float8_e5m2": "#8c564b"}  # fmt: skip
#: head scores drawn as heat maps: (column, colour scale, zmin, zmax, log10)
HEAD_SCORES = (
    ("diag_mass", "Viridis", 0.0, 1.0, False),
    ("prev_mass", "Viridis", 0.0, 1.0, False),
    ("first_mass", "Viridis", 0.0, 1.0, False),
    ("write_ratio", "Cividis", None, None, True),
    ("ov_copying", "RdBu", -1.0, 1.0, False),
)


def _eps(precision: str) -> float:
    from ..collapse.curve import resolution

    return resolution(precision)


def _legend_name(curve: Any, precision: str, mode: str) -> str:
    if precision == curve.reference_dtype and mode == "rounded":
        return f"{precision} (the model's own run)"
    return f"{precision}, {mode}"


def collapse_figure(runs: Sequence[Any], task: str) -> go.Figure:
    """Gap vs n for ``task`` (one panel per model)."""
    titles = [f"{r.name}: {task}" for r in runs]
    fig = make_subplots(rows=1, cols=len(runs), subplot_titles=titles, shared_yaxes=False)
    notes = []
    for col, run in enumerate(runs, start=1):
        curve = run.curves[task]
        f = curve.frame[curve.frame["layer"] == curve.n_layers]
        positive = f.loc[f["rel_linf"] > 0, "rel_linf"]
        lo = float(positive.min()) if len(positive) else 1e-8
        hi = float(positive.max()) if len(positive) else 1.0
        lines = {p: _eps(p) for p in curve.precisions}
        near = {p: e for p, e in lines.items() if lo / 100 <= e <= hi * 10}
        far = [f"{p} (2^{int(math.log2(e))})" for p, e in lines.items() if p not in near]
        lo, hi = min([lo, *near.values()]), max([hi, *near.values()])
        floor = lo / 3 if bool(f["identical"].any()) else lo  # bit-identical points sit here
        for (precision, mode), rows in f.groupby(["precision", "mode"], sort=False):
            if mode == "native" and precision == curve.reference_dtype:
                continue  # the reference run itself, already drawn as "rounded"
            rows = rows.sort_values("length")
            name = _legend_name(curve, precision, mode)
            fig.add_scatter(
                x=rows["length"], y=rows["rel_linf"].where(rows["rel_linf"] > 0, floor),
                mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1,
                line={"color": _COLOURS.get(precision), "dash": "dot" if mode == "native"
                      else "solid"},
                marker={"symbol": ["x" if v else "circle" for v in rows["identical"]],
                        "size": [11 if v else 7 for v in rows["identical"]]},
                hovertemplate="n=%{x}<br>rel L∞ %{y:.3g}<extra>" + name + "</extra>",
                row=1, col=col,
            )  # fmt: skip
        for precision, e in near.items():
            fig.add_hline(y=e, line_dash="dash", line_color=_COLOURS.get(precision, "grey"),
                          line_width=1, opacity=0.6, row=1, col=col)  # type: ignore[arg-type]  # fmt: skip
            fig.add_annotation(
                x=1, xref=f"x{col if col > 1 else ''} domain", y=math.log10(e),
                yref=f"y{col if col > 1 else ''}", xanchor="right", yanchor="bottom",
                showarrow=False, text=f"{precision} resolution 2^{int(math.log2(e))}",
                font={"size": 10, "color": _COLOURS.get(precision, "grey")},
            )  # fmt: skip
        fig.update_yaxes(type="log", range=[math.log10(floor) - 0.15, math.log10(hi) + 0.15],
                         title_text="relative L∞ gap (last layer)" if col == 1 else None,
                         row=1, col=col)  # fmt: skip
        fig.update_xaxes(type="log", title_text="n (items)", tickvals=list(curve.lengths),
                         ticktext=[str(n) for n in curve.lengths], row=1, col=col)  # fmt: skip
        if far:
            notes.append(f"{run.name}: resolution of {', '.join(far)} lies far below the data "
                         "(not drawn)")  # fmt: skip
    curves = [r.curves[task] for r in runs]
    if any(bool(c.frame.loc[c.frame["layer"] == c.n_layers, "identical"].any()) for c in curves):
        fig.add_scatter(x=[None], y=[None], mode="markers", name="bit-identical (gap 0, drawn "
                        "at the floor)", marker={"symbol": "x", "color": "black"})  # fmt: skip
    fig.update_layout(
        height=420, legend={"orientation": "h", "y": -0.22}, margin={"t": 60},
        title={"text": "; ".join(notes), "font": {"size": 11}} if notes else None,
    )  # fmt: skip
    return fig


def gap_heatmap(runs: Sequence[Any], task: str = "repeat") -> go.Figure:
    """Layer × n of log10(rel L∞ gap / resolution), rounded states, one panel per (model,
    precision)."""
    precisions = list(runs[0].curves[task].precisions)
    titles = [f"{r.name}: {p}" for r in runs for p in precisions]
    fig = make_subplots(rows=len(runs), cols=len(precisions), subplot_titles=titles,
                        horizontal_spacing=0.06, vertical_spacing=0.16)  # fmt: skip
    for row, run in enumerate(runs, start=1):
        curve = run.curves[task]
        for col, precision in enumerate(precisions, start=1):
            if precision not in curve.precisions:
                continue
            f = curve.frame
            f = f[(f["precision"] == precision) & (f["mode"] == "rounded")]
            gap = f.pivot(index="layer", columns="length", values="rel_linf")
            same = f.pivot(index="layer", columns="length", values="identical").astype(bool)
            with np.errstate(divide="ignore"):
                z = np.log10(gap.to_numpy() / _eps(precision))
            z = np.where(same.to_numpy(), np.nan, z)
            text = np.where(same.to_numpy(), "bit-identical", "")
            fig.add_heatmap(
                z=z, x=[str(n) for n in gap.columns], y=gap.index, text=text,
                colorscale="RdBu_r", zmid=0, zmin=-3, zmax=3, showscale=row == 1 and col == 1,
                colorbar={"title": "log10(gap / resolution)", "len": 0.8},
                hovertemplate="n=%{x} layer %{y}<br>log10(gap/eps) %{z:.2f} %{text}<extra></extra>",
                row=row, col=col,
            )  # fmt: skip
            fig.update_xaxes(title_text="n" if row == len(runs) else None, type="category",
                             row=row, col=col)  # fmt: skip
            fig.update_yaxes(title_text="layer" if col == 1 else None, row=row, col=col)
    fig.update_layout(
        height=320 * len(runs), plot_bgcolor="#bbbbbb",
        title={"text": f"{task}: blue = below resolution (collapsed), red = above, grey = "
               "bit-identical", "font": {"size": 12}},
    )  # fmt: skip
    return fig


def _score_grids(run: Any) -> dict[str, np.ndarray]:
    """Each score of :data:`HEAD_SCORES` as a block × head grid (log10 where marked)."""
    frame = run.heads.to_dataframe()
    shape = (run.heads.n_layers, run.heads.n_heads)
    out = {}
    for score, _, _, _, log in HEAD_SCORES:
        grid = frame[score].to_numpy(dtype=float).reshape(shape)
        if log:
            with np.errstate(divide="ignore", invalid="ignore"):
                grid = np.log10(np.where(grid > 0, grid, np.nan))
        out[score] = grid
    return out


def head_heatmaps(runs: Sequence[Any]) -> go.Figure:
    """Block × head heat maps of every score in :data:`HEAD_SCORES` (columns), one row per
    model, each score with its own colour bar below its column."""
    cols = len(HEAD_SCORES)
    titles = [s[0] if row == 0 else "" for row in range(len(runs)) for s in HEAD_SCORES]
    fig = make_subplots(rows=len(runs), cols=cols, subplot_titles=titles,
                        horizontal_spacing=0.03, vertical_spacing=0.08)  # fmt: skip
    grids = [_score_grids(run) for run in runs]
    ranges = {}  # one colour range per score across the models (one colour bar)
    for score, _, zmin, zmax, _ in HEAD_SCORES:
        values = np.concatenate([g[score].ravel() for g in grids])
        values = values[np.isfinite(values)]
        auto = (float(values.min()), float(values.max())) if len(values) else (None, None)
        ranges[score] = (auto[0] if zmin is None else zmin, auto[1] if zmax is None else zmax)
    for row, (run, grid_of) in enumerate(zip(runs, grids), start=1):
        n_layers, n_heads = run.heads.n_layers, run.heads.n_heads
        for col, (score, scale, _, _, log) in enumerate(HEAD_SCORES, start=1):
            label = f"log10 {score}" if log else score
            grid, (zmin, zmax) = grid_of[score], ranges[score]
            centre = (col - 0.5) / cols
            fig.add_heatmap(
                z=grid, colorscale=scale, zmin=zmin, zmax=zmax, showscale=row == len(runs),
                colorbar={"orientation": "h", "x": centre, "xanchor": "center", "y": -0.07,
                          "yanchor": "top", "len": 0.8 / cols, "thickness": 10,
                          "title": {"text": label, "side": "top"}},
                hovertemplate="L%{y}H%{x}<br>" + label + " %{z:.3g}<extra></extra>",
                row=row, col=col,
            )  # fmt: skip
            fig.update_xaxes(dtick=1 if n_heads <= 12 else None, row=row, col=col)
            block = f"{run.name}: block" if len(runs) > 1 else "block"
            fig.update_yaxes(title_text=block if col == 1 else None, autorange="reversed",
                             dtick=1 if n_layers <= 12 else None, row=row, col=col)  # fmt: skip
    layers = sum(max(8, r.heads.n_layers) for r in runs)
    fig.update_layout(height=14 * layers + 110 * len(runs) + 90, margin={"t": 40, "b": 100},
                      title={"text": "x: head, y: block", "font": {"size": 11}, "x": 1,
                             "xanchor": "right"})  # fmt: skip
    return fig


def _dominated(values: np.ndarray) -> bool:
    """Whether one position holds most of a non-negative measure (then a log axis shows the
    rest)."""
    v = values[np.isfinite(values) & (values > 0)]
    return len(v) > 2 and float(v.max()) > 100 * float(np.median(v))


def profile_figure(runs: Sequence[Any], frames: Sequence[Any]) -> go.Figure:
    """Every profile measure vs source position (rows), one column per model."""
    measures = ["log_paths", "rollout", "bound", "sensitivity"]
    if any("routes" in f for f in frames):
        measures.append("routes")
    titles = [f"{r.name}: {m}" for m in measures for r in runs]
    fig = make_subplots(rows=len(measures), cols=len(runs), subplot_titles=titles,
                        shared_xaxes=True, vertical_spacing=0.05)  # fmt: skip
    for col, frame in enumerate(frames, start=1):
        for row, name in enumerate(measures, start=1):
            if name not in frame:
                continue
            values = frame[name].to_numpy(dtype=float)
            fig.add_scatter(x=frame["pos"], y=values, text=frame["token"].astype(str),
                            mode="lines+markers", marker={"size": 4}, showlegend=False,
                            hovertemplate="pos %{x} %{text}<br>%{y:.3g}<extra></extra>",
                            row=row, col=col)  # fmt: skip
            log = name in ("bound", "sensitivity") or (name != "log_paths" and _dominated(values))
            fig.update_yaxes(
                type="log" if log else "linear",
                row=row,
                col=col,
                title_text=f"{name}{' (log)' if log else ''}" if col == 1 else None,
            )
        fig.update_xaxes(title_text="source position i", row=len(measures), col=col)
    fig.update_layout(height=170 * len(measures) + 80, margin={"t": 50})
    return fig
