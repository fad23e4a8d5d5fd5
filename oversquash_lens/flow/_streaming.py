"""The streaming machinery behind :mod:`.rollout`: per-layer head averages read in query
blocks that fit in cache, the validation statistics taken while a block is hot, the target-row
propagation and a blocked lower-triangular matmul (docs/science.md §5: only the target row is
propagated, O(L·n²), never the full products).

``sinks`` (from ``learned_sinks``, resolved by :func:`oversquash_lens._tl.cache.
resolve_learned_sinks`) says how rows summing to less than 1 are read: ``"none"`` refuses them,
``"keep"`` accepts rows summing to ≤ 1 and keeps ``1 − Σ_j α_ij`` as the mass of a learned sink
(an absorbing node: no row renormalisation), ``"renormalize"`` divides every head's rows by their
sums before the head mean (docs/science.md, "Learned attention sinks")."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from .._tl.cache import sub_stochastic_hint
from ..errors import InvalidPatternError

#: Bytes of one query block of patterns (all heads) summed over heads at once.
_BLOCK_BYTES = 8 << 20
#: Column block of the triangular vector-matrix products.
_TRIL_BLOCK = 256


@dataclass(frozen=True)
class _Layer:
    """One layer's matrices ``[group, m, m]`` — the head *sum* (group 1, ``scale = 1/head``),
    or every head (group = head, ``scale = 1``) — and the row sums ``[group, m]`` of
    ``scale · matrix``."""

    index: int
    matrix: Tensor  # lower-triangular; multiply by ``scale`` to get the mean / the head
    row_sums: Tensor  # of the mean (or of each head), i.e. already scaled
    scale: float
    #: learned-sink mass ``1 − row_sums`` (clamped at 0) per row with ``sinks="keep"``, else 0
    sink: Tensor | float = 0.0

    @property
    def total(self) -> Tensor:
        """Row sums with the learned sink's mass included (≈ 1 with ``sinks="keep"``): what
        the rollout renormalises by, so mass sent to the sink is lost (absorbed), not spread."""
        return self.row_sums + self.sink


def _target_rows(
    pats: Tensor,
    t: int,
    make_step: Callable[[_Layer], Callable[[Tensor], Tensor]],
    *,
    dtype: torch.dtype,
    per_head: bool,
    sinks: str = "none",
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
        step = make_step(_read_layer(pats, j, m, buf, dtype, sinks))
        rows = step(torch.cat([rows, start[None]]))  # all sweeps through layer j in one matmul
    out = torch.zeros(n_layers, *lead, n, dtype=dtype, device=pats.device)
    out[..., :m] = rows.flip(0)
    return out


def _layers(
    pats: Tensor, m: int, dtype: torch.dtype, per_head: bool, sinks: str = "none"
) -> Iterator[_Layer]:
    """Every layer read and validated by :func:`_read_layer` (the head sum or every head), in
    order; the head-sum buffer is fresh per layer (callers keep the matrices)."""
    for j in range(pats.shape[0]):
        buf = None if per_head else torch.empty(1, m, m, dtype=dtype, device=pats.device)
        yield _read_layer(pats, j, m, buf, dtype, sinks)


def _factor(layer: _Layer, res: float, per_head: bool) -> Tensor:
    """The explicit rollout factor ``A = diag(inv) (res·I + (1−res)·scale·mat)`` of one layer:
    ``[m, m]`` (head mean) or ``[head, m, m]`` (``per_head``)."""
    inv = 1.0 / (res + (1.0 - res) * layer.total)  # [group, m]
    mat = layer.matrix * ((1.0 - res) * layer.scale)
    mat.diagonal(dim1=-2, dim2=-1).add_(res)
    mat.mul_(inv[..., :, None])
    return mat if per_head else mat[0]


def _full_rollout(
    pats: Tensor, res: float, *, dtype: torch.dtype, per_head: bool, sinks: str = "none"
) -> Tensor:
    """``out[ℓ] = A_ℓ ⋯ A_0`` for every layer, as full ``[(head,) n, n]`` matrices."""
    out = []
    prod = None
    for layer in _layers(pats, pats.shape[-1], dtype, per_head, sinks):
        a = _factor(layer, res, per_head)
        prod = a if prod is None else a @ prod
        out.append(prod)
    return torch.stack(out)


def _read_layer(
    pats: Tensor,
    j: int,
    m: int,
    buf: Tensor | None,
    dtype: torch.dtype,
    sinks: str = "none",
    label: int | None = None,
) -> _Layer:
    """Sum layer ``j`` over heads into ``buf`` (in query blocks, so the head sum streams through
    cache) or keep every head when ``buf`` is None; then validate the head mean and every head
    (an error in one head can cancel in the mean), on the queries and keys up to the target. The
    statistics the validation needs (row sums, minimum, maximum above the diagonal) are taken
    block by block while each block of the head sum is still in cache. With learned sinks every
    head's rows are first checked to sum to at most ``1 + tol`` (a sink cannot hide a head
    above 1 in the mean), and with ``sinks="renormalize"`` divided by their sums. ``label``:
    the layer number error messages name (default ``j``)."""
    src = pats[j, :, :m, :m]
    name = j if label is None else label
    n_heads = src.shape[0]
    sums, lows, highs = [], [], []
    tol = max(1e-4, 4 * torch.finfo(pats.dtype).eps)

    def read(q0: int, q1: int) -> Tensor:  # query rows [q0, q1) of every head, in ``dtype``
        rows = src[:, q0:q1].to(dtype)
        if sinks != "none":  # every head's rows, not only their mean, must sum to <= 1
            rows = _sub_stochastic(rows, name, q0, tol, divide=sinks == "renormalize")
        return rows

    def take_stats(q0: int, rows: Tensor) -> None:  # rows: [group, query block, m]
        sums.append(rows.sum(-1))
        lows.append(rows.amin())
        highs.extend(_upper_max(rows, q0))

    keep = sinks == "keep"
    heads: list[list[Tensor]] = [[], [], []]  # per-head row sums, minima, maxima above diagonal
    if buf is None:
        mats, scale = read(0, m), 1.0
        take_stats(0, mats)
    else:
        per_row = n_heads * m * max(pats.element_size(), torch.finfo(dtype).bits // 8)
        size = max(1, _BLOCK_BYTES // per_row)
        for q0 in range(0, m, size):  # head sum; the mean's 1/head is folded into ``scale``
            q1 = min(m, q0 + size)
            rows = read(q0, q1)
            torch.sum(rows, 0, out=buf[0, q0:q1])
            take_stats(q0, buf[:, q0:q1])  # while the block is in cache
            heads[0].append(rows.sum(-1))  # every head too: errors can cancel in the mean
            heads[1].append(rows.amin())
            heads[2].extend(_upper_max(rows, q0))
        mats, scale = buf, 1.0 / n_heads
    row_sums = torch.cat(sums, dim=-1).mul_(scale)
    lowest, highest = torch.stack(lows).amin(), torch.stack(highs).amax()
    if buf is not None:  # every head first: its error is named there, and valid heads make
        _check_heads(lambda: read(0, m), heads, name, tol, keep)  # a valid mean
    _check_layer(mats, row_sums, name, tol, scale=scale, lowest=lowest, highest=highest, keep=keep)
    sink = (1.0 - row_sums).clamp_(min=0.0) if keep else 0.0
    return _Layer(name, mats, row_sums, scale, sink)


def _check_heads(
    every_head: Callable[[], Tensor], heads: list[list[Tensor]], layer: int, tol: float,
    keep: bool,
) -> None:  # fmt: skip
    """Each head of a layer from its block statistics ``heads`` (row sums, minima, maxima
    above the diagonal); only on error is ``every_head()`` — the ``[head, query, key]`` rows
    as read — built to locate it."""
    head_sums = torch.cat(heads[0], dim=-1)
    lowest, highest = torch.stack(heads[1]).amin(), torch.stack(heads[2]).amax()
    off = (head_sums - 1.0) if keep else (head_sums - 1.0).abs()
    bad = bool((~torch.isfinite(head_sums) | (off > tol)).any())
    if bad or float(lowest) < -tol or float(highest) > tol:
        _check_layer(
            every_head(), head_sums, layer, tol, scale=1.0, lowest=lowest, highest=highest,
            keep=keep,
        )  # fmt: skip


def _sub_stochastic(rows: Tensor, layer: int, q0: int, tol: float, *, divide: bool) -> Tensor:
    """``rows [head, q, m]`` (queries from ``q0``), after checking that every row sum is finite
    and at most ``1 + tol`` (a row above 1 is not attention with a learned sink); with
    ``divide`` also above 0 (a row without mass on any key cannot be renormalised), and the
    rows divided by their sums."""
    sums = rows.sum(-1, keepdim=True)
    bad = ~torch.isfinite(sums) | (sums > 1.0 + tol)
    if divide:
        bad |= sums <= 0
    if bool(bad.any()):
        g, q, _ = (int(v) for v in bad.nonzero()[0])
        total = float(sums[g, q, 0])
        where = _where(layer, False, g, q0 + q)
        if not torch.isfinite(sums[g, q, 0]):
            raise InvalidPatternError(f"patterns contain {total} at {where}")
        if total > 1.0:
            raise InvalidPatternError(
                f"patterns are not (sub-)stochastic: {where} sums to {total:.6g} > 1 (expected "
                f"<= 1 + {tol:.1g}, the rest being a learned sink's); pass post-softmax attention"
            )
        raise InvalidPatternError(
            f"{where} sums to {total:.6g}: no mass on any key (all of it on the learned sink), "
            "so learned_sinks='renormalize' cannot renormalise it; use learned_sinks='keep'"
        )
    return rows / sums if divide else rows


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
    keep: bool = False,
) -> None:
    """``scale · mats [group, query, key]`` (head mean, or each head): finite, rows summing to 1
    (``sums``, already scaled; with ``keep`` to at most 1, the rest being a learned sink's),
    non-negative (``lowest`` entry), nothing above the diagonal (``highest`` entry there). The
    slow search for the offending position runs only on error."""
    where = partial(_where, layer, scale != 1.0)
    off = (sums - 1.0) if keep else (sums - 1.0).abs()
    bad = ~torch.isfinite(sums) | (off > tol)
    if bool(bad.any()):
        g, q = (int(v) for v in bad.nonzero()[0])
        row = mats[g, q]
        if not bool(torch.isfinite(row).all()):
            k = int((~torch.isfinite(row)).nonzero()[0, 0])
            value = float(row[k] * scale)
            raise InvalidPatternError(f"patterns contain {value} at {where(g, q)}, key {k}")
        total = float(sums[g, q])
        if total < 1.0:  # only without ``keep``: this is what attention with a learned sink does
            raise InvalidPatternError(
                f"patterns are not row-stochastic: {where(g, q)} sums to "
                + sub_stochastic_hint(total)
            )
        expected = f"<= 1 + {tol:.1g}, the rest a learned sink's" if keep else f"1 ± {tol:.1g}"
        raise InvalidPatternError(
            f"patterns are not row-stochastic: {where(g, q)} sums to {total:.6g} > 1 "
            f"(expected {expected}); pass post-softmax attention"
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
