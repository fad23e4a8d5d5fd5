"""Head classifier: diagonal, previous-token, BOS-sink and no-op heads (PAPER §4).

Per (layer, head) :func:`classify_heads` measures, averaged over the prompts given:

- attention patterns (query position 0 left out, where every head trivially attends to itself):
  ``diag_mass`` = mean_i α_ii and ``diag_min`` = min_i α_ii over i ≥ 1 (Round and Round, Def 5.1:
  *diagonal* if α_ii > 1−ε for all i, column ``is_diagonal``); ``prev_mass`` / ``prev_min`` the
  same for α_{i,i−1} (*previous-token*, ``is_previous``); ``first_mass`` = α_1 of Gu et al.:
  mean over queries 1 ≤ t < 64 of α_{t,0} (``is_sink`` when above ``sink_threshold``: 0.3 as in
  Gu et al.; Barbero et al. use 0.8); ``entropy`` = mean row entropy (nats);
- what the head writes: ``write_ratio`` = mean over positions i ≥ 1 of ‖z_h(i)·W_O[h]‖ /
  ‖resid_pre(i)‖ (the residual stream the head's output is added to), and ``delta_loss_zero`` /
  ``delta_loss_mean``: change of the mean next-token cross-entropy (nats) when the head's
  ``hook_z`` is replaced at positions ≥ 1 by zero / by its mean over the prompts' positions ≥ 1
  (position 0 is left alone: the head's output there is not its function, and every later token
  reads it);
- the OV circuit (Elhage et al. 2021): eigenvalues λ of W_V[h]·W_O[h] (with the pre-attention norm
  scale folded into W_V; grouped K/V heads repeated per query head): ``ov_copying`` = Σ Re λ /
  Σ |λ| in [−1, 1] (+1 copies, −1 erases) and ``ov_neg_fraction`` = Σ_{Re λ<0} |λ| / Σ |λ|.
  Only the norm's elementwise scale is folded; its centring and 1/rms are ignored.

Labels, first matching rule wins (thresholds are keyword options of :class:`HeadThresholds`):

1. *diagonal* heads: ``diag_mass ≥ 1−eps`` (or Def 5.1, ``diag_min > 1−eps``, with ``strict``):
   ``diagonal-noop`` if ``write_ratio < write_threshold`` and, when ablations were run, both
   ``|delta_loss|`` < ``ablation_threshold`` (a head that writes little but matters is not a
   no-op); else ``diagonal-eraser`` if ``ov_copying <
   −eraser_threshold``; else ``diagonal``;
2. ``bos-sink`` if ``first_mass ≥ sink_threshold``;
3. ``previous-token`` if ``prev_mass ≥ 1−eps`` (``prev_min > 1−eps`` with ``strict``);
4. ``mixing`` otherwise.
"""

import dataclasses
import html
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from .. import _tl, _validate
from .._display import frame_html
from ..errors import InvalidArgumentError, InvalidPatternError
from . import scores as hs

__all__ = [
    "LABELS",
    "HeadThresholds",
    "HeadReport",
    "classify_heads",
    "label_heads",
    "pattern_scores",
    "excess",
]

