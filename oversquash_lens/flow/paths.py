"""Causal path counts: how many routes information has from each token to the target (PAPER §3).

In a decoder-only transformer every layer links query ``q`` to every key ``k ≤ q`` (the causal
mask, self-loop included): ``M = tril(ones(n, n))``. A path from source ``i`` to target ``t``
through ``L`` layers is a chain ``i = k_0 ≤ k_1 ≤ … ≤ k_L = t`` and their number is

    (M^L)_{t,i} = C(d + L − 1, L − 1),   d = t − i ≥ 0   (0 when i > t).

Counting the residual connection as an edge of its own uses ``(M + I)^L``: a step either stays
(two parallel edges: attention self-loop and residual) or moves strictly forward. Choosing the
``k`` moving steps of the ``L`` and splitting the distance ``d`` into ``k`` positive parts gives

    ((M + I)^L)_{t,i} = Σ_{k=1..min(L,d)} C(L, k) · 2^(L−k) · C(d − 1, k − 1),   2^L when d = 0.

Its generating function over ``d`` is ``((2 − x)/(1 − x))^L``, which satisfies
``(2 − x)(1 − x) F' = L F`` and hence the three-term recurrence used for exact integers::

    f_0 = 2^L,  f_1 = L·2^(L−1),  f_{d+1} = ((3d + L) f_d − (d − 1) f_{d−1}) / (2(d + 1)).

Both conventions therefore cost O(n) big-integer steps (no n×n matrix, no per-position sum);
log mode uses ``lgamma`` (and a chunked ``logsumexp`` over ``k`` for the residual variant), so
it works far beyond where the integers become unwieldy.

Sliding windows (``window=w``, docs/science.md §7): every layer links query ``q`` to keys
``q − w < k ≤ q`` only — the banded matrix ``B`` — so a step moves ``0..w−1`` positions and
``(B^L)_{t,i}`` is the coefficient of ``x^d`` in ``((1 − x^w)/(1 − x))^L``, or in
``((2 − x − x^w)/(1 − x))^L`` with residual edges (the zero step counted twice). It is 0 exactly
when ``d > L·(w − 1)`` (residual edges move nothing further) and equals the unwindowed count
when ``w > d``. The same ODE argument gives (``f`` for ``B^L``, ``g`` for ``(B + I)^L``,
entries at negative distance 0)

    (d+1) f_{d+1} = (d+L) f_d + (d−w+1−Lw) f_{d−w+1} + (L(w−1)−d+w) f_{d−w}
    2(d+1) g_{d+1} = (3d+L) g_d − (d−1) g_{d−1} + (d−w+1−Lw) g_{d−w+1} + (L(w−1)−d+w) g_{d−w}

(exact integer divisions), again O(n) big-integer steps. Log mode takes ``math.log`` of these
exact integers (correctly rounded, never a cancelling float sum); ``window >= target + 1`` uses
the unwindowed code above, bit for bit.

Example:
    >>> path_counts(5, 3)  # PAPER §3: the first of 5 tokens has 15 paths through 3 layers
    [15, 10, 6, 3, 1]
    >>> path_counts(5, 3, residual_edges=True)[-1]  # the target itself: 2^L
    8
    >>> path_counts(8, 2, window=3)  # 2 layers of 3 keys reach back 2·(3−1) = 4 positions
    [0, 0, 0, 1, 2, 3, 2, 1]
"""

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import _validate
from ..errors import InvalidArgumentError

__all__ = ["path_counts", "MAX_TOKENS", "MAX_LAYERS"]

#: Largest ``n_tokens`` accepted (a 10**7-entry float64 tensor is 80 MB; beyond, refuse
#: before allocating rather than fail inside torch).
MAX_TOKENS = 10**7
#: Largest ``n_layers`` accepted.
MAX_LAYERS = 10**6
#: Memory the exact integers may take (estimated from the largest count's bit length).
_EXACT_BYTES = 1 << 30
#: Terms ``(target + 1) · n_layers`` of the residual-variant logsumexp (~30 s at 10**9).
_LOG_WORK = 10**9
#: Entries of the [positions, k] table evaluated at once by the residual-variant logsumexp.
_LOG_CHUNK = 1 << 21
_LOG2 = math.log(2.0)


