"""The report's sections as page items (HTML strings, plotly figures, circuitsvis views).

Each ``*_section(runs, config)`` returns a list of items for ``viz.save_html``; with two
models, tables get one column (or block) per model and figures one panel per model.
"""

import base64
import dataclasses
import html
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from .. import viz
from .._display import frame_html
from ..views.circuits import Columns
from . import figures
from .findings import KINDS, TOPICS, Finding, agreement, finding_html, findings, profile_frame

__all__ = [
    "findings_section",
    "model_section",
    "collapse_section",
    "profile_section",
    "heads_section",
    "timings_section",
    "STYLE",
]

STYLE = """
.findings li { margin: 0.3em 0; }
.findings td { text-align: left; vertical-align: top; max-width: 560px; }
a.csv { font-size: 0.9em; margin-right: 1.2em; }
"""


def _h2(anchor: str, title: str, note: str = "") -> str:
    text = f"<h2 id='{anchor}'>{html.escape(title)}</h2>"
    return text + (f"<p class='note'>{note}</p>" if note else "")


def _cols(blocks: Sequence[Any]) -> Any:
    """One item, or the items side by side (one column per model)."""
    return blocks[0] if len(blocks) == 1 else Columns(tuple(blocks))


def _csv_link(frame: pd.DataFrame, filename: str, label: str) -> str:
    """A link that downloads ``frame`` as CSV from a data: URI (the page stays one file)."""
    data = base64.b64encode(frame.to_csv(index=False).encode()).decode()
    return (
        f"<a class='csv' download='{html.escape(filename)}' "
        f"href='data:text/csv;base64,{data}'>⬇ {html.escape(label)} (CSV, {len(frame)} rows)</a>"
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "model"


def findings_section(runs: Sequence[Any]) -> list[Any]:
    """Bullets for one model; a topic × model table for two."""
    per_model = [findings(run) for run in runs]
    head = _h2("findings", "Findings", "Each number below was measured in this run; the link "
               "leads to its section. <b>identical</b> = bit-identical after rounding to the "
               "precision; <b>collapsed</b> = identical or below its resolution (relative L∞ "
               "gap under machine epsilon).")  # fmt: skip
    if len(runs) == 1:
        items = "".join(f"<li>{finding_html(f)}</li>" for f in per_model[0])
        return [head + f"<ul class='findings'>{items}</ul>"]
    by_topic: dict[str, list[Finding | None]] = {t: [] for t in TOPICS}
    for fs in per_model:
        got = {f.topic: f for f in fs}
        for topic in TOPICS:
            by_topic[topic].append(got.get(topic))
    header = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    rows = []
    for topic, cells in by_topic.items():
        if all(c is None for c in cells):
            continue
        tds = "".join(f"<td>{finding_html(c) if c else 'not measured'}</td>" for c in cells)
        rows.append(f"<tr><th>{html.escape(topic)}</th>{tds}</tr>")
    table = f"<table class='findings'><tr><th></th>{header}</tr>{''.join(rows)}</table>"
    return [head + f"<div style='overflow-x:auto'>{table}</div>"]


def model_section(runs: Sequence[Any]) -> list[Any]:
    frame = pd.DataFrame({r.name: {k: str(v) for k, v in r.facts.items()} for r in runs})
    return [_h2("model", "Model" if len(runs) == 1 else "Models") + frame.to_html()]


def _crossing_table(run: Any) -> pd.DataFrame:
    rows = []
    for task, curve in run.curves.items():
        for precision in curve.precisions:
            native = precision in curve.native and precision != curve.reference_dtype
            for mode in ("rounded", "native") if native else ("rounded",):
                got = {c: curve.crossing_length(precision, -1, mode=mode, criterion=c)
                       for c in ("identical", "collapsed")}  # fmt: skip
                last = max(curve.lengths)
                rows.append({
                    "task": task, "precision": precision, "mode": mode,
                    **{c: "not reached" if n is None else (f"≥ {n} (grid end)" if n == last
                       else str(n)) for c, n in got.items()},
                })  # fmt: skip
    return pd.DataFrame(rows)


def collapse_section(runs: Sequence[Any]) -> list[Any]:
    skipped = "".join(
        f" {r.name}: lengths {r.skipped} skipped (their prompts do not fit n_ctx={r.info.n_ctx})."
        for r in runs
        if r.skipped
    )
    note = (
        "Gap between the last-token residuals of n ones and of n+1 ones (PAPER §2, Thm 4.2), "
        "at every layer and precision; 'repeat-sep' puts a comma every 3rd item (the paper's "
        "glasses). <b>rounded</b> = the float32 run's states rounded to the precision; "
        "<b>native</b> = the model actually run in it (bfloat16 on CPU; float16 on CPU is "
        "emulated and fp8 cannot run, so those are rounded only)." + skipped
    )
    items: list[Any] = [_h2("collapse", "Representational collapse", note)]
    tables = [frame_html(f"Crossing lengths, last layer: {r.name}",
                         _crossing_table(r).set_index(["task", "precision", "mode"]))
              for r in runs]  # fmt: skip
    items.append(_cols(tables))
    for task in runs[0].curves:
        items.append(f"<h3>Gap vs n: {html.escape(task)}</h3>")
        items.append(figures.collapse_figure(runs, task))
    items.append("<h3>Gap per layer and length (repeat, rounded states)</h3>")
    items.append(figures.gap_heatmap(runs, "repeat"))
    links = []
    for r in runs:
        frame = pd.concat([c.to_dataframe().assign(task=t) for t, c in r.curves.items()])
        links.append(_csv_link(frame, f"collapse-{_slug(r.name)}.csv", f"{r.name} collapse"))
    items.append("<p>" + "".join(links) + "</p>")
    return items


def profile_section(runs: Sequence[Any]) -> list[Any]:
    first = runs[0].profile.sensitivity
    method = first.method + (f", {first.n_probes} probes" if first.n_probes else "")
    note = (
        "Toward the last token of a copy prompt, at the last layer: causal path counts (log, "
        "Thm 5.1), attention rollout (Abnar & Zuidema, residual 0.5), the Theorem 5.1 bound "
        "with β from the residual norms, the measured Jacobian sensitivity ‖∂h_t^(L)/∂h_i^(0)‖_F"
        f" ({method}) and, when available, the information-flow routes' source totals (Ferrando "
        "& Voita; every route kept, τ = 0). Each "
        "token view colours every measure on its own scale (log for rollout, bound, "
        "sensitivity and routes); it opens on the measured sensitivity."
    )
    items: list[Any] = [_h2("profile", "Over-squashing profile", note)]
    frames = [profile_frame(r) for r in runs]
    views = []
    for run, frame in zip(runs, frames):
        measures = {
            c: frame[c].to_numpy()
            for c in ("sensitivity", "log_paths", "rollout", "bound", "routes")
            if c in frame
        }
        view = viz.colored_tokens_multi(
            [str(t) for t in frame["token"]], measures, selected="sensitivity",
            log=[m for m in ("rollout", "bound", "sensitivity", "routes") if m in measures],
        )  # fmt: skip
        views.append(dataclasses.replace(view, title=run.name))
    items.append(_cols(views))
    items.append(figures.profile_figure(runs, frames))
    corr = [frame_html(f"{r.name}: how well each predictor ranks the measured sensitivity "
                       "(Spearman ρ, 95% bootstrap interval; first token and target left out)",
                       agreement(r).set_index("predictor"))
            for r in runs]  # fmt: skip
    items.append(_cols(corr))
    notes = [f"{r.name}: {r.routes_note}." for r in runs if r.routes_note]
    notes += [_window_note(r) for r in runs if any(w is not None for w in r.windows)]
    if notes:
        items.append("<p class='note'>" + html.escape(" ".join(notes)) + "</p>")
    links = [_csv_link(f, f"profile-{_slug(r.name)}.csv", f"{r.name} profile")
             for r, f in zip(runs, frames)]  # fmt: skip
    items.append("<p>" + "".join(links) + "</p>")
    return items


def _window_note(run: Any) -> str:
    """Path counts assume full causal attention; say whether sliding windows change them."""
    n = len(run.profile.tokens)
    smallest = min(w for w in run.windows if w is not None)
    if smallest >= n:
        return (
            f"{run.name}: its sliding windows (≥ {smallest} keys) are longer than the {n}-token "
            "prompt, so windowed path counts equal the full ones shown."
        )
    return (f"{run.name}: sliding windows of {smallest} keys are shorter than the {n}-token "
            "prompt; the path counts shown assume full attention (per-layer windowed counts "
            "are not drawn).")  # fmt: skip


def _ranked(run: Any, top_k: int) -> str:
    frame = run.heads.to_dataframe()
    blocks = []
    cols = ["block", "head", "label", "diag_mass", "prev_mass", "first_mass", "write_ratio",
            "ov_copying"]  # fmt: skip
    kinds = [*KINDS[:2], ("strongest sink", "first_mass", False), *KINDS[2:]]
    for label, score, ascending in kinds:
        top = frame[frame[score].notna()].sort_values(score, ascending=ascending).head(top_k)
        blocks.append(frame_html(f"{label} (by {score})", top[cols].set_index(["block", "head"])))
    counts = run.heads.counts().to_frame().T
    head = frame_html(f"{run.name}: heads per label", counts)
    wrap = "display:flex;flex-wrap:wrap;gap:0 1.5em;align-items:flex-start"
    return head + f"<div style='{wrap}'>" + "".join(blocks) + "</div>"


_SHORT = {"diag_mass": "diag", "prev_mass": "prev", "first_mass": "sink",
          "write_ratio": "low-write", "ov_copying": "eraser"}  # fmt: skip


def _extreme_heads(run: Any, limit: int) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """The most extreme head of each kind (deduplicated, in kind order: the first one is the
    one circuitsvis zooms on load)."""
    frame = run.heads.to_dataframe()
    kinds = [*KINDS[:2], ("strongest sink", "first_mass", False), *KINDS[2:]]
    chosen: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for label, score, ascending in kinds:
        valid = frame[frame[score].notna()]
        if not len(valid):
            continue
        row = valid.sort_values(score, ascending=ascending).iloc[0]
        key = (int(row["block"]), int(row["head"]))
        chosen.setdefault(key, []).append((score, f"{label} ({score} {row[score]:.3g})"))
    keys = list(chosen)[:limit]
    short = [f"L{b}H{h} " + "+".join(_SHORT[s] for s, _ in chosen[(b, h)]) for b, h in keys]
    long = [f"L{b}H{h}: " + ", ".join(t for _, t in chosen[(b, h)]) for b, h in keys]
    return keys, short, long


def heads_section(runs: Sequence[Any], config: Any) -> list[Any]:
    note = (
        "Scores per head (L = block) on the head text, averaged over its queries "
        "(docs/science.md §4): diag_mass (α_ii), prev_mass (α_i,i−1), first_mass (attention to "
        "the first token, Gu et al.'s α_1 over the first 64 queries), write_ratio (‖head "
        "output‖ / ‖residual‖), ov_copying (Σ Re λ / Σ |λ| of W_OV: +1 copies, −1 erases). "
        + ("Ablations were run." if config.head_ablation else "No ablations (pass --ablation).")
    )
    items: list[Any] = [_h2("heads", "Attention heads", note)]
    items.append(figures.head_heatmaps(runs))
    items.append(f"<h3>Top {config.top_k} heads of each kind</h3>")
    items.extend(_ranked(r, config.top_k) for r in runs)  # stacked: the tables are wide
    links = [_csv_link(r.heads.to_dataframe(), f"heads-{_slug(r.name)}.csv",
                       f"{r.name}: every head") for r in runs]  # fmt: skip
    items.append("<p>" + "".join(links) + "</p>")
    items.append("<h3>Attention of the most extreme head of each kind</h3><p class='note'>"
                 "Hover a thumbnail to view it, click to lock; the zoomed panel opens on the "
                 "first head.</p>")  # fmt: skip
    for run in runs:
        keys, names, described = _extreme_heads(run, config.max_attention_views)
        if not keys or run.patterns is None:
            items.append(f"<p>{html.escape(run.name)}: no head scores to show.</p>")
            continue
        items.append("<p class='note'>" + html.escape("; ".join(described)) + "</p>")
        blocks = torch.as_tensor([k[0] for k in keys])
        heads = torch.as_tensor([k[1] for k in keys])
        items.append(viz.attention_heads(run.patterns[blocks, heads], run.head_tokens,
                                         head_names=names, title=run.name))  # fmt: skip
    return items


def timings_section(runs: Sequence[Any], total: float) -> list[Any]:
    frame = pd.DataFrame({r.name: r.timings for r in runs}).round(2)
    frame.loc["total (whole report)"] = round(total, 2)
    return [_h2("timings", "Timings (this run, seconds)") + frame.to_html(na_rep="")]