LABELS = ("diagonal-noop", "diagonal-eraser", "diagonal", "bos-sink", "previous-token", "mixing")
_SCORES = (*hs.PATTERN_STATS, "write_ratio", "delta_loss_zero", "delta_loss_mean")
_SCORES += ("ov_copying", "ov_neg_fraction")
_COLOURS = ("#7f7f7f", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#f4f4f4")


@dataclass(frozen=True)
class HeadThresholds:
    """Label thresholds (see the module docstring for the rules and their precedence).

    Attributes:
        eps: None (default) labels diagonal / previous-token heads *against chance*: the mass
            must rise at least ``min_excess`` of the way from its uniform-attention level to 1.
            A number ε uses the absolute rule of Def 5.1 instead: mass ≥ 1−ε.
        min_excess: the chance-relative cut, (mass − chance) / (1 − chance) ≥ min_excess
            (default 0.5: at least halfway from uniform attention to a perfect head).
        sink_threshold: first-token mass above which a head is a ``bos-sink`` (default 0.8,
            Barbero et al. 2025; Gu et al.'s 0.3 is reported as a rate beside it).
        write_threshold: write ratio below which a diagonal head may be a no-op (default 0.05).
        ablation_threshold: |Δ loss| in nats below which ablating it "barely matters" (0.01).
        eraser_threshold: ``ov_copying < −eraser_threshold`` marks an eraser (default 0.5;
            any value in (−1, 1)).
        strict: use Def 5.1 (every query above 1−ε; ε = 0.1 when ``eps`` is None) instead of
            the mean mass.
    """

    eps: float | None = None
    min_excess: float = 0.5
    sink_threshold: float = 0.8
    write_threshold: float = 0.05
    ablation_threshold: float = 0.01
    eraser_threshold: float = 0.5
    strict: bool = False

    def __post_init__(self) -> None:
        _validate.flag(self.strict, "strict")
        if self.eps is not None:
            _validate.number(
                self.eps, "eps", minimum=0.0, maximum=1.0, open_min=True, open_max=True
            )
        ranges = {
            "min_excess": (0.0, 1.0),
            "sink_threshold": (0.0, 1.0),
            "write_threshold": (0.0, float("inf")),
            "ablation_threshold": (0.0, float("inf")),
            "eraser_threshold": (-1.0, 1.0),
        }
        for name, (lo, hi) in ranges.items():
            _validate.number(getattr(self, name), name, minimum=lo, maximum=hi, open_min=True,
                             open_max=True)  # fmt: skip

    @property
    def def51_eps(self) -> float:
        """ε of the Def 5.1 tests (``is_diagonal``, ``is_previous``, ``strict``)."""
        return 0.1 if self.eps is None else float(self.eps)


Grid = Float[Tensor, "layer head_index"]


@dataclass(frozen=True)
class HeadReport:
    """Scores and a label per (layer, head); every score is ``[layer, head]`` (see the module
    docstring for definitions). Ablation columns are NaN when ablations were skipped;
    ``ov_*`` are NaN for a head whose OV circuit is exactly zero."""

    diag_mass: Grid
    diag_min: Grid
    prev_mass: Grid
    prev_min: Grid
    first_mass: Grid
    entropy: Grid
    write_ratio: Grid
    delta_loss_zero: Grid
    delta_loss_mean: Grid
    ov_copying: Grid
    ov_neg_fraction: Grid
    labels: tuple[tuple[str, ...], ...]
    thresholds: HeadThresholds = HeadThresholds()
    clean_loss: float = float("nan")
    n_sequences: int = 0
    n_tokens: int = 0
    norm_folded: bool = False
    model_name: str = ""
    #: uniform-attention levels of diag_mass / prev_mass / first_mass on these prompts
    #: (:func:`~oversquash_lens.heads.scores.chance_levels`); empty = not recorded
    chance: dict[str, float] = dataclasses.field(default_factory=dict)
    #: per layer: sliding-window size of a local attention layer, None for global attention
    #: (``_tl.attention_windows``); empty = not recorded (read as all global)
    windows: tuple[int | None, ...] = ()

    @property
    def n_layers(self) -> int:
        return self.diag_mass.shape[0]

    @property
    def n_heads(self) -> int:
        return self.diag_mass.shape[1]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per head: ``block`` (0-based block index; the head reads layer ``block``
        and writes layer ``block + 1``), ``head``, ``attention`` (``"local"`` for a
        sliding-window layer, else ``"global"``), ``window`` (its size; ``<NA>`` when global),
        ``label``, every score, ``diag_excess`` / ``prev_excess`` / ``first_excess`` (how far
        the mass rose from its uniform-attention level toward 1: (mass − chance)/(1 − chance)),
        ``excess`` (that of the score behind the head's label; 0 for ``mixing``), and the tests
        ``is_diagonal`` / ``is_previous`` (Def 5.1: every query above 1−ε), ``is_sink``
        (first_mass > sink_threshold), ``is_sink_gu`` (> 0.3) and ``is_sink_barbero`` (> 0.8).
        A local head's ``first_mass`` is attention to position 0 from queries
        within its window only: a sink there is not a global sink."""
        t = self.thresholds
        windows = list(self.windows) or [None] * self.n_layers
        frame = pd.DataFrame(
            {
                "block": [block for block in range(self.n_layers) for _ in range(self.n_heads)],
                "head": list(range(self.n_heads)) * self.n_layers,
                "attention": [
                    "global" if w is None else "local" for w in windows for _ in range(self.n_heads)
                ],
                "window": pd.array([w for w in windows for _ in range(self.n_heads)], "Int64"),
                "label": [label for row in self.labels for label in row],
            }
        )
        for name in _SCORES:
            frame[name] = getattr(self, name).flatten().double().cpu().numpy()
        for key in ("diag", "prev", "first"):
            frame[f"{key}_excess"] = self._excess(key).flatten().double().numpy()
        by_label = {"bos-sink": "first_excess", "previous-token": "prev_excess"}
        frame["excess"] = [
            0.0 if lab == "mixing" else row[by_label.get(lab, "diag_excess")]
            for lab, (_, row) in zip(frame["label"], frame.iterrows())
        ]
        frame["is_diagonal"] = frame["diag_min"] > 1 - t.def51_eps
        frame["is_previous"] = frame["prev_min"] > 1 - t.def51_eps
        frame["is_sink"] = frame["first_mass"] > t.sink_threshold
        frame["is_sink_gu"] = frame["first_mass"] > 0.3
        frame["is_sink_barbero"] = frame["first_mass"] > 0.8
        return frame

    def _excess(self, key: str) -> Tensor:
        return excess(getattr(self, f"{key}_mass"), self.chance.get(key, float("nan")))

    def sink_rates(self) -> pd.DataFrame:
        """Sink_1^ε (docs/science.md §10): the fraction of heads whose first-token mass exceeds
        ε = 0.3 (Gu et al.) and ε = 0.8 (Barbero et al.), over all heads and separately over
        global and local (sliding-window) layers, with the first block where each appears."""
        frame = self.to_dataframe()
        rows = []
        for group, part in [("all", frame), *frame.groupby("attention")]:
            for name, col in (("gu (0.3)", "is_sink_gu"), ("barbero (0.8)", "is_sink_barbero")):
                hits = part[part[col]]
                first = int(hits["block"].min()) if len(hits) else None
                rate, heads = float(part[col].mean()), int(part[col].sum())
                rows.append({"layers": group, "definition": name, "rate": rate, "heads": heads,
                             "of": len(part), "first_block": first})  # fmt: skip
        return pd.DataFrame(rows)

    @property
    def flagged(self) -> pd.DataFrame:
        """Rows of :meth:`to_dataframe` whose label is not ``mixing``, the heads that stand out
        most first: diagonal kinds, then previous-token heads, then sinks, each ranked by
        ``excess`` (how far the defining score is above its uniform-attention level)."""
        frame = self.to_dataframe()
        frame = frame[frame["label"] != "mixing"]
        kind = frame["label"].map({"bos-sink": 2, "previous-token": 1}).fillna(0)
        order = frame.assign(_kind=kind).sort_values(["_kind", "excess"], ascending=[True, False])
        return order.drop(columns="_kind").reset_index(drop=True)

    def counts(self) -> pd.Series:
        """Number of heads per label (every label listed, zeros included)."""
        flat = pd.Series([label for row in self.labels for label in row], dtype=str)
        return flat.value_counts().reindex(list(LABELS), fill_value=0).rename("heads")

    def relabel(self, **thresholds: Any) -> "HeadReport":
        """The same scores labelled with other thresholds (keywords of :class:`HeadThresholds`)."""
        unknown = sorted(set(thresholds) - {f.name for f in dataclasses.fields(HeadThresholds)})
        if unknown:
            raise InvalidArgumentError(f"unknown threshold(s) {unknown}")
        new = dataclasses.replace(self.thresholds, **thresholds)
        return dataclasses.replace(self, thresholds=new, labels=label_heads(self, new))

    def _repr_html_(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in self.counts().items())
        title = (
            f"<b>HeadReport</b> {html.escape(self.model_name)}: {self.n_layers} layers × "
            f"{self.n_heads} heads, {self.n_sequences} sequence(s), {self.n_tokens} tokens, "
            f"{self._rule_text()}, clean loss {self.clean_loss:.4g}<br>{counts}"
        )
        local = {layer: w for layer, w in enumerate(self.windows) if w is not None}
        if local:
            title += (
                f"<br>local (sliding-window) layers {sorted(local)}, window "
                f"{sorted(set(local.values()))}; global layers "
                f"{[i for i in range(self.n_layers) if i not in local]}"
            )
        flagged = self.flagged
        if self.to_dataframe()["delta_loss_zero"].isna().all():  # ablation was skipped
            flagged = flagged.drop(columns=["delta_loss_zero", "delta_loss_mean"])
            title += "<br>ablation skipped (ablation=False)"
        return frame_html(title + ("" if len(flagged) else "<br>no flagged heads"), flagged)

    def _rule_text(self) -> str:
        t = self.thresholds
        if t.eps is None:
            chance = ", ".join(f"{k} {v:.3f}" for k, v in self.chance.items())
            return f"labels vs chance (min_excess={t.min_excess}; uniform levels: {chance})"
        return f"labels with eps={t.eps}"

    def plot(self, score: str | None = None) -> Any:
        """Plotly heat map block × head: the labels (default) or one score column."""
        import plotly.graph_objects as go

        frame = self.to_dataframe()
        if score is not None:
            if score not in _SCORES:
                raise InvalidArgumentError(f"score={score!r} is not one of {list(_SCORES)}")
            values = frame[score].to_numpy().reshape(self.n_layers, self.n_heads)
            fig = go.Figure(go.Heatmap(z=values, colorscale="Viridis", colorbar={"title": score}))
        else:
            codes = frame["label"].map(LABELS.index).to_numpy().reshape(self.n_layers, -1)
            k = len(LABELS)
            scale = [[i / k + e / k, c] for i, c in enumerate(_COLOURS) for e in (0, 1)]
            hover = frame.apply(
                lambda r: (
                    f"L{r.block}H{r.head} {r.label}<br>diag {r.diag_mass:.2f} prev "
                    f"{r.prev_mass:.2f} first {r.first_mass:.2f}<br>write {r.write_ratio:.3g} "
                    f"ov {r.ov_copying:.2f}"
                ),
                axis=1,
            )
            fig = go.Figure(
                go.Heatmap(
                    z=codes,
                    zmin=-0.5,
                    zmax=k - 0.5,
                    colorscale=scale,
                    text=hover.to_numpy().reshape(self.n_layers, -1),
                    hoverinfo="text",
                    colorbar={"tickvals": list(range(k)), "ticktext": list(LABELS)},
                )
            )
        fig.update_layout(
            title=f"Heads of {self.model_name}: {score or 'labels'}",
            xaxis_title="head",
            yaxis_title="block",
            yaxis_autorange="reversed",
        )
        return fig


def excess(mass: Tensor, chance: float) -> Tensor:
    """(mass − chance) / (1 − chance): 0 for uniform attention, 1 for a perfect head, < 0 below
    chance (docs/science.md §4)."""
    return (mass.double().cpu() - chance) / (1.0 - chance)


def label_heads(scores: Any, thresholds: HeadThresholds) -> tuple[tuple[str, ...], ...]:
    """Label every head from the score grids of ``scores`` (a :class:`HeadReport` or anything
    with the same attributes); the rules and their precedence are in the module docstring."""
    t = thresholds
    cut = 1 - t.def51_eps
    chance = getattr(scores, "chance", {}) or {}
    if t.strict:
        diagonal, previous = scores.diag_min > cut, scores.prev_min > cut
    elif t.eps is None:
        diagonal = excess(scores.diag_mass, chance.get("diag", float("nan"))) >= t.min_excess
        previous = excess(scores.prev_mass, chance.get("prev", float("nan"))) >= t.min_excess
    else:
        diagonal, previous = scores.diag_mass >= cut, scores.prev_mass >= cut
    small_effect = ~(scores.delta_loss_zero.abs() >= t.ablation_threshold) & ~(
        scores.delta_loss_mean.abs() >= t.ablation_threshold
    )  # NaN (not measured) counts as small
    noop = (scores.write_ratio < t.write_threshold) & small_effect
    eraser = scores.ov_copying < -t.eraser_threshold
    sink = scores.first_mass > t.sink_threshold
    rules = [
        (diagonal & noop, "diagonal-noop"),
        (diagonal & eraser, "diagonal-eraser"),
        (diagonal, "diagonal"),
        (sink, "bos-sink"),
        (previous, "previous-token"),
    ]
    rows = []
    for layer in range(diagonal.shape[0]):
        row = []
        for head in range(diagonal.shape[1]):
            hit = [name for mask, name in rules if bool(mask[layer, head])]
            row.append(hit[0] if hit else "mixing")
        rows.append(tuple(row))
    return tuple(rows)


def pattern_scores(
    patterns: Float[Tensor, "*batch layer head_index query_pos key_pos"] | Any,
    *,
    sink_window: int = 64,
) -> dict[str, Float[Tensor, "layer head_index"]]:
    """Pattern-only head scores (PAPER §4) from precomputed attention: ``diag_mass``,
    ``diag_min``, ``prev_mass``, ``prev_min``, ``first_mass`` and ``entropy`` (definitions in the
    module docstring), averaged over the batch (minima: minimum over the batch).

    Example:
        >>> _, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
        >>> pattern_scores(cache)["diag_mass"].shape  # [n_layers, n_heads]

    Args:
        patterns: ``[layer, head, query, key]`` or ``[batch, layer, head, query, key]`` causal,
            row-stochastic attention, or an ActivationCache holding ``hook_pattern`` entries.
        sink_window: queries 1 ≤ t < sink_window enter ``first_mass`` (64, as Gu et al.).
    """
    if _tl.is_activation_cache(patterns):
        patterns = _tl.cache_patterns(patterns)
    if not isinstance(patterns, Tensor):
        raise InvalidPatternError(
            f"patterns={type(patterns).__name__} is neither a tensor nor an ActivationCache"
        )
    patterns = patterns.detach()
    hs.check_patterns(patterns)
    _check_window(sink_window)
    p = patterns if patterns.ndim == 5 else patterns.unsqueeze(0)
    b, n_layers, n_heads, n, _ = p.shape
    st = hs.pattern_stats(p.reshape(b, n_layers * n_heads, n, n), sink_window=sink_window)
    st = st.view(b, n_layers, n_heads, -1).double()
    out = {name: st[..., i].mean(0).float() for i, name in enumerate(hs.PATTERN_STATS)}
    out["diag_min"], out["prev_min"] = st[..., 1].amin(0).float(), st[..., 3].amin(0).float()
    return out


def classify_heads(
    model: Any,
    tokens: Any,
    *,
    eps: float | None = None,
    min_excess: float = 0.5,
    sink_threshold: float = 0.8,
    write_threshold: float = 0.05,
    ablation_threshold: float = 0.01,
    eraser_threshold: float = 0.5,
    strict: bool = False,
    ablation: bool = True,
    fold_norm: bool = True,
    sink_window: int = 64,
    batch_size: int | None = None,
    progress: bool = True,
) -> HeadReport:
    """Classify every attention head as ``diagonal-noop``, ``diagonal-eraser``, ``diagonal``,
    ``bos-sink``, ``previous-token`` or ``mixing`` (PAPER §4: Round and Round Def 5.1, Gu et
    al. sinks, circuits-framework OV eigenvalues; scores and rules in the module docstring).

    Example:
        >>> report = classify_heads(model, ["the cat sat on the mat", "1 2 3 4 5"])
        >>> report.counts()          # heads per label
        >>> report.flagged           # DataFrame of the non-mixing heads

    Args:
        model: a TransformerBridge or HookedTransformer (not modified).
        tokens: text, a list of texts (each run on its own, no padding), token ids ``[pos]`` or
            ``[batch, pos]``, or a list of id sequences of different lengths; ≥ 2 positions each.
        eps, min_excess, sink_threshold, write_threshold, ablation_threshold,
            eraser_threshold, strict: label thresholds, see :class:`HeadThresholds` (defaults:
            chance-relative, 0.5, 0.8, 0.05, 0.01 nats, 0.5; docs/science.md §4 justifies them).
        ablation: run the zero/mean ablations (2 · n_layers · n_heads ablated forward passes,
            batched, each starting at the head's layer); False leaves those columns NaN.
        fold_norm: fold the pre-attention norm's elementwise scale into W_V for the OV scores.
        sink_window: queries 1 ≤ t < sink_window enter ``first_mass`` (64, as Gu et al.).
        batch_size: most sequences per ablation forward pass (default: a ~512 MB budget).
        progress: show a progress bar over the ablation passes.

    Notes:
        Use prompts of a few dozen tokens: uniform attention already has ``first_mass`` =
        (H_n − 1)/(n − 1) (0.42 at n = 3, 0.29 at n = 6, 0.12 at n = 24; H_n harmonic), so on
        very short prompts mixing heads pass the 0.3 sink threshold. Ablations keep the
        residual entering every block for the prompts in memory (``n_layers · batch · pos ·
        d_model`` values); their cost is about ``n_heads · (n_layers + 1)`` forward passes
        (``benchmarks/heads.py``), so pass ``ablation=False`` for quick looks at big models.
    """
    thresholds = HeadThresholds(
        eps=eps,
        min_excess=min_excess,
        sink_threshold=sink_threshold,
        write_threshold=write_threshold,
        ablation_threshold=ablation_threshold,
        eraser_threshold=eraser_threshold,
        strict=strict,
    )
    _check_window(sink_window)
    if batch_size is not None:
        _validate.integer(batch_size, "batch_size", minimum=1)
    _validate.flag(ablation, "ablation")
    _validate.flag(fold_norm, "fold_norm")
    _validate.flag(progress, "progress")
    info = _tl.require_attention(model)
    groups = hs.token_groups(model, tokens, info)
    grids, facts = hs.measure(
        model,
        groups,
        info,
        sink_window=sink_window,
        ablation=ablation,
        fold_norm=fold_norm,
        batch_size=batch_size,
        progress=progress,
    )
    chance = hs.chance_levels([g.shape[1] for g in groups for _ in range(g.shape[0])],
                              sink_window=sink_window)  # fmt: skip
    labels = label_heads(SimpleNamespace(**grids, chance=chance), thresholds)
    return HeadReport(
        **grids,
        labels=labels,
        thresholds=thresholds,
        chance=chance,
        **facts,
        model_name=info.name,
        windows=tuple(_tl.attention_windows(model)),
    )


def _check_window(sink_window: Any) -> None:
    _validate.integer(sink_window, "sink_window", minimum=2)
