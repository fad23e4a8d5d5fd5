"""The findings at the top of the report: one sentence per finding, each with the number
measured in this run and a link to its section.

Every function takes a :class:`~.measure.ModelRun` and returns :class:`Finding` objects whose
``values`` hold the numbers the sentence quotes (tests compare them with the results). A
measurement that shows nothing says so; nothing is written that this run did not measure.
"""

import html
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import SINK_EPS

__all__ = ["Finding", "findings", "crossing_phrase", "TOPICS"]

#: finding topics in page order, with the section each links to
TOPICS = {
    "gap": "collapse",
    "bfloat16": "collapse",
    "float16": "collapse",
    "separators": "collapse",
    "sinks": "heads",
    "top heads": "heads",
    "sensitivity": "profile",
    "predictors": "profile",
}


@dataclass(frozen=True)
class Finding:
    """One sentence (HTML) about one model, the section it links to, and its numbers."""

    topic: str
    html: str
    section: str
    values: dict[Any, Any] = field(default_factory=dict)


def _g(x: float) -> str:
    return "NaN" if not math.isfinite(x) else f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def crossing_phrase(n: int | None, lengths: Any, criterion: str) -> str:
    """E.g. ``"identical: not reached on n ≤ 512"``, ``"collapsed: ≥ 512 (only at the last
    length of the grid)"`` or ``"identical: reached at n = 128, holds to 512"``."""
    last = max(lengths)
    if n is None:
        return f"<b>{criterion}</b>: not reached on n ≤ {last}"
    if n == last:
        return f"<b>{criterion}</b>: ≥ {last} (only at the last length of the grid)"
    return f"<b>{criterion}</b>: reached at n = {n}, holds to {last}"


def _crossings(curve: Any, precision: str, mode: str) -> dict[str, int | None]:
    return {
        c: curve.crossing_length(precision, -1, mode=mode, criterion=c)
        for c in ("identical", "collapsed")
    }


def _last_layer(curve: Any, precision: str, mode: str = "rounded") -> Any:
    f = curve.frame
    sel = f[(f["precision"] == precision) & (f["mode"] == mode) & (f["layer"] == curve.n_layers)]
    return sel.sort_values("length")


def collapse_findings(run: Any) -> list[Finding]:
    curve = run.curves["repeat"]
    out = []
    ref = curve.reference_dtype
    rows = _last_layer(curve, ref)
    first, last = rows.iloc[0], rows.iloc[-1]
    out.append(Finding(
        "gap",
        f"Repeated ones: the last-layer relative L∞ gap ({ref}) falls from {_g(first.rel_linf)} "
        f"at n = {int(first.length)} to {_g(last.rel_linf)} at n = {int(last.length)}.",
        "collapse", {"first": float(first["rel_linf"]), "last": float(last.rel_linf)},
    ))  # fmt: skip
    for precision in ("bfloat16", "float16"):
        if precision not in curve.precisions:
            continue
        modes = ["rounded"] + (["native"] if precision in curve.native else [])
        parts, values = [], {}
        for mode in modes:
            got = _crossings(curve, precision, mode)
            values[mode] = got
            phrases = "; ".join(crossing_phrase(got[c], curve.lengths, c) for c in got)
            parts.append(f"{mode} states — {phrases}")
        out.append(Finding(
            precision,
            f"{precision} crossing length (last layer, repeated ones): " + " | ".join(parts)
            + ".", "collapse", values,
        ))  # fmt: skip
    out.append(_separator_finding(run))
    return out


def _separator_finding(run: Any) -> Finding:
    plain, sep = run.curves["repeat"], run.curves["repeat-sep"]
    ref = plain.reference_dtype
    a, b = _last_layer(plain, ref).iloc[-1], _last_layer(sep, ref).iloc[-1]
    ratio = float(b.rel_linf) / float(a.rel_linf) if a.rel_linf > 0 else math.inf
    changes = []
    for precision in [p for p in ("bfloat16", "float16") if p in plain.precisions]:
        before, after = (
            _crossings(plain, precision, "rounded"),
            _crossings(sep, precision, "rounded"),
        )
        arrows = {c: f"{_n(before[c])} → {_n(after[c])}" for c in before}
        changes.append(
            f"{precision} <b>collapsed</b> {arrows['collapsed']}, "
            f"<b>identical</b> {arrows['identical']}"
        )
    text = (
        f"Separators (a comma every 3rd item) change the last-layer gap at n = {int(a.length)} "
        f"×{_g(ratio)} ({_g(float(a.rel_linf))} → {_g(float(b.rel_linf))}, {ref}); rounded "
        f"crossings: {'; '.join(changes) or 'no reduced precision measured'}."
    )
    return Finding("separators", text, "collapse", {"ratio": ratio})


def _n(n: int | None) -> str:
    return "none" if n is None else f"n = {n}"


def _head(row: Any) -> str:
    return f"L{int(row['block'])}H{int(row['head'])}"


