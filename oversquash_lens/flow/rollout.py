"""Weighted causal paths seen from one target token: attention rollout (Abnar & Zuidema 2020,
PAPER §5) and the Theorem 5.1 over-squashing bound (PAPER §3).

Both are products of one ``n × n`` matrix per layer, read along the target's row only:
``row_ℓ = e_t · X_ℓ ⋯ X_1`` for every depth ℓ = 1..L, where X is the rollout matrix
``A = residual·I + (1 − residual)·mean_heads(α)`` (rows renormalised) or the theorem's
``ᾱ = α/β + I``. A row vector is pushed down through the layers (vector × matrix), never an
``n × n`` product.

Cost, honestly: every depth ℓ needs its own sweep from layer ℓ down to layer 1, so the L rows
take L(L+1)/2 vector-matrix products — O(L²·n²) flops — but each layer's head mean is formed
once (one read of the ``[head, query, key]`` patterns) and all sweeps pass through it together
in one (triangular) matrix product. The full-matrix rollout costs O(L·n³); see
``benchmarks/paths.py`` for measured ratios. ``attention_rollout(..., target="all")`` returns
those full matrices ``[layer, query, key]`` when every row is wanted, and
:func:`rollout_matrices` the per-layer factors ``A_ℓ`` themselves (the capacities of attention
flow, :mod:`.attention_flow`).
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import _tl, _validate
from ..errors import InvalidArgumentError, InvalidPatternError
from ..glasses import Intervention, applied

__all__ = [
    "attention_rollout",
    "attention_rollout_from_model",
    "oversquashing_bound",
    "rollout_matrices",
]

#: Bytes of one query block of patterns (all heads) summed over heads at once.
_BLOCK_BYTES = 8 << 20
#: Column block of the triangular vector-matrix products.
_TRIL_BLOCK = 256

Patterns = (
    Float[Tensor, "layer head_index query_pos key_pos"] | Float[Tensor, "layer query_pos key_pos"]
)


def attention_rollout(
    patterns: Patterns | Any,
    *,
    target: int | str = -1,
    residual: float = 0.5,
    per_head: bool = False,
) -> (
    Float[Tensor, "layer pos"]
    | Float[Tensor, "layer head_index pos"]
    | Float[Tensor, "layer query_pos key_pos"]
    | Float[Tensor, "layer head_index query_pos key_pos"]
):
    """Attention rollout of the target token's row (PAPER §5; Abnar & Zuidema 2020).

    Per layer ``A_ℓ = residual·I + (1 − residual)·mean_heads(α_ℓ)``, rows renormalised; row
    ``ℓ`` of the result is row ``target`` of ``A_{ℓ+1} ⋯ A_1`` (the rollout after ``ℓ+1``
    layers). Each row sums to 1; identity attention gives a one-hot at ``target``.

    Example:
        >>> _, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
        >>> attention_rollout(cache).shape  # [n_layers, pos]

    Args:
        patterns: post-softmax causal attention of one sequence: ``[layer, head, query, key]``,
            ``[layer, query, key]`` (already averaged over heads), ``[1, layer, head, query,
            key]``, or a TransformerLens ActivationCache holding ``hook_pattern`` entries
            (read only). Rows must sum to 1 and put no mass above the diagonal.
        target: query position whose row is rolled out (negative counts from the end), or
            ``"all"`` for the full rollout matrices ``A_{ℓ+1} ⋯ A_1`` (every query row; cost
            O(L·n³) and ``[layer, n, n]`` memory; the single-row path is unchanged).
        residual: weight of the identity (the residual stream) in every layer, in ``[0, 1]``.
        per_head: roll every head index separately through the layers (head h of layer ℓ
            feeds head h of layer ℓ−1); returns ``[layer, head, pos]``.

    Returns:
        ``[layer, pos]`` (or ``[layer, head, pos]``); positions after ``target`` are 0.
        With ``target="all"``: ``[layer, query, key]`` (or ``[layer, head, query, key]``),
        lower-triangular, entry ``[ℓ, q, k]`` equal to the single-row result for ``target=q``.
        Computed in float32 (float64 for float64 input).

    Raises:
        InvalidPatternError: wrong shape or dtype, NaN/inf, rows not summing to 1 (tolerance
            ``max(1e-4, 4·eps(dtype))``), negative entries or mass above the diagonal. What is
            checked is what the result depends on: the head average (each head when
            ``per_head``), on the queries and keys up to ``target``.
    """
    pats, averaged = _as_patterns(patterns)
    if isinstance(residual, bool) or not isinstance(residual, (int, float)):
        raise InvalidArgumentError(f"residual={residual!r} must be a float in [0, 1]")
    if not 0.0 <= float(residual) <= 1.0:
        raise InvalidArgumentError(f"residual={residual!r} must lie in [0, 1]")
    if not isinstance(per_head, bool):
        raise InvalidArgumentError(f"per_head={per_head!r} must be True or False")
    if per_head and averaged:
        raise InvalidArgumentError(
            "per_head=True needs per-head patterns [layer, head, query, key]; got head-averaged "
            f"patterns of shape {tuple(pats.shape[:1] + pats.shape[2:])}"
        )
    dtype = torch.float64 if pats.dtype == torch.float64 else torch.float32
    if isinstance(target, str):
        if target != "all":
            raise InvalidArgumentError(f"target={target!r} must be an int position or 'all'")
        return _full_rollout(pats, float(residual), dtype=dtype, per_head=per_head)
    t = _validate.resolve_index(target, pats.shape[-1], name="target")
    res = float(residual)

    def rollout_step(layer: _Layer) -> Callable[[Tensor], Tensor]:
        inv = 1.0 / (res + (1.0 - res) * layer.row_sums)  # renormalise the rows of A
        mat = layer.matrix if per_head else layer.matrix[0]  # [head, m, m] or [m, m]
        inv = inv if per_head else inv[0]
        return partial(_rollout_apply, mat=mat, inv=inv, res=res, scale=layer.scale)

    return _target_rows(pats, t, rollout_step, dtype=dtype, per_head=per_head)


def rollout_matrices(
    patterns: Patterns | Any,
    *,
    residual: float = 0.5,
    size: int | None = None,
    per_head: bool = False,
) -> Float[Tensor, "layer m m"] | Float[Tensor, "layer head_index m m"]:
    """The per-layer rollout factors ``A_ℓ = diag(1/r) (residual·I + (1 − residual)·mean_heads
    α_ℓ)`` (``r`` the row sums), exactly as :func:`attention_rollout` builds and validates them,
    restricted to the first ``size`` queries and keys (default all).

    Args:
        patterns: as for :func:`attention_rollout` (tensor or ActivationCache).
        residual: weight of the identity, in ``[0, 1]``.
        size: keep positions ``0..size-1`` (causal: a target ``t`` needs ``size = t + 1``).
        per_head: one factor per head (``[layer, head, m, m]``) instead of the head mean.

    Returns:
        ``[layer, m, m]`` (or ``[layer, head, m, m]``), rows summing to 1; float32 (float64 for
        float64 input).
    """
    pats, averaged = _as_patterns(patterns)
    res = _check_residual(residual)
    if per_head and averaged:
        raise InvalidArgumentError("per_head=True needs per-head patterns [layer, head, q, k]")
    n = pats.shape[-1]
    if size is None:
        size = n
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= n:
        raise InvalidArgumentError(f"size={size!r} must be an int in 1..{n}")
    dtype = torch.float64 if pats.dtype == torch.float64 else torch.float32
    mats = [_factor(layer, res, per_head) for layer in _layers(pats, size, dtype, per_head)]
    return torch.stack(mats)


def attention_rollout_from_model(
    model: Any,
    tokens: Any,
    *,
    target: int = -1,
    residual: float = 0.5,
    per_head: bool = False,
    intervention: Intervention = None,
) -> Float[Tensor, "layer pos"] | Float[Tensor, "layer head_index pos"]:
    """:func:`attention_rollout` of one sequence run through ``model`` (patterns captured with
    temporary hooks; the model is left unchanged). ``tokens``: text, ``[pos]`` or ``[1, pos]``.
    ``intervention``: glasses active during the run (e.g. ``functools.partial(sliding_window,
    window=16)``, see ``glasses.applied``); the rollout is then of the patterns they produce."""
    toks = _tl.single_sequence(model, tokens)
    with applied(model, intervention):
        pats = _tl.attention_patterns(model, toks)[0]
    return attention_rollout(pats, target=target, residual=residual, per_head=per_head)


def oversquashing_bound(
    patterns: Patterns | Any,
    *,
    target: int = -1,
    beta: float | Sequence[float] | Float[Tensor, " layer"] | Float[Tensor, "layer pos"] = 1.0,
) -> Float[Tensor, "layer pos"]:
    """The path sum of Theorem 5.1 (PAPER §3), without its constant ``C``.

    ``‖∂y_t/∂v_i^(0)‖ ≤ C · Σ_{paths i=k_0 ≤ … ≤ k_L=t} Π_ℓ ᾱ^(ℓ)_{k_ℓ, k_{ℓ−1}}`` with
    ``ᾱ^(ℓ) = α^(ℓ)/β^(ℓ) + I`` and ``α`` the head-averaged attention. Row ``ℓ`` of the result
    is the sum after ``ℓ+1`` layers, i.e. row ``target`` of ``ᾱ^(ℓ+1) ⋯ ᾱ^(1)``. ``C`` (the
    product of the MLP/value/norm Lipschitz constants) is not included and must be reported
    separately. With ``beta=1`` this is ``2^(ℓ+1)`` times the rollout with ``residual=0.5``;
    with every ``α`` replaced by ``tril(ones)`` it would count the paths of ``(M + I)^L``.

    Args:
        patterns: as for :func:`attention_rollout` (tensor or ActivationCache).
        target: receiving position (negative counts from the end).
        beta: the normalisation scale dividing α (the theorem's β, e.g. the residual's standard
            deviation that the pre-attention norm divides by): a positive float, one value per
            layer ``[layer]``, or one per layer and key position ``[layer, pos]`` (then
            ``ᾱ_{qk} = α_{qk}/β_k + δ_{qk}``).

    Returns:
        ``[layer, pos]`` float64 (values grow like ``(1 + 1/β)^L``); positions after ``target``
        are 0.
    """
    pats, _ = _as_patterns(patterns)
    n_layers, n = pats.shape[0], pats.shape[-1]
    t = _validate.resolve_index(target, n, name="target")
    scale = resolve_beta(beta, n_layers, n)[:, : t + 1].reciprocal().to(pats.device)

    def bound_step(layer: _Layer) -> Callable[[Tensor], Tensor]:
        return partial(_bound_apply, mat=layer.matrix[0], per_key=scale[layer.index] * layer.scale)

    return _target_rows(pats, t, bound_step, dtype=torch.float64, per_head=False)


# --------------------------------------------------------------------------- inputs
def _check_residual(residual: Any) -> float:
    if isinstance(residual, bool) or not isinstance(residual, (int, float)):
        raise InvalidArgumentError(f"residual={residual!r} must be a float in [0, 1]")
    if not 0.0 <= float(residual) <= 1.0:
        raise InvalidArgumentError(f"residual={residual!r} must lie in [0, 1]")
    return float(residual)


def _as_patterns(patterns: Any) -> tuple[Tensor, bool]:
    """``([layer, head, query, key] tensor, was_head_averaged)`` from any accepted input."""
    if _tl.is_activation_cache(patterns):
        batch = _tl.cache_pattern_batch(patterns)
        if batch != 1:
            raise InvalidPatternError(
                f"the ActivationCache holds attention for {batch} sequences; analyses here take "
                "one sequence (run_with_cache on a single prompt)"
            )
        patterns = _tl.patterns_from_cache(patterns)
    if not isinstance(patterns, Tensor):
        raise InvalidPatternError(
            f"patterns={type(patterns).__name__} is neither a tensor nor an ActivationCache"
        )
    patterns = patterns.detach()  # e.g. stacked HF output_attentions: read values, no graph
    shape = tuple(patterns.shape)
    if patterns.ndim == 5 and shape[0] == 1:
        patterns = patterns[0]
    averaged = patterns.ndim == 3
    if averaged:
        patterns = patterns.unsqueeze(1)
    if patterns.ndim != 4 or patterns.shape[-1] != patterns.shape[-2] or 0 in patterns.shape:
        raise InvalidPatternError(
            f"patterns of shape {shape} must be [layer, head, query, key] or [layer, query, key] "
            "for one sequence, with query == key and no empty axis"
        )
    if not patterns.is_floating_point():
        raise InvalidPatternError(f"patterns must be floating point, got dtype {patterns.dtype}")
    return patterns, averaged


def resolve_beta(beta: Any, n_layers: int, n: int) -> Float[Tensor, "layer pos"]:
    """β of :func:`oversquashing_bound` broadcast to ``[layer, pos]`` float64, checked finite
    and positive (also used by the profile to record the β it used)."""
    if isinstance(beta, bool):
        raise InvalidArgumentError(f"beta={beta!r} must be a positive float or a tensor")
    try:
        values = torch.as_tensor(beta, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise InvalidArgumentError(f"beta={beta!r} is not a number or tensor") from None
    if values.ndim == 1 and values.shape[0] == n_layers:
        values = values[:, None]
    if values.ndim not in (0, 2) or (
        values.ndim == 2 and tuple(values.shape) not in ((n_layers, n), (n_layers, 1))
    ):
        raise InvalidArgumentError(
            f"beta of shape {tuple(values.shape)} must be a float, [layer={n_layers}] or "
            f"[layer={n_layers}, pos={n}]"
        )
    if not bool(torch.isfinite(values).all()) or bool((values <= 0).any()):
        raise InvalidArgumentError(f"beta must be finite and > 0, got {_short(values)}")
    return values.expand(n_layers, n)


def _short(t: Tensor) -> str:
    flat = t.flatten().tolist()
    return str(flat[:6])[:-1] + (", ...]" if len(flat) > 6 else "]")


# --------------------------------------------------------------------------- core
@dataclass(frozen=True)
class _Layer:
    """One layer's matrices ``[group, m, m]`` — the head *sum* (group 1, ``scale = 1/head``),
    or every head (group = head, ``scale = 1``) — and the row sums ``[group, m]`` of
    ``scale · matrix``."""

    index: int
    matrix: Tensor  # lower-triangular; multiply by ``scale`` to get the mean / the head
    row_sums: Tensor  # of the mean (or of each head), i.e. already scaled
    scale: float


def _target_rows(
    pats: Tensor,
    t: int,
    make_step: Callable[[_Layer], Callable[[Tensor], Tensor]],
    *,
    dtype: torch.dtype,
    per_head: bool,
) -> Tensor:
    """``out[ℓ] = e_t · X_ℓ ⋯ X_0`` for ℓ = 0..L−1, each layer's X built (and validated) once."""
    n_layers, n_heads, n = pats.shape[0], pats.shape[1], pats.shape[-1]
    m = t + 1  # causal: nothing after the target can reach it
    lead = (n_heads,) if per_head else ()
    start = torch.zeros(*lead, m, dtype=dtype, device=pats.device)
    start[..., t] = 1.0
    buf = None if per_head else torch.empty(1, m, m, dtype=dtype, device=pats.device)
    rows = start[None][:0]  # [sweeps, (head,) m]: one sweep per depth, deepest first
    for j in reversed(range(n_layers)):
        step = make_step(_read_layer(pats, j, m, buf, dtype))
        rows = step(torch.cat([rows, start[None]]))  # all sweeps through layer j in one matmul
    out = torch.zeros(n_layers, *lead, n, dtype=dtype, device=pats.device)
    out[..., :m] = rows.flip(0)
    return out


