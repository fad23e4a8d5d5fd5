"""Synthetic reproductions of the collapse numbers in docs/science.md §2 (no language model needed).

1. Equal-logit softmax collision: the weight 1/n of n equal logits rounds to the same bf16
   number as 1/(n+1) first at n = 190 (round-to-nearest-even); per band of n the fraction
   of colliding n is 0%, ~17%, 50%, 75% (:func:`softmax_collisions`).
2. Softmax "total variation" (Fig 9): x ~ U[0,1]^n vs x with U[0, 0.1] noise added to its
   first 200 entries; the distance between the softmaxes falls like 1/n
   (:func:`softmax_tv_gap`, :func:`crossing`). The paper's numbers (≈0.026 at n=500) are the
   L1 distance Σ|p−q|, i.e. twice the textbook TV ½Σ|p−q|; ``half=False`` is the default.
3. One attention layer with Gaussian q/k/v and the last token repeated (Fig 10,
   :func:`toy_collapse_gap`), for no positional encoding, sinusoidal, RoPE and ALiBi.

Exact construction of 3 (documented because the paper does not spell it out): for every seed
and token i, q_i, k_i, v_i ~ N(0, qk_std² I_d) (v: std 1), each v_i normalised to unit L2
norm; sequence v = [t_1..t_n], v* = [t_1..t_n, t_n] (token n repeated, at position n+1);
one causal head, logits q·k/√d read at the last query (the query of t_n at position n or
n+1); positions enter as: ``"sinusoidal"`` pe_scale·PE(pos) (Vaswani table) added to q and k;
``"rope"`` q, k rotated by their position (base 10000); ``"alibi"`` logit − slope·distance.
The gap is the L1 distance between the two last-token attention outputs, averaged over seeds.
"""

import math
from collections.abc import Iterable, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .. import _validate
from ..errors import InvalidArgumentError

__all__ = [
    "bf16_collision_n",
    "softmax_collisions",
    "softmax_tv_gap",
    "toy_collapse_gap",
    "crossing",
    "POSITIONAL",
]

POSITIONAL = ("none", "sinusoidal", "rope", "alibi")


def _check_lengths(lengths: Sequence[int], minimum: int = 1) -> list[int]:
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Iterable):
        raise InvalidArgumentError(f"lengths={lengths!r} must be a list of ints")
    out = list(lengths)
    if not out:
        raise InvalidArgumentError("lengths=[] is empty")
    for n in out:
        if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
            raise InvalidArgumentError(f"lengths contains {n!r}; need ints >= {minimum}")
    return out


# --------------------------------------------------------------------------- 1. collisions
def _collides(max_n: int, dtype: torch.dtype) -> Tensor:
    n = torch.arange(1, max_n + 1, dtype=torch.float64)
    # float64 -> target dtype is one round-to-nearest-even step (1/n is exact enough in f64).
    return (1.0 / n).to(dtype) == (1.0 / (n + 1)).to(dtype)


def bf16_collision_n(*, dtype: str | torch.dtype = "bfloat16", max_n: int = 1 << 16) -> int:
    """First n with round(1/n) == round(1/(n+1)) in ``dtype``: n equal logits and n+1 equal
    logits give the *same* softmax weight (docs/science.md §2: 190 in bfloat16)."""
    dt = _validate.resolve_dtype(dtype) or torch.bfloat16
    hits = _collides(max_n, dt).nonzero()
    if hits.numel() == 0:
        raise InvalidArgumentError(f"no collision below max_n={max_n} in {dt}")
    return int(hits[0, 0]) + 1


def softmax_collisions(
    bands: Sequence[tuple[int, int]] = ((1, 128), (128, 256), (256, 512), (512, 1024)),
    *,
    dtype: str | torch.dtype = "bfloat16",
) -> pd.DataFrame:
    """Fraction of n in each half-open band [lo, hi) whose equal-logit weight 1/n collides
    with 1/(n+1) after rounding to ``dtype`` (docs/science.md §2: 0, ~0.17, ~0.5, ~0.75 in bf16)."""
    dt = _validate.resolve_dtype(dtype) or torch.bfloat16
    for lo, hi in bands:
        if not 1 <= lo < hi:
            raise InvalidArgumentError(f"band ({lo}, {hi}) must satisfy 1 <= lo < hi")
    hit = _collides(max(hi for _, hi in bands), dt)
    rows = [
        {"lo": lo, "hi": hi, "fraction": float(hit[lo - 1 : hi - 1].double().mean())}
        for lo, hi in bands
    ]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 2. softmax TV