def sink_finding(run: Any) -> Finding:
    frame = run.heads.to_dataframe()
    total = len(frame)
    values: dict[Any, Any] = {"heads": total}
    parts = []
    for eps in SINK_EPS:
        sinks = frame[frame["first_mass"] > eps]
        values[eps] = (len(sinks), len(sinks) / total)
        first = int(sinks["block"].min()) if len(sinks) else None
        values[f"first_block_{eps}"] = first
        who = "Gu et al." if eps == SINK_EPS[0] else "Barbero et al."
        where = f"first in block {first}" if first is not None else "none in any block"
        parts.append(f"{len(sinks)} of {total} ({_pct(len(sinks) / total)}) above ε = {eps} "
                     f"({who}; {where})")  # fmt: skip
    text = "Sink heads (mean attention to the first token over the first 64 queries): "
    text += "; ".join(parts) + "."
    local = frame[frame["attention"] == "local"]
    if len(local):
        glob = frame[frame["attention"] != "local"]
        text += (
            f" Global layers: {_pct(float((glob['first_mass'] > SINK_EPS[0]).mean()))}, local "
            f"(sliding-window) layers: {_pct(float((local['first_mass'] > SINK_EPS[0]).mean()))}"
            f" at ε = {SINK_EPS[0]}."
        )
    if values[SINK_EPS[0]][0] == 0:
        text += " No sinks were measured on this text."
    return Finding("sinks", text, "heads", values)


#: the four kinds of the top-heads finding: (label, score, ascending)
KINDS = (
    ("most diagonal", "diag_mass", False),
    ("most previous-token", "prev_mass", False),
    ("least-writing", "write_ratio", True),
    ("strongest OV eraser", "ov_copying", True),
)


def top_heads_finding(run: Any) -> Finding:
    frame = run.heads.to_dataframe()
    parts, values = [], {}
    for label, score, ascending in KINDS:
        col = frame[np.isfinite(frame[score])]
        if not len(col):
            parts.append(f"{label}: {score} not measured")
            continue
        row = col.sort_values(score, ascending=ascending).iloc[0]
        values[score] = (int(row["block"]), int(row["head"]), float(row[score]))
        note = ""
        if score == "ov_copying" and row[score] >= 0:
            note = " — no head has a negative (erasing) OV spectrum"
        parts.append(f"{label} {_head(row)} ({score} {_g(float(row[score]))}{note})")
    text = "Top heads (L = block): " + "; ".join(parts) + "."
    return Finding("top heads", text, "heads", values)


def sensitivity_findings(run: Any) -> list[Finding]:
    prof = run.profile
    t = prof.target
    sens = prof.sensitivity.values[-1, : t + 1].double().numpy()
    total = float(sens.sum())
    n = len(sens)
    k = max(1, math.ceil(0.1 * n))
    if not total > 0:
        text = "Measured sensitivity is zero at every position: nothing reaches the target."
        return [Finding("sensitivity", text, "profile", {"first": math.nan, "last": math.nan})]
    first, last, bos = sens[:k].sum() / total, sens[-k:].sum() / total, sens[0] / total
    method = prof.sensitivity.method
    if prof.sensitivity.n_probes:
        method += f", {prof.sensitivity.n_probes} probes"
    out = [Finding(
        "sensitivity",
        f"Measured sensitivity ‖∂h_t/∂h_i‖ at the last layer ({method}, {n} tokens): "
        f"{_pct(first)} of it on the first 10% of tokens (positions 0–{k - 1}), {_pct(last)} on "
        f"the last 10% ({n - k}–{n - 1}); position 0 alone {_pct(bos)}.",
        "profile", {"first": float(first), "last": float(last), "bos": float(bos), "k": k},
    )]  # fmt: skip
    out.append(predictor_finding(run))
    return out


#: bootstrap resamples of the predictor agreement
N_BOOT = 500


def agreement(run: Any) -> Any:
    """``OversquashProfile.agreement`` at the last layer (first token and target excluded),
    computed once per run: Spearman ρ of each predictor with the sensitivity, its 95%
    bootstrap interval, and the share of numerically-zero values."""
    if run.agreement is None:
        run.agreement = run.profile.agreement(n_boot=N_BOOT)
    return run.agreement


def predictor_finding(run: Any) -> Finding:
    table = agreement(run)
    parts, values = [], {}
    for row in table.itertuples(index=False):
        values[row.predictor] = float(row.spearman)
        low, high = row.ci_low, row.ci_high
        ci = f" [{_g(low)}, {_g(high)}]" if low is not None and math.isfinite(low) else ""
        zero = ""
        if row.numerically_zero >= 0.5:
            zero = f" ({_pct(row.numerically_zero)} of positions numerically zero: rank noise)"
        parts.append(f"{row.predictor} {_g(float(row.spearman))}{ci}{zero}")
    n = int(table["positions"].iloc[0]) if len(table) else 0
    text = (
        f"Spearman ρ of each predictor with measured sensitivity over {n} positions (first "
        "token and target left out; 95% bootstrap interval): " + "; ".join(parts) + "."
    )
    if any(not math.isfinite(v) for v in values.values()):
        text += " NaN: a constant measure."
    return Finding("predictors", text, "profile", values)


def profile_frame(run: Any) -> Any:
    """The profile's last-layer table, positions 0..target (with ``routes`` when measured)."""
    prof = run.profile
    return prof.to_dataframe().iloc[: prof.target + 1].copy()


def findings(run: Any) -> list[Finding]:
    """Every finding of one model, in :data:`TOPICS` order."""
    out = collapse_findings(run) + [sink_finding(run), top_heads_finding(run)]
    return out + sensitivity_findings(run)


def finding_html(f: Finding) -> str:
    """The sentence with its section link."""
    return f"{f.html} <a href='#{html.escape(f.section)}'>→ {html.escape(f.section)}</a>"