def _layers(pats: Tensor, m: int, dtype: torch.dtype, per_head: bool) -> Iterator[_Layer]:
    """Every layer read and validated by :func:`_read_layer` (the head sum or every head), in
    order; the head-sum buffer is fresh per layer (callers keep the matrices)."""
    for j in range(pats.shape[0]):
        buf = None if per_head else torch.empty(1, m, m, dtype=dtype, device=pats.device)
        yield _read_layer(pats, j, m, buf, dtype)


def _factor(layer: _Layer, res: float, per_head: bool) -> Tensor:
    """The explicit rollout factor ``A = diag(inv) (res·I + (1−res)·scale·mat)`` of one layer:
    ``[m, m]`` (head mean) or ``[head, m, m]`` (``per_head``)."""
    inv = 1.0 / (res + (1.0 - res) * layer.row_sums)  # [group, m]
    mat = layer.matrix * ((1.0 - res) * layer.scale)
    mat.diagonal(dim1=-2, dim2=-1).add_(res)
    mat.mul_(inv[..., :, None])
    return mat if per_head else mat[0]


def _full_rollout(pats: Tensor, res: float, *, dtype: torch.dtype, per_head: bool) -> Tensor:
    """``out[ℓ] = A_ℓ ⋯ A_0`` for every layer, as full ``[(head,) n, n]`` matrices."""
    out = []
    prod = None
    for layer in _layers(pats, pats.shape[-1], dtype, per_head):
        a = _factor(layer, res, per_head)
        prod = a if prod is None else a @ prod
        out.append(prod)
    return torch.stack(out)