def path_counts(
    n_tokens: int,
    n_layers: int,
    *,
    target: int = -1,
    residual_edges: bool = False,
    log: bool = False,
    window: Any = None,
) -> list[int] | Float[Tensor, " pos"]:
    """Number of causal paths from every source position to ``target`` (PAPER §3, Thm 5.1).

    Example:
        >>> path_counts(12, 5)[0]  # first token of 12, 5 layers
        1365
        >>> path_counts(100_000, 200, log=True).shape  # natural logs, float64
        torch.Size([100000])

    Args:
        n_tokens: sequence length ``n`` (positions ``0..n-1``).
        n_layers: number of causal layers ``L`` (0 gives the identity: one path, to itself).
        target: the receiving position (negative counts from the end; default the last token).
        residual_edges: count the residual connection as an edge separate from the attention
            self-loop, i.e. ``(M + I)^L`` instead of ``M^L`` (the target then has ``2^L`` paths).
        log: return natural logs as a float64 tensor (``-inf`` where the count is 0) instead of
            exact Python integers.
        window: every layer attends to the last ``window`` keys only (``i − w < j ≤ i``, see
            :func:`oversquash_lens.sliding_window`): powers of the banded lower-triangular
            matrix; sources more than ``n_layers·(window − 1)`` before the target get 0.
            None (default) = the full causal mask.

    Returns:
        ``list[int]`` of length ``n_tokens`` (exact, arbitrarily large), or a ``[pos]`` float64
        tensor of ``log(count)`` when ``log=True``. Positions after ``target`` have 0 paths.
    """
    n = _validate.integer(
        n_tokens, "n_tokens", minimum=1, maximum=MAX_TOKENS,
        hint=" (path_counts keeps one value per position; MAX_TOKENS bounds its memory)",
    )  # fmt: skip
    layers = _validate.integer(n_layers, "n_layers", minimum=0, maximum=MAX_LAYERS)
    t = _validate.resolve_index(target, n, name="target")
    _validate.flag(residual_edges, "residual_edges")
    _validate.flag(log, "log")
    w = None if window is None else _validate.integer(window, "window", minimum=1)
    _check_cost(n, t, layers, residual_edges, w if w is not None and w <= t else None, log)
    if w is not None and w <= t:  # a window narrower than the distances involved
        by_distance = _windowed(t, layers, w, residual_edges)
        if log:
            logs = [math.log(c) if c else -math.inf for c in reversed(by_distance)]
            return torch.tensor(logs + [-math.inf] * (n - t - 1), dtype=torch.float64)
        return by_distance[::-1] + [0] * (n - t - 1)
    if log:
        distances = torch.arange(t, -1, -1, dtype=torch.float64)  # d = t - i for i = 0..t
        logs = _log_residual(distances, layers) if residual_edges else _log_plain(distances, layers)
        tail = torch.full((n - t - 1,), -math.inf, dtype=torch.float64)
        return torch.cat([logs, tail])
    by_distance = _residual(t, layers) if residual_edges else _plain(t, layers)
    return by_distance[::-1] + [0] * (n - t - 1)


def _check_cost(n: int, t: int, layers: int, residual: bool, w: int | None, log: bool) -> None:
    """Refuse, before any work, a call whose exact integers (also behind windowed logs) would
    not fit in :data:`_EXACT_BYTES` or whose residual logsumexp exceeds :data:`_LOG_WORK`
    terms."""
    if not log or w is not None:
        # every count is at most 2^L·C(t + L − 1, L − 1) (C(t + L − 1, L − 1) without residual
        # edges), and under a window at most (w + 1)^L (w^L): a row sum of (B + I)^L (B^L)
        lg = math.lgamma(t + layers) - math.lgamma(layers) - math.lgamma(t + 1) if layers else 0.0
        bits = lg / _LOG2 + (layers if residual else 0)
        if w is not None:
            bits = min(bits, layers * math.log2(w + 1 if residual else w))
        size = 8 * n + (t + 1) * (28 + bits / 8)  # list slots + int objects (upper bound)
        if size > _EXACT_BYTES:
            raise InvalidArgumentError(
                f"path_counts(n_tokens={n}, n_layers={layers}): the exact counts (up to "
                f"{bits:.3g} bits each) would take about {size / 2**30:.3g} GiB; pass "
                "log=True (natural logs, float64), fewer tokens or an earlier target"
            )
    elif residual and (t + 1) * layers > _LOG_WORK:
        raise InvalidArgumentError(
            f"path_counts(n_tokens={n}, n_layers={layers}, residual_edges=True, log=True) sums "
            f"{(t + 1) * layers:.3g} terms (more than {_LOG_WORK:.0e}: minutes of work); "
            "pass fewer tokens, an earlier target or fewer layers"
        )


