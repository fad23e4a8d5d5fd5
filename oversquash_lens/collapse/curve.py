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
from typing import Any, SupportsIndex

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import _tl, _validate
from .._sweep import interrupted
from .._tl.protocol import HookedModel
from ..errors import InvalidArgumentError, InvalidTokensError, UnsupportedModelError
from ..glasses import Intervention, applied, describe
from ..tasks.prompts import Pair, task_pair
from .result import (
    _CPU_FP16,
    _FP8_NATIVE,
    _NAMES,
    COLUMNS,
    FP8,
    CollapseCurve,
    _precision,
    _round,
    resolution,
)

__all__ = ["CollapseCurve", "collapse_curve", "resolution"]


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


def _execute(model: Any, runs: list, info: Any, batch_size: int, bar: Any) -> tuple[dict, bool]:
    """Residual states [layer, d_model] at each requested (key) last position, and whether
    every run finished (False after a KeyboardInterrupt: the states measured before)."""
    out: dict = {}
    try:
        _execute_into(out, model, runs, info, batch_size, bar)
    except KeyboardInterrupt:
        return out, False
    return out, True


def _execute_into(out: dict, model: Any, runs: list, info: Any, batch_size: int, bar: Any) -> None:
    names = [_tl.resid_name(layer) for layer in range(info.n_layers + 1)]
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
        "identical_fraction": (a == b).double().mean(-1),
    }


def collapse_curve(
    model: HookedModel,
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
    _validate.fits_context(ns, info.n_ctx, extra=1)  # the extension has n+1 items: check first
    specs = _specs(precisions)
    if run_in_dtype is not None:
        _validate.flag(run_in_dtype, "run_in_dtype")
    _validate.integer(batch_size, "batch_size", minimum=1)
    _validate.flag(share_prefix, "share_prefix")
    if run_in_dtype is True and any(d in FP8 for _, d in specs):
        bad = [n for n, d in specs if d in FP8]
        raise InvalidArgumentError(
            f"run_in_dtype=True with precisions {bad}: {_FP8_NATIVE}; use run_in_dtype=None "
            "(native where possible) or False"
        )
    options = _validate.options(task_options, "task_options")
    pairs = [task_pair(model, task, n, **options) for n in ns]
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
    natives, unavailable = _native_plan(model, specs, ref_dtype, run_in_dtype)
    states, ref = _run_all(
        model, runs, info, batch_size, natives, unavailable, run_in_dtype, intervention,
        progress, task,
    )  # fmt: skip
    stopped = [n for n, why in unavailable.items() if why.startswith("interrupted")]
    kept = [i for i in range(len(pairs)) if (i, 0) in ref and (i, 1) in ref]
    complete = not stopped and len(kept) == len(pairs)
    if not complete:  # KeyboardInterrupt: keep the lengths measured
        interrupted(f"collapse_curve {task!r}", len(kept), len(pairs))
        ref = {(j, side): ref[(i, side)] for j, i in enumerate(kept) for side in (0, 1)}
        ns, pairs = [ns[i] for i in kept], [pairs[i] for i in kept]
    if run_in_dtype is not False and ref_name in [n for n, _ in specs]:
        states[ref_name] = ref
    if run_in_dtype is False:
        unavailable = {name: "run_in_dtype=False" for name, _ in specs}
    return CollapseCurve(
        frame=_frame(specs, ns, pairs, ref, states, info.n_layers),
        task=task,
        lengths=tuple(ns),
        precisions=tuple(n for n, _ in specs),
        reference_dtype=ref_name,
        n_layers=info.n_layers,
        native=tuple(n for n, _ in specs if n in states),
        unavailable=unavailable,
        model_name=info.name,
        intervention=describe(intervention),
        complete=complete,
    )


def _specs(precisions: Any) -> list[tuple[str, torch.dtype]]:
    """``(name, dtype)`` per requested precision, deduplicated, in the given order."""
    if isinstance(precisions, (str, torch.dtype)):
        precisions = [precisions]
    if not isinstance(precisions, Iterable):
        raise InvalidArgumentError(f"precisions={precisions!r} must be a dtype name or a list")
    specs = [_precision(p) for p in precisions]
    if not specs:
        raise InvalidArgumentError("precisions=() is empty")
    return list(dict.fromkeys(specs))


def _native_plan(
    model: Any, specs: list, ref_dtype: torch.dtype, run_in_dtype: bool | None
) -> tuple[list[tuple[str, torch.dtype]], dict[str, str]]:
    """The precisions to run the model in natively, and why the others are not."""
    natives = [(n, d) for n, d in specs if d != ref_dtype] if run_in_dtype is not False else []
    unavailable: dict[str, str] = {n: _FP8_NATIVE for n, d in natives if d in FP8}
    natives = [(n, d) for n, d in natives if d not in FP8]
    if run_in_dtype is None and _tl.model_device(model).type == "cpu":
        # fp16 matmuls are emulated on CPUs (measured ~160x slower than bf16 here): opt-in.
        unavailable.update({n: _CPU_FP16 for n, d in natives if d == torch.float16})
        natives = [(n, d) for n, d in natives if n not in unavailable]
    return natives, unavailable


def _run_all(
    model: Any, runs: list, info: Any, batch_size: int, natives: list, unavailable: dict,
    run_in_dtype: bool | None, intervention: Intervention, progress: bool | None, task: str,
) -> tuple[dict[str, dict], dict]:  # fmt: skip
    """The reference run and one run per native precision (failures recorded, or raised
    when ``run_in_dtype=True``), under ``intervention``, with one progress bar."""
    n_chunks = sum(math.ceil(c / batch_size) for c in _counts(runs).values())
    total = n_chunks * (1 + len(natives))
    bar = tqdm(total=total, desc=f"collapse_curve {task}",
               disable=not _validate.progress_flag(progress, total > 1), leave=False)  # fmt: skip
    states: dict[str, dict] = {}
    with bar, applied(model, intervention):
        ref, complete = _execute(model, runs, info, batch_size, bar)
        for name, dtype in natives:
            if not complete:  # interrupted: no further runs
                unavailable[name] = "interrupted (KeyboardInterrupt)"
                continue
            try:
                with _tl.cast_temporarily(model, dtype):
                    native, complete = _execute(model, runs, info, batch_size, bar)
                if complete:
                    states[name] = native
                else:
                    unavailable[name] = "interrupted (KeyboardInterrupt)"
            except (RuntimeError, NotImplementedError, TypeError) as exc:
                if run_in_dtype:
                    raise UnsupportedModelError(
                        f"model {info.name!r} cannot run in {name} on {_tl.model_device(model)}"
                        f" ({type(exc).__name__}: {str(exc)[:200]})"
                    ) from exc
                unavailable[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return states, ref


def _frame(
    specs: list, ns: list[int], pairs: Sequence[Pair], ref: dict, states: dict, n_layers: int
) -> pd.DataFrame:
    """The long-format table (:data:`COLUMNS`): every metric per length, layer, precision and
    mode (rounded from the reference run, or native)."""
    frames = []
    layers = torch.arange(n_layers + 1)
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
    return pd.DataFrame(pd.concat(frames, ignore_index=True)[COLUMNS])


def _counts(runs: list) -> dict[int, int]:
    counts: dict[int, int] = {}
    for toks, _ in runs:
        counts[len(toks)] = counts.get(len(toks), 0) + 1
    return counts
