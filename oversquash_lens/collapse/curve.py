"""Representational collapse probe (docs/science.md §2, Thm 4.2).

For a pair v = [u, a], v* = [u, a, a] (``oversquash_lens.tasks``) the last-token residuals
v_n^(ℓ) and v*_{n+1}^(ℓ) get arbitrarily close as n grows. ``collapse_curve`` measures, per
length n, residual layer ℓ = 0..n_layers and precision, the gap between the two last-token
states: L1, L∞, relative L2 and relative L∞, and whether they are bit-identical.

Precision modes:
- ``"rounded"``: the states of a run in the model's own dtype, rounded to the precision
  (round-to-nearest-even) before comparing.
- ``"native"``: the model actually run with its floating parameters and buffers in that dtype
  (``_tl.cast_temporarily``: the original tensors are put back afterwards, bitwise).

8-bit formats (docs/science.md §7, "Windowed attention and scalable softmax"): ``float8_e4m3fn``
(3 mantissa bits, resolution 2^-3, largest finite 448, no infinity) and ``float8_e5m2`` (2 bits,
2^-2, largest 57344) are rounding targets only: torch has no kernels to run a whole model in
them, so they are never run natively (``run_in_dtype=True`` with one refuses; ``None`` lists
them in ``unavailable``). Rounding saturates: values beyond the largest finite number become
it (the "satfinite" conversion; torch's own e4m3fn cast already does this, e5m2 would give inf),
so two coordinates that both overflow compare equal, as fp8 storage would hold them.

Resolution (``collapsed`` column, used by ``crossing_length``): the pair is *collapsed* at a
precision when the states are identical in it, or their relative L∞ gap
‖a−b‖∞ / max(‖a‖∞, ‖b‖∞) is below the precision's machine epsilon (2^-7 bf16, 2^-10 fp16,
2^-23 fp32) — the largest coordinate difference is under one unit in the last place at the
scale of the vector, the normwise analogue of Fig 10's "bf16 line". Being normwise, it is
set by the largest coordinates: on real models with massive activations (a few residual
dimensions ~100x the rest) it can call a pair collapsed whose small coordinates still differ
in that dtype; ``crossing_length(..., criterion="identical")`` is the strict bitwise test.

Efficiency: a causal model's state at position p does not depend on later tokens, so when
one sequence is a prefix of another (``repeat`` tasks: v is a prefix of v*, and of every
longer v) only the longest is run and every needed last position is read from it
(``share_prefix=True``). Runs of equal length are batched; a base that is not a prefix is
right-padded to its partner's length so both are computed in the same forward pass.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, SupportsIndex

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import _tl, _validate
from .._display import frame_html
from ..errors import InvalidArgumentError, InvalidTokensError, UnsupportedModelError
from ..glasses import Intervention, applied, describe
from ..tasks.prompts import Pair, task_pair

__all__ = ["CollapseCurve", "collapse_curve", "resolution"]

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
    "collapsed",
]  # fmt: skip


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
        sel = f[(f["precision"] == name) & (f["mode"] == mode) & (f["layer"] == layer)]
        return sel.sort_values("length")

    def crossing_length(
        self,
        precision: Any,
        layer: int = -1,
        *,
        mode: str = "rounded",
        criterion: str = "collapsed",
    ) -> int | None:
        """Smallest measured n from which the pair stays collapsed at every larger measured n
        (docs/science.md §2 'crossing length'); None if it is not collapsed at the largest n.
        ``criterion="identical"`` asks for bit-identical states instead of the resolution."""
        if criterion not in ("collapsed", "identical"):
            raise InvalidArgumentError(
                f"criterion={criterion!r} must be 'collapsed' or 'identical'"
            )
        rows = self._rows(precision, layer, mode)
        flags = rows[criterion].to_numpy(dtype=bool)
        if len(flags) == 0 or not flags[-1]:
            return None
        i = len(flags) - 1
        while i > 0 and flags[i - 1]:
            i -= 1
        return int(rows["length"].iloc[i])

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
        rows = []
        for name in self.precisions:
            for mode in ("rounded", "native") if name in self.native else ("rounded",):
                rows.append(
                    {"precision": name, "mode": mode, "crossing length (last layer)":
                     self.crossing_length(name, mode=mode)}
                )  # fmt: skip
        head = (
            f"<b>CollapseCurve</b> {self.model_name}: task={self.task!r}, "
            f"n={list(self.lengths)}, reference dtype {self.reference_dtype}, "
            f"native runs: {list(self.native) or 'none'}, intervention: {self.intervention}"
        )
        last = self.frame[self.frame["layer"] == self.n_layers]
        return frame_html(head, pd.DataFrame(rows)) + frame_html("Last layer", last)


def _lengths(lengths: Any) -> list[int]:
    return sorted(set(_validate.int_list(lengths, name="lengths")))


def _plan(pairs: Sequence[Pair], share_prefix: bool) -> list[tuple[list[int], list[tuple]]]:
    """Token sequences to run and, for each, which (pair, side) last positions to read."""
    wanted: list[tuple[tuple, list[int], int]] = []  # (key, tokens, run length)
    for i, pair in enumerate(pairs):
        base, ext = pair.base.tolist(), pair.extended.tolist()
        if share_prefix and len(base) < len(ext) and ext[: len(base)] != base:
            base = base + [base[-1]] * (len(ext) - len(base))  # right-pad: causal, harmless
            wanted.append(((i, 0), base, len(pair.base)))
        else:
            wanted.append(((i, 0), base, len(base)))
        wanted.append(((i, 1), ext, len(ext)))
    runs: list[tuple[list[int], list[tuple]]] = []
    for key, toks, last in sorted(wanted, key=lambda w: -len(w[1])):
        if share_prefix:
            host = next((r for r in runs if r[0][: len(toks)] == toks), None)
            if host is not None:
                host[1].append((key, last - 1))
                continue
        runs.append((toks, [(key, last - 1)]))
    return runs


def _execute(model: Any, runs: list, info: Any, batch_size: int, bar: Any) -> dict:
    """Residual states [layer, d_model] at each requested (key) last position."""
    names = [_tl.resid_name(layer) for layer in range(info.n_layers + 1)]
    out: dict = {}
    by_len: dict[int, list] = {}
    for run in runs:
        by_len.setdefault(len(run[0]), []).append(run)
    for group in by_len.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            toks = _tl.prepare_tokens(model, [r[0] for r in chunk], info)
            positions = sorted({p for r in chunk for _, p in r[1]})
            keep = torch.tensor(positions, device=toks.device)
            store = _tl.capture(
                model, toks, names, transform=lambda _, x, keep=keep: x.index_select(1, keep)
            )
            states = torch.stack([store[n] for n in names], dim=1)  # [batch, layer, kept, d]
            for row, run in enumerate(chunk):
                for key, p in run[1]:
                    out[key] = states[row, :, positions.index(p)]
            bar.update(1)
    return out


def _metrics(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """Gap metrics over the last axis of two [..., d_model] stacks (computed in float64)."""
    a64, b64 = a.double(), b.double()
    d = (a64 - b64).abs()
    inf_norm = torch.maximum(a64.abs().amax(-1), b64.abs().amax(-1))
    l2_norm = torch.maximum(a64.norm(dim=-1), b64.norm(dim=-1))
    return {
        "l1": d.sum(-1),
        "linf": d.amax(-1),
        "rel_l2": d.norm(dim=-1) / l2_norm,
        "rel_linf": d.amax(-1) / inf_norm,
        "identical": (a == b).all(-1),
    }


def collapse_curve(
    model: Any,
    lengths: int | Iterable[SupportsIndex],
    *,
    task: str = "repeat",
    precisions: str | Sequence[str] = ("float32", "bfloat16", "float16"),
    run_in_dtype: bool | None = None,
    batch_size: int = 16,
    share_prefix: bool = True,
    intervention: Intervention = None,
    task_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> CollapseCurve:
    """Collapse curve of ``task`` (docs/science.md §2): per length n in ``lengths``, layer
    ℓ = 0..n_layers and precision, the gap between the last-token residuals of the pair.

    Example:
        >>> curve = collapse_curve(model, [8, 32, 128, 512], task="repeat")
        >>> curve.crossing_length("bfloat16")      # smallest n from which bf16 can't tell
        >>> curve.to_dataframe().query("layer == 2")

    Args:
        model: a TransformerBridge or HookedTransformer (never modified).
        lengths: numbers of items n (the base has n items, the extension n+1 for repeats).
        task: a name from ``oversquash_lens.tasks.pair_tasks()``.
        precisions: dtype names among float32, bfloat16, float16, float64, float8_e4m3fn,
            float8_e5m2 (the 8-bit ones rounded only, see the module docstring).
        run_in_dtype: also run the model natively in each precision: None = where it works
            and is fast (not float16 on CPU, never 8-bit; skipped ones listed with the reason
            in ``unavailable``), True = all of them (error if one fails or is 8-bit), False =
            rounded only.
        batch_size: most sequences per forward pass.
        share_prefix: read prefix sequences from the longer run (exact for causal models).
        intervention: e.g. ``oversquash_lens.glasses.adaptive_temperature`` (see ``applied``).
        task_options: keyword options for the task builder (item, sep, every, prefix, ...).
        progress: show a tqdm bar (default: when more than one forward pass is needed).
    """
    info = _tl.model_info(model)
    ns = _lengths(lengths)
    if isinstance(precisions, (str, torch.dtype)):
        precisions = [precisions]
    if not isinstance(precisions, Iterable):
        raise InvalidArgumentError(f"precisions={precisions!r} must be a dtype name or a list")
    specs = [_precision(p) for p in precisions]
    if not specs:
        raise InvalidArgumentError("precisions=() is empty")
    specs = list(dict.fromkeys(specs))
    if run_in_dtype not in (None, True, False):
        raise InvalidArgumentError(f"run_in_dtype={run_in_dtype!r} must be None, True or False")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size={batch_size!r} must be a positive int")
    if run_in_dtype is True and any(d in FP8 for _, d in specs):
        bad = [n for n, d in specs if d in FP8]
        raise InvalidArgumentError(
            f"run_in_dtype=True with precisions {bad}: {_FP8_NATIVE}; use run_in_dtype=None "
            "(native where possible) or False"
        )
    pairs = [task_pair(model, task, n, **dict(task_options or {})) for n in ns]
    for pair in pairs:
        longest = max(len(pair.base), len(pair.extended))
        if longest > info.n_ctx:
            raise InvalidTokensError(
                f"length n={pair.length} of task {task!r} needs {longest} tokens, more than "
                f"the model's n_ctx={info.n_ctx}"
            )
    runs = _plan(pairs, share_prefix)
    ref_dtype = _tl.model_dtype(model)
    ref_name = _NAMES.get(ref_dtype, str(ref_dtype))
    natives = [(n, d) for n, d in specs if d != ref_dtype] if run_in_dtype is not False else []
    unavailable: dict[str, str] = {n: _FP8_NATIVE for n, d in natives if d in FP8}
    natives = [(n, d) for n, d in natives if d not in FP8]
    if run_in_dtype is None and _tl.model_device(model).type == "cpu":
        # fp16 matmuls are emulated on CPUs (measured ~160x slower than bf16 here): opt-in.
        unavailable.update({n: _CPU_FP16 for n, d in natives if d == torch.float16})
        natives = [(n, d) for n, d in natives if n not in unavailable]
    n_chunks = sum(math.ceil(c / batch_size) for c in _counts(runs).values())
    bar = tqdm(
        total=n_chunks * (1 + len(natives)), desc=f"collapse_curve {task}",
        disable=not (progress if progress is not None else n_chunks * (1 + len(natives)) > 1),
        leave=False,
    )  # fmt: skip
    states: dict[str, dict] = {}
    with bar, applied(model, intervention):
        ref = _execute(model, runs, info, batch_size, bar)
        if run_in_dtype is not False and ref_name in [n for n, _ in specs]:
            states[ref_name] = ref
        for name, dtype in natives:
            try:
                with _tl.cast_temporarily(model, dtype):
                    states[name] = _execute(model, runs, info, batch_size, bar)
            except (RuntimeError, NotImplementedError, TypeError) as exc:
                if run_in_dtype:
                    raise UnsupportedModelError(
                        f"model {info.name!r} cannot run in {name} on {_tl.model_device(model)}"
                        f" ({type(exc).__name__}: {str(exc)[:200]})"
                    ) from exc
                unavailable[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    if run_in_dtype is False:
        unavailable = {name: "run_in_dtype=False" for name, _ in specs}

    frames = []
    layers = torch.arange(info.n_layers + 1)
    for name, dtype in specs:
        sources = [("rounded", ref, dtype)] + (
            [("native", states[name], None)] if name in states else []
        )
        for mode, store, cast in sources:
            a = torch.stack([store[(i, 0)] for i in range(len(pairs))])  # [length, layer, d]
            b = torch.stack([store[(i, 1)] for i in range(len(pairs))])
            if cast is not None:
                a, b = _round(a, cast), _round(b, cast)
            m = _metrics(a, b)
            frame = pd.DataFrame(
                {
                    "length": torch.tensor(ns).repeat_interleave(len(layers)).numpy(),
                    "layer": layers.repeat(len(ns)).numpy(),
                    "precision": name,
                    "mode": mode,
                    **{k: v.flatten().cpu().numpy() for k, v in m.items()},
                }
            )
            frame["collapsed"] = frame["identical"] | (frame["rel_linf"] < resolution(dtype))
            frames.append(frame)
    return CollapseCurve(
        frame=pd.concat(frames, ignore_index=True)[COLUMNS],
        task=task,
        lengths=tuple(ns),
        precisions=tuple(n for n, _ in specs),
        reference_dtype=ref_name,
        n_layers=info.n_layers,
        native=tuple(n for n, _ in specs if n in states),
        unavailable=unavailable,
        model_name=info.name,
        intervention=describe(intervention),
    )


def _counts(runs: list) -> dict[int, int]:
    counts: dict[int, int] = {}
    for toks, _ in runs:
        counts[len(toks)] = counts.get(len(toks), 0) + 1
    return counts