def _plain(d_max: int, layers: int) -> list[int]:
    """``C(d + L − 1, L − 1)`` for d = 0..d_max, by the ratio recurrence (exact ints)."""
    if layers == 0:
        return [1] + [0] * d_max
    out = [1]
    for d in range(d_max):
        out.append(out[-1] * (d + layers) // (d + 1))
    return out


def _residual(d_max: int, layers: int) -> list[int]:
    """Entries of ``(M + I)^L`` at distance d = 0..d_max, by the three-term recurrence."""
    out = [1 << layers]
    if d_max >= 1:
        out.append(layers << layers >> 1)  # L · 2^(L-1), exact also for L = 0
    for d in range(1, d_max):
        numerator = (3 * d + layers) * out[d] - (d - 1) * out[d - 1]
        out.append(numerator // (2 * (d + 1)))
    return out


def _windowed(d_max: int, layers: int, w: int, residual: bool) -> list[int]:
    """Entries of ``B^L`` (or ``(B + I)^L``) at distance d = 0..d_max for a ``w``-key band, by
    the recurrences of the module docstring; 0 beyond the reach ``L·(w − 1)``."""
    if layers == 0:
        return [1] + [0] * d_max
    reach = min(d_max, layers * (w - 1))
    out = [1 << layers if residual else 1]

    def f(k: int) -> int:
        return out[k] if k >= 0 else 0

    for d in range(reach):
        band = (d - w + 1 - layers * w) * f(d - w + 1) + (layers * (w - 1) - d + w) * f(d - w)
        if residual:
            out.append(((3 * d + layers) * out[d] - (d - 1) * f(d - 1) + band) // (2 * (d + 1)))
        else:
            out.append(((d + layers) * out[d] + band) // (d + 1))
    return out + [0] * (d_max - reach)


def _log_plain(d: Float[Tensor, " pos"], layers: int) -> Float[Tensor, " pos"]:
    if layers == 0:
        return torch.where(d == 0, 0.0, -math.inf).to(torch.float64)
    # log C(d + L - 1, L - 1)
    return torch.lgamma(d + layers) - math.lgamma(layers) - torch.lgamma(d + 1)


def _log_residual(d: Float[Tensor, " pos"], layers: int) -> Float[Tensor, " pos"]:
    """logsumexp over k of log[C(L,k) 2^(L-k) C(d-1,k-1)], chunked over positions.

    Every argument is an integer, so ``log m!`` is tabulated once and gathered."""
    if layers == 0:
        return torch.where(d == 0, 0.0, -math.inf).to(torch.float64)
    d_int = d.long()
    top = max(int(d_int.max()), layers) + 1
    log_fact = torch.lgamma(torch.arange(1, top + 1, dtype=torch.float64))  # log m!, m=0..top-1
    k = torch.arange(1, layers + 1)
    # log C(L,k) + (L-k) log 2 - log (k-1)!   (the k-only part of every term)
    head = log_fact[layers] - log_fact[k] - log_fact[layers - k] + (layers - k).double() * _LOG2
    head = head - log_fact[k - 1]
    out = torch.empty_like(d)
    step = max(1, _LOG_CHUNK // layers)
    for start in range(0, d.numel(), step):
        dd = d_int[start : start + step, None]
        gap = dd - k[None, :]  # d - k >= 0 where the term exists
        terms = head[None, :] + log_fact[(dd - 1).clamp(min=0)] - log_fact[gap.clamp(min=0)]
        out[start : start + step] = torch.logsumexp(terms.masked_fill(gap < 0, -math.inf), dim=1)
    out[d_int == 0] = layers * _LOG2
    return out
