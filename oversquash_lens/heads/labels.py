"""Head labels: the thresholds, the chance-relative excess and the labelling rules
(docs/science.md §4; the rules and their precedence are in :mod:`.classify`'s docstring)."""

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .. import _validate
from . import scores as hs

__all__ = ["LABELS", "SCORES", "COLOURS", "HeadThresholds", "excess", "label_heads"]

LABELS = ("diagonal-noop", "diagonal-eraser", "diagonal", "bos-sink", "previous-token", "mixing")
SCORES = (*hs.PATTERN_STATS, "write_ratio", "delta_loss_zero", "delta_loss_mean")
SCORES += ("ov_copying", "ov_neg_fraction")
COLOURS = ("#7f7f7f", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#f4f4f4")


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
