"""'Glasses': adaptive-temperature softmax as an attention intervention (docs/science.md §6).

Veličković et al., "softmax is not enough": with p = softmax(z) and its entropy
H = −Σ p log p, use softmax(β·z) where β = max(poly(H), 1) if H > 0.5 and β = 1 otherwise,
poly having the coefficients :data:`COEFFICIENTS` (highest degree first). A larger β sharpens
attention that has become too diffuse.

:func:`adaptive_temperature` applies it inside a model: a hook on every attention pattern
recomputes the pattern from its own log (log p equals the scores up to a per-row constant,
which softmax ignores; masked entries are 0 and stay 0), so it never reads the pre-softmax
score hook (unreliable on ``boot_native`` bridges).

Example:
    >>> with adaptive_temperature(model):
    ...     logits = model(tokens)          # sharpened attention
    >>> collapse_curve(model, [8, 64], intervention=adaptive_temperature)
"""

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import _tl, _validate
from .._tl.protocol import HookedModel
from ..errors import InvalidArgumentError

__all__ = [
    "COEFFICIENTS",
    "adaptive_beta",
    "adaptive_softmax",
    "adaptive_pattern",
    "adaptive_temperature",
]

#: poly(H) = −0.037 H⁴ + 0.481 H³ − 2.3 H² + 4.917 H − 1.791 (docs/science.md §6).
COEFFICIENTS = (-0.037, 0.481, -2.3, 4.917, -1.791)


def _entropy(p: Tensor, dim: int) -> Tensor:
    logp = torch.where(p > 0, p.clamp_min(torch.finfo(p.dtype).tiny).log(), torch.zeros_like(p))
    return -(p * logp).sum(dim)


def _check_threshold(threshold: Any) -> float:
    return _validate.number(threshold, "threshold", minimum=0.0)  # an entropy (nats)


def _beta_from_entropy(h: Tensor, threshold: float, coefficients: Sequence[float]) -> Tensor:
    poly = torch.zeros_like(h)
    for c in coefficients:  # Horner, highest degree first
        poly = poly * h + c
    return torch.where(h > threshold, poly.clamp(min=1.0), torch.ones_like(h))


def adaptive_beta(
    logits: Float[Tensor, "*batch vocab"],
    *,
    threshold: float = 0.5,
    coefficients: Sequence[float] = COEFFICIENTS,
) -> Float[Tensor, "*batch"]:
    """β per row of ``logits`` (last axis): max(poly(H), 1) when H(softmax) > threshold else 1."""
    threshold = _check_threshold(threshold)
    coefficients = _check_coefficients(coefficients)
    p = torch.softmax(logits.double(), dim=-1)
    return _beta_from_entropy(_entropy(p, -1), threshold, coefficients).to(logits.dtype)


def adaptive_softmax(
    logits: Float[Tensor, "*batch vocab"],
    *,
    threshold: float = 0.5,
    coefficients: Sequence[float] = COEFFICIENTS,
) -> Float[Tensor, "*batch vocab"]:
    """softmax(β·z) with the adaptive β of :func:`adaptive_beta` (docs/science.md §6)."""
    beta = adaptive_beta(logits, threshold=threshold, coefficients=coefficients)
    return torch.softmax(beta.unsqueeze(-1) * logits, dim=-1)


def adaptive_pattern(
    pattern: Float[Tensor, "*batch key_pos"],
    *,
    threshold: float = 0.5,
    coefficients: Sequence[float] = COEFFICIENTS,
) -> Float[Tensor, "*batch key_pos"]:
    """Adaptive temperature applied to post-softmax rows: softmax(β·log p) = p^β / Σ p^β,
    which equals :func:`adaptive_softmax` of the scores (masked zeros stay exactly 0)."""
    threshold = _check_threshold(threshold)
    coefficients = _check_coefficients(coefficients)
    p = pattern.double()
    beta = _beta_from_entropy(_entropy(p, -1), threshold, coefficients)
    kept = p > 0
    logp = p.clamp_min(torch.finfo(p.dtype).tiny).log()  # finite everywhere
    # -inf only after the product: β·(−inf) would give ∂/∂β = −inf · 0 = NaN in a backward
    # pass (token_sensitivity through the glasses); masked zeros stay exactly 0 either way
    scaled = torch.where(kept, beta.unsqueeze(-1) * logp, torch.full_like(p, float("-inf")))
    return torch.softmax(scaled, dim=-1).to(pattern.dtype)


@contextlib.contextmanager
def adaptive_temperature(
    model: HookedModel,
    *,
    layers: Sequence[int] | None = None,
    threshold: float = 0.5,
    coefficients: Sequence[float] = COEFFICIENTS,
) -> Iterator[Any]:
    """Within the block every attention pattern of ``layers`` (default all) of ``model`` is
    replaced by its adaptive-temperature version; the hooks are removed on exit, also when
    the block raises. Yields the model.

    Raises :class:`UnsupportedModelError` for a model whose ``hook_pattern`` edits do not reach
    its output (checked with a 3-token probe), instead of silently changing nothing."""
    info = _tl.require_attention(model)
    blocks = _validate.block_indices(layers, info.n_layers)
    threshold = _check_threshold(threshold)
    coefficients = _check_coefficients(coefficients)

    def hook(pattern: Tensor, hook: Any) -> Tensor:
        return adaptive_pattern(pattern, threshold=threshold, coefficients=coefficients)

    _tl.check_pattern_edits_reach_output(model)
    names = [_tl.pattern_name(b) for b in blocks]
    with model.hooks(fwd_hooks=[(n, hook) for n in names]):
        yield model


def _check_coefficients(coefficients: Any) -> tuple[float, ...]:
    """The polynomial's coefficients as finite floats (NaN or inf would give NaN logits)."""
    if isinstance(coefficients, Tensor):
        coefficients = coefficients.detach().cpu().reshape(-1).tolist()
    if isinstance(coefficients, (str, bytes)) or not isinstance(coefficients, Iterable):
        raise InvalidArgumentError(f"coefficients={coefficients!r} must be a list of numbers")
    try:
        out = tuple(_validate.number(c, "coefficient") for c in coefficients)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(
            f"coefficients={_validate.short(coefficients)} must be finite numbers ({exc})"
        ) from None
    if not out:
        raise InvalidArgumentError("coefficients=() must hold at least one number")
    return out
