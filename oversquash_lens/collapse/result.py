"""``CollapseCurve``: the gaps of :func:`~oversquash_lens.collapse_curve` per length, layer,
precision and mode, with both crossing-length notions side by side (docs/science.md §2)."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from .. import _validate
from .._display import frame_html
from ..errors import InvalidArgumentError

__all__ = ["CollapseCurve", "resolution", "COLUMNS", "CRITERIA", "MODES", "FP8"]

_NAMES = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
    torch.float64: "float64",
    torch.float8_e4m3fn: "float8_e4m3fn",
    torch.float8_e5m2: "float8_e5m2",
}
#: Storage-only precisions: rounded to, never run in (no whole-model fp8 kernels in torch).
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
_FP8_NATIVE = (
    "8-bit floats are storage formats: torch cannot run a whole model in them; the states are "
    "rounded only"
)
MODES = ("rounded", "native")
COLUMNS = [
    "length", "layer", "precision", "mode", "l1", "linf", "rel_l2", "rel_linf", "identical",
    "identical_fraction", "collapsed",
]  # fmt: skip
#: crossing criteria: bit-identical after rounding (the headline), or below resolution
CRITERIA = ("identical", "collapsed")


_CPU_FP16 = "float16 on CPU is emulated (very slow); run_in_dtype=True runs it anyway"


def resolution(precision: str | torch.dtype) -> float:
    """Machine epsilon of ``precision``: the relative-L∞ threshold of ``collapsed`` (2^-7
    bfloat16, 2^-10 float16, 2^-3 float8_e4m3fn, 2^-2 float8_e5m2)."""
    return float(torch.finfo(_precision(precision)[1]).eps)


def _round(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` rounded to ``dtype`` (nearest-even); 8-bit formats saturate at their largest
    finite value instead of overflowing."""
    if dtype in FP8:
        big = torch.finfo(dtype).max
        x = x.clamp(-big, big)
    return x.to(dtype)


def _precision(p: Any) -> tuple[str, torch.dtype]:
    try:
        dtype = _validate.resolve_dtype(p) if p is not None else None
    except InvalidArgumentError:
        dtype = None
    if dtype not in _NAMES:
        raise InvalidArgumentError(f"precision={p!r} is not one of {sorted(set(_NAMES.values()))}")
    return _NAMES[dtype], dtype