def _read_layer(pats: Tensor, j: int, m: int, buf: Tensor | None, dtype: torch.dtype) -> _Layer:
    """Sum layer ``j`` over heads into ``buf`` (in query blocks, so the head sum streams through
    cache) or keep every head when ``buf`` is None; then validate what the analysis uses: the
    head mean (or each head), restricted to the queries and keys up to the target. The
    statistics the validation needs (row sums, minimum, maximum above the diagonal) are taken
    block by block while each block of the head sum is still in cache."""
    src = pats[j, :, :m, :m]
    n_heads = src.shape[0]
    sums, lows, highs = [], [], []

    def take_stats(q0: int, rows: Tensor) -> None:  # rows: [group, query block, m]
        sums.append(rows.sum(-1))
        lows.append(rows.amin())
        highs.extend(_upper_max(rows, q0))

    if buf is None:
        mats, scale = src.to(dtype), 1.0
        take_stats(0, mats)
    else:
        per_row = n_heads * m * max(pats.element_size(), torch.finfo(dtype).bits // 8)
        size = max(1, _BLOCK_BYTES // per_row)
        for q0 in range(0, m, size):  # head sum; the mean's 1/head is folded into ``scale``
            q1 = min(m, q0 + size)
            torch.sum(src[:, q0:q1].to(dtype), 0, out=buf[0, q0:q1])
            take_stats(q0, buf[:, q0:q1])  # while the block is in cache
        mats, scale = buf, 1.0 / n_heads
    row_sums = torch.cat(sums, dim=-1).mul_(scale)
    lowest, highest = torch.stack(lows).amin(), torch.stack(highs).amax()
    tol = max(1e-4, 4 * torch.finfo(pats.dtype).eps)
    _check_layer(mats, row_sums, j, tol, scale=scale, lowest=lowest, highest=highest)
    return _Layer(j, mats, row_sums, scale)


def _upper_max(rows: Tensor, q0: int) -> list[Tensor]:
    """Largest entries above the diagonal of the query rows ``[q0, q0 + rows)`` (``rows``:
    ``[group, q, m]``), as <= 8 rectangles right of their diagonal square plus the squares."""
    out = []
    q_end, m = q0 + rows.shape[-2], rows.shape[-1]
    step = max(_TRIL_BLOCK, -(-(q_end - q0) // 8))
    for a in range(q0, q_end, step):
        b = min(q_end, a + step)
        part = rows[:, a - q0 : b - q0]
        out.append(torch.triu(part[..., a:b], 1).amax())
        if b < m:
            out.append(part[..., b:].amax())
    return out


def _check_layer(
    mats: Tensor,
    sums: Tensor,
    layer: int,
    tol: float,
    *,
    scale: float,
    lowest: Tensor,
    highest: Tensor,
) -> None:
    """``scale · mats [group, query, key]`` (head mean, or each head): finite, rows summing to 1
    (``sums``, already scaled), non-negative (``lowest`` entry), nothing above the diagonal
    (``highest`` entry there). The slow search for the offending position runs only on error."""
    where = partial(_where, layer, scale != 1.0)
    bad = ~torch.isfinite(sums) | ((sums - 1.0).abs() > tol)
    if bool(bad.any()):
        g, q = (int(v) for v in bad.nonzero()[0])
        row = mats[g, q]
        if not bool(torch.isfinite(row).all()):
            k = int((~torch.isfinite(row)).nonzero()[0, 0])
            value = float(row[k] * scale)
            raise InvalidPatternError(f"patterns contain {value} at {where(g, q)}, key {k}")
        raise InvalidPatternError(
            f"patterns are not row-stochastic: {where(g, q)} sums to {float(sums[g, q]):.6g} "
            f"(expected 1 ± {tol:.1g}); pass post-softmax attention"
        )
    if float(lowest) * scale < -tol:
        g, q, k = (int(v) for v in (mats == lowest).nonzero()[0])
        raise InvalidPatternError(
            f"patterns contain a negative weight {float(lowest) * scale:.6g} at {where(g, q)}, "
            f"key {k}"
        )
    if float(highest) * scale > tol:
        m = mats.shape[-1]
        q = torch.arange(m, device=mats.device)[:, None]
        k = torch.arange(m, device=mats.device)[None, :]
        g, qq, kk = (int(v) for v in ((mats * scale > tol) & (k > q)).nonzero()[0])
        raise InvalidPatternError(
            f"patterns are not causal: {where(g, qq)} puts {float(mats[g, qq, kk] * scale):.6g} "
            f"on key {kk} (mass above the diagonal)"
        )


def _rollout_apply(rows: Tensor, *, mat: Tensor, inv: Tensor, res: float, scale: float) -> Tensor:
    """``rows · A`` for ``A = diag(inv) (res·I + (1−res)·scale·mat)``; ``rows`` is
    ``[sweeps, m]`` (``mat [m, m]``) or ``[sweeps, head, m]`` (``mat [head, m, m]``)."""
    scaled = rows * inv
    if mat.ndim == 3:
        mixed = _tril_matmul(scaled.transpose(0, 1), mat).transpose(0, 1)
    else:
        mixed = _tril_matmul(scaled, mat)
    return res * scaled + (1.0 - res) * scale * mixed


def _bound_apply(rows: Tensor, *, mat: Tensor, per_key: Tensor) -> Tensor:
    """``rows · ᾱ`` for ``ᾱ = mat · diag(per_key) + I``."""
    return _tril_matmul(rows, mat) * per_key + rows


def _where(layer: int, averaged: bool, g: int, q: int) -> str:
    head = "averaged over heads" if averaged else f"head {g}"
    return f"layer {layer}, {head}, query {q}"


def _tril_matmul(rows: Tensor, mat: Tensor) -> Tensor:
    """``rows @ mat`` for a lower-triangular ``mat``, reading only its lower part: column block
    ``[c0, c1)`` gets contributions from rows ``q ≥ c0`` only (about half the work)."""
    m = mat.shape[-1]
    if m <= 2 * _TRIL_BLOCK:
        return rows @ mat
    out = torch.empty_like(rows)
    for c0 in range(0, m, _TRIL_BLOCK):
        c1 = min(m, c0 + _TRIL_BLOCK)
        out[..., c0:c1] = rows[..., c0:] @ mat[..., c0:, c0:c1]
    return out
