"""``HeadReport``: the per-head scores and labels of :func:`~oversquash_lens.classify_heads`,
as a frozen result object with a DataFrame, rates, Jupyter display and a heat map."""

import dataclasses
import html
from dataclasses import dataclass
from typing import Any

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from .._display import frame_html
from ..errors import InvalidArgumentError
from .labels import COLOURS, LABELS, SCORES, HeadThresholds, excess, label_heads

__all__ = ["HeadReport"]

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
    #: mean over queries 1 ≤ t < sink_window of 1 − Σ_j α_tj: attention taken by a learned sink
    #: logit (GPT-OSS); None (zeros) for a model without learned sinks
    learned_sink_mass: Grid | None = None
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
    #: how rows summing to less than 1 were read: ``"none"`` (no learned sinks: rows sum to 1),
    #: ``"keep"`` or ``"renormalize"`` (``classify_heads(learned_sinks=...)``)
    learned_sinks: str = "none"

    def __post_init__(self) -> None:
        if self.learned_sink_mass is None:
            object.__setattr__(
                self, "learned_sink_mass", self.diag_mass.new_zeros(self.diag_mass.shape)
            )

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
        (first_mass > sink_threshold), ``is_sink_gu`` (> 0.3) and ``is_sink_barbero`` (> 0.8),
        and ``is_learned_sink`` (learned_sink_mass > sink_threshold: a head whose attention
        mostly goes to its learned sink logit, not to a token; a separate score, never part of
        ``first_mass``). A local head's ``first_mass`` is attention to position 0 from queries
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
        for name in SCORES:
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
        frame["is_learned_sink"] = frame["learned_sink_mass"] > t.sink_threshold
        return frame

    def _excess(self, key: str) -> Tensor:
        return excess(getattr(self, f"{key}_mass"), self.chance.get(key, float("nan")))

    def sink_rates(self) -> pd.DataFrame:
        """Sink_1^ε (docs/science.md §10): the fraction of heads whose first-token mass exceeds
        ε = 0.3 (Gu et al.) and ε = 0.8 (Barbero et al.), over all heads and separately over
        global and local (sliding-window) layers, with the first block where each appears.

        A model with learned sinks (``learned_sinks`` not ``"none"``) adds the same rates for
        ``learned_sink_mass`` (definitions ``"learned gu (0.3)"``, ``"learned barbero (0.8)"``):
        attention to the sink logit, counted apart from attention to the first token."""
        frame = self.to_dataframe()
        frame["_learned_gu"] = frame["learned_sink_mass"] > 0.3
        frame["_learned_barbero"] = frame["learned_sink_mass"] > 0.8
        definitions = [("gu (0.3)", "is_sink_gu"), ("barbero (0.8)", "is_sink_barbero")]
        if self.learned_sinks != "none":
            definitions += [
                ("learned gu (0.3)", "_learned_gu"),
                ("learned barbero (0.8)", "_learned_barbero"),
            ]
        rows = []
        for group, part in [("all", frame), *frame.groupby("attention")]:
            for name, col in definitions:
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
        frame: Any = self.to_dataframe()
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
        if self.learned_sinks != "none":
            mass = self.to_dataframe()["learned_sink_mass"]
            title += (
                f"<br>learned attention sinks (learned_sinks={self.learned_sinks!r}): mass "
                f"{mass.mean():.3f} on average, up to {mass.max():.3f} (learned_sink_mass, not "
                "part of first_mass)"
            )
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
            if score not in SCORES:
                raise InvalidArgumentError(f"score={score!r} is not one of {list(SCORES)}")
            values = frame[score].to_numpy().reshape(self.n_layers, self.n_heads)
            fig = go.Figure(go.Heatmap(z=values, colorscale="Viridis", colorbar={"title": score}))
        else:
            codes = frame["label"].map(LABELS.index).to_numpy().reshape(self.n_layers, -1)
            k = len(LABELS)
            scale = [[i / k + e / k, c] for i, c in enumerate(COLOURS) for e in (0, 1)]
            hover = frame.apply(
                lambda r: (
                    f"L{r.block}H{r.head} {r.label}<br>diag {r.diag_mass:.2f} prev "
                    f"{r.prev_mass:.2f} first {r.first_mass:.2f} learned sink "
                    f"{r.learned_sink_mass:.2f}<br>write {r.write_ratio:.3g} "
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