@dataclass(frozen=True)
class CollapseCurve:
    """Gaps between a pair's last-token residuals per length, layer, precision and mode.

    ``frame`` is long format (:data:`COLUMNS`); ``native`` lists the precisions the model
    was actually run in and ``unavailable`` why the others were not.
    """

    frame: pd.DataFrame
    task: str
    lengths: tuple[int, ...]
    precisions: tuple[str, ...]
    reference_dtype: str
    n_layers: int
    native: tuple[str, ...] = ()
    unavailable: Mapping[str, str] = field(default_factory=dict)
    model_name: str = ""
    intervention: str = "none"
    #: False when the sweep was interrupted (KeyboardInterrupt): ``lengths`` are those whose
    #: pair was measured, and ``unavailable`` names the precisions whose runs were cut short.
    complete: bool = True

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (length, layer, precision, mode)."""
        return self.frame.copy()

    def _rows(self, precision: Any, layer: int, mode: str) -> pd.DataFrame:
        name = _precision(precision)[0]
        if name not in self.precisions:
            raise InvalidArgumentError(
                f"precision={precision!r} was not measured: {self.precisions}"
            )
        if mode not in MODES or (mode == "native" and name not in self.native):
            have = ["rounded"] + (["native"] if name in self.native else [])
            raise InvalidArgumentError(f"mode={mode!r} is not available for {name}: {have}")
        layer = _validate.resolve_index(layer, self.n_layers + 1, name="layer")
        f = self.frame
        sel = pd.DataFrame(
            f[(f["precision"] == name) & (f["mode"] == mode) & (f["layer"] == layer)]
        )
        return sel.sort_values("length")

    def crossing_length(
        self,
        precision: Any,
        layer: int = -1,
        *,
        mode: str = "rounded",
        criterion: str = "identical",
    ) -> int | None:
        """Smallest measured n from which the criterion holds at every larger measured n
        (docs/science.md §2 'crossing length'); None if it does not hold at the largest n.

        ``criterion="identical"`` (default, the paper's argument): the pair's states are
        bit-identical in ``precision``, so the model must answer both the same.
        ``criterion="collapsed"`` (secondary, resolution-based): identical, or the relative
        L∞ gap is below the precision's machine epsilon — dominated by the largest
        coordinates, so it can hold while most coordinates still differ (see the
        ``identical_fraction`` column). A crossing at the last measured length only says the
        grid ended there: :meth:`crossings` flags it."""
        _validate.choice(criterion, "criterion", CRITERIA)
        rows = self._rows(precision, layer, mode)
        flags = rows[criterion].to_numpy(dtype=bool)
        if len(flags) == 0 or not flags[-1]:
            return None
        i = len(flags) - 1
        while i > 0 and flags[i - 1]:
            i -= 1
        return int(rows["length"].iloc[i])

    def crossings(self, layer: int = -1) -> pd.DataFrame:
        """Both crossing lengths per precision and mode at ``layer``, side by side, with what
        each means: ``identical`` and ``collapsed`` (None = not reached on the grid),
        ``at_grid_end`` (the crossing is the last measured n: "≥ n", where it stops is
        unknown), the last length's ``identical_fraction`` of coordinates, and a ``reading``."""
        rows = []
        last_n = max(self.lengths)
        for name in self.precisions:
            for mode in ("rounded", "native") if name in self.native else ("rounded",):
                got = {
                    c: self.crossing_length(name, layer, mode=mode, criterion=c) for c in CRITERIA
                }
                frac = float(self._rows(name, layer, mode)["identical_fraction"].iloc[-1])
                rows.append({"precision": name, "mode": mode, **got,
                             "at_grid_end": any(v == last_n for v in got.values()),
                             "identical_fraction_at_max_n": frac,
                             "reading": _reading(got, last_n)})  # fmt: skip
        return pd.DataFrame(rows)

    def plot(self, *, layer: int = -1, metric: str = "rel_linf"):
        """Gap vs n (log-log) per precision and mode at ``layer``, with each precision's
        resolution (machine epsilon) as a dotted line. Bit-identical points sit on the floor."""
        import plotly.express as px

        if metric not in ("l1", "linf", "rel_l2", "rel_linf"):
            raise InvalidArgumentError(
                f"metric={metric!r} is not one of l1, linf, rel_l2, rel_linf"
            )
        layer = _validate.resolve_index(layer, self.n_layers + 1, name="layer")
        df = self.frame[self.frame["layer"] == layer].copy()
        positive = df.loc[df[metric] > 0, metric]
        floor = float(positive.min()) / 10 if len(positive) else 1e-12
        df[metric] = df[metric].clip(lower=floor)
        fig = px.line(
            df, x="length", y=metric, color="precision", line_dash="mode", markers=True,
            symbol="identical", log_x=True, log_y=True, hover_data=["l1", "linf", "rel_l2"],
            title=f"Representational collapse: {self.task}, layer {layer} ({self.model_name})",
        )  # fmt: skip
        if metric.startswith("rel"):
            for name in self.precisions:
                eps = resolution(name)
                fig.add_hline(y=eps, line_dash="dot", line_color="grey")
                # Placed by hand: plotly puts add_hline's annotation at the linear value on a
                # log axis (at 10**eps), which stacks every label at the top of the plot.
                fig.add_annotation(
                    x=1, xref="paper", xanchor="right", y=math.log10(eps), yref="y",
                    yanchor="bottom", showarrow=False, text=f"{name} eps 2^{int(math.log2(eps))}",
                )  # fmt: skip
        fig.update_layout(
            xaxis_title="n (items)", yaxis_title=metric,
            legend_title_text="precision, mode (rounded/native), bit-identical",
        )  # fmt: skip
        return fig

    def _repr_html_(self) -> str:
        head = (
            f"<b>CollapseCurve</b> {self.model_name}: task={self.task!r}, "
            f"n={list(self.lengths)}, reference dtype {self.reference_dtype}, "
            f"native runs: {list(self.native) or 'none'}, intervention: {self.intervention}"
        )
        if not self.complete:
            head += " — <b>interrupted</b>: only what was measured before the interrupt"
        last = self.frame[self.frame["layer"] == self.n_layers]
        crossings = frame_html(
            "Crossing lengths, last layer (docs/science.md §2)", self.crossings()
        )
        return f"<div><p>{head}</p></div>" + crossings + frame_html("Last layer", last)


def _reading(got: Mapping[str, int | None], last_n: int) -> str:
    """One line saying what the two crossing lengths mean."""
    same, below = got["identical"], got["collapsed"]
    if same is None and below is None:
        return f"never identical nor below resolution for n <= {last_n}"
    if same is None:
        end = " (only at the last n)" if below == last_n else ""
        return f"below resolution from n = {below}{end}, but never bit-identical for n <= {last_n}"
    end = " - only at the last n measured: ≥ that n" if same == last_n else ""
    return f"bit-identical from n = {same}{end}"