def softmax_tv_gap(
    lengths: Sequence[int],
    *,
    n_noisy: int = 200,
    noise: float = 0.1,
    n_seeds: int = 100,
    seed: int = 0,
    half: bool = False,
) -> Float[Tensor, " length"]:
    """Mean over seeds of Σ|softmax(x) − softmax(x')| (×½ if ``half``) with x ~ U[0,1]^n and
    x' = x + U[0, noise] on the first ``n_noisy`` entries (docs/science.md §2, Fig 9). The same
    draws are reused across lengths (prefixes), so the curve is smooth in n."""
    ns = _check_lengths(lengths, n_noisy)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_seeds, max(ns), generator=gen, dtype=torch.float64)
    bump = noise * torch.rand(n_seeds, n_noisy, generator=gen, dtype=torch.float64)
    out = []
    for n in ns:
        a = x[:, :n]
        b = torch.cat([a[:, :n_noisy] + bump, a[:, n_noisy:]], dim=1)
        d = (torch.softmax(a, -1) - torch.softmax(b, -1)).abs().sum(-1)
        out.append(d.mean() * (0.5 if half else 1.0))
    return torch.stack(out)


# --------------------------------------------------------------------------- 3. toy layer
def _sinusoidal(pos: Tensor, d: int) -> Tensor:
    freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None] * freq[None]
    return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)


def _rope(x: Tensor, pos: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    ang = pos[:, None] * 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)[None]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()], -1)


def _last_output(
    q: Tensor, k: Tensor, v: Tensor, positional: str, slope: float, pe_scale: float
) -> Tensor:
    """Causal attention output of the last query ``q`` [seed, d] over k, v [seed, n, d]."""
    n, d = k.shape[1], k.shape[2]
    pos = torch.arange(n, dtype=torch.float64)
    if positional == "sinusoidal":
        pe = pe_scale * _sinusoidal(pos, d)
        q, k = q + pe[-1], k + pe
    elif positional == "rope":
        q, k = _rope(q, pos[-1:]), _rope(k, pos)
    logits = torch.einsum("sd,snd->sn", q, k) / math.sqrt(d)
    if positional == "alibi":
        logits = logits - slope * (n - 1 - pos)
    return torch.einsum("sn,snd->sd", torch.softmax(logits, dim=-1), v)


def toy_collapse_gap(
    lengths: Sequence[int],
    *,
    positional: str = "none",
    d: int = 64,
    n_seeds: int = 32,
    seed: int = 0,
    qk_std: float = 1.0,
    alibi_slope: float = 2.0**-8,
    pe_scale: float = 1.0,
) -> Float[Tensor, " length"]:
    """Mean L1 gap ‖y_n − y*_{n+1}‖₁ between the last-token outputs of one random attention
    head on [t_1..t_n] and [t_1..t_n, t_n] (docs/science.md §2, Fig 10; construction in the module
    docstring). One set of draws per seed is shared by all lengths (prefixes)."""
    if positional not in POSITIONAL:
        raise InvalidArgumentError(f"positional={positional!r} is not one of {list(POSITIONAL)}")
    ns = _check_lengths(lengths)
    gen = torch.Generator().manual_seed(seed)
    shape = (n_seeds, max(ns), d)
    q = qk_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    k = qk_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    out = []
    for n in ns:
        kb, vb = k[:, :n], v[:, :n]
        ke, ve = torch.cat([kb, kb[:, -1:]], 1), torch.cat([vb, vb[:, -1:]], 1)
        y = _last_output(q[:, n - 1], kb, vb, positional, alibi_slope, pe_scale)
        y_star = _last_output(q[:, n - 1], ke, ve, positional, alibi_slope, pe_scale)
        out.append((y - y_star).abs().sum(-1).mean())
    return torch.stack(out)


def crossing(
    lengths: Sequence[int], gaps: Float[Tensor, " length"], threshold: float = 2.0**-7
) -> int | None:
    """Smallest n of ``lengths`` (ascending) from which every gap is below ``threshold``
    (default the bf16 line 2^-7); None if the last one is not."""
    ns = _check_lengths(lengths)
    if len(ns) != gaps.shape[0]:
        raise InvalidArgumentError(f"{len(ns)} lengths but {gaps.shape[0]} gaps")
    below = (gaps < threshold).tolist()
    if not below[-1]:
        return None
    i = len(below) - 1
    while i > 0 and below[i - 1]:
        i -= 1
    return ns[i]
