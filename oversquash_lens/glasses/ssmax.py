"""'Glasses': scalable softmax (SSMax) as an attention intervention (docs/science.md §7,
"Windowed attention and scalable softmax").

Nakanishi 2025 (arXiv 2501.19399): a query that sees ``m`` keys takes
``softmax((s · ln m) · z)`` of its scores ``z`` instead of ``softmax(z)``, so the largest weight
no longer fades like 1/m as the context grows. On the post-softmax pattern this is

    p'_ij = p_ij^β / Σ_k p_ik^β,   β_i = s · ln m_i,

because ``log p`` equals the scores up to a per-row constant. Masked (zero) weights stay 0.
``m_i`` is the number of keys query ``i`` may attend to: ``i + 1`` under the causal mask, and
``min(i + 1, w)`` on a block where a :func:`sliding_window` of ``w`` keys is open (in either
nesting order: restricting to a window and raising to a power commute once β is fixed). A
model's own built-in windows (Gemma 2/3 local layers) are not detected; open
``sliding_window(model, w, layers=local)`` around it to make them count. At ``m = 1`` (the
first query) β = 0 and the row, one key, stays ``[1]``.

Choosing ``s`` (required: there is no neutral default). The paper *learns* ``s`` (per layer
and head) while training with SSMax. Applied to a model trained with plain softmax, every ``s``
flattens attention for queries seeing fewer than ``m₀ = e^{1/s}`` keys (β < 1) and sharpens it
beyond (β > 1); only queries with exactly ``m₀`` keys are unchanged. So pick the length the
model handles well: ``s = ssmax_s(m0) = 1 / ln m0``. The paper's Fig. 1 uses ``s = 0.43``
(``m₀ ≈ 10``).

Example:
    >>> with scalable_softmax(model, s=ssmax_s(64)):   # unchanged for 64 keys, sharper after
    ...     logits = model(tokens)
    >>> collapse_curve(model, [64, 512], intervention=functools.partial(scalable_softmax, s=0.3))
"""

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import _tl, _validate
from .._tl.protocol import HookedModel
from .window import active_window, has_attention_sinks

__all__ = ["ssmax_s", "ssmax_beta", "ssmax_pattern", "scalable_softmax"]


def _check_s(s: Any) -> float:
    return _validate.number(s, "s", minimum=0.0, open_min=True)


def ssmax_s(m0: Any) -> float:
    """The ``s`` that leaves a query seeing ``m0`` keys unchanged (``s · ln m0 = 1``): SSMax
    then flattens attention for fewer keys and sharpens it for more."""
    m = _validate.integer(m0, "m0", minimum=2)  # ln 1 = 0: no s leaves m0 = 1 unchanged
    return 1.0 / math.log(m)


def ssmax_beta(
    query_len: int, key_len: int, s: Any, *, window: Any = None
) -> Float[Tensor, " query_pos"]:
    """β_i = s · ln m_i (float64) for the last ``query_len`` of ``key_len`` positions, with
    ``m_i = i + 1`` keys (``min(i + 1, window)`` under a sliding window)."""
    s = _check_s(s)
    m = torch.arange(key_len - query_len + 1, key_len + 1, dtype=torch.float64)
    if window is not None:  # a window wider than the keys changes nothing (and may be huge)
        m = m.clamp(max=min(_validate.integer(window, "window", minimum=1), max(key_len, 1)))
    return s * m.clamp(min=1).log()


def ssmax_pattern(
    pattern: Float[Tensor, "*batch query_pos key_pos"],
    s: Any,
    *,
    window: Any = None,
    sink: bool = False,
) -> Float[Tensor, "*batch query_pos key_pos"]:
    """SSMax applied to post-softmax rows (docs/science.md §7): ``p^β / Σ p^β`` with β per
    query from :func:`ssmax_beta`, which equals ``softmax(β · scores)``; zero weights stay 0
    and rows without a positive weight are left as they are. ``sink=True`` scales a learned
    sink's logit (its mass ``1 − Σ_j p_ij``) too."""
    beta = ssmax_beta(pattern.shape[-2], pattern.shape[-1], s, window=window)
    sink = _validate.flag(sink, "sink")
    p = pattern.double()
    if sink:
        p = torch.cat([p, (1 - p.sum(-1, keepdim=True)).clamp(min=0)], dim=-1)
    positive = p > 0
    some = positive.any(-1, keepdim=True)
    logp = torch.where(positive, p, torch.ones_like(p)).log()  # no log(0): finite gradients
    scaled = torch.where(positive, beta.to(p.device)[:, None] * logp, float("-inf"))
    out = torch.softmax(torch.where(some, scaled, torch.zeros_like(scaled)), dim=-1)
    out = torch.where(some, out, p)  # rows without a positive weight: unchanged
    if sink:
        out = out[..., :-1]
    return out.to(pattern.dtype)


@contextlib.contextmanager
def scalable_softmax(model: HookedModel, *, s: Any, layers: Any = None) -> Iterator[Any]:
    """Within the block each chosen layer of ``model`` uses SSMax attention
    ``softmax((s · ln m) · scores)``, ``m`` the number of keys the query sees
    (docs/science.md §7). Yields the model.

    Args:
        model: a TransformerBridge or HookedTransformer (hooks removed on exit, also when the
            block raises; parameters never touched).
        s: the SSMax scale, a positive finite number (required; ``ssmax_s(m0)`` leaves queries
            that see ``m0`` keys unchanged — see the module docstring for why there is no
            default).
        layers: None (every block), a block index or a list of them; negative indices count
            from the end; duplicates count once.

    Nests with :func:`sliding_window` (``m = min(i + 1, w)`` there) and other glasses. Usable
    as ``intervention=functools.partial(scalable_softmax, s=s)``.

    Raises :class:`InvalidArgumentError` for a bad ``s`` or ``layers`` and
    :class:`UnsupportedModelError` for a model whose ``hook_pattern`` edits do not reach its
    output."""
    info = _tl.require_attention(model)
    scale = _check_s(s)
    blocks = _validate.block_indices(layers, info.n_layers)
    _tl.check_pattern_edits_reach_output(model)
    sink = has_attention_sinks(model)

    def make_hook(block: int) -> Any:
        def hook(pattern: Tensor, hook: Any) -> Tensor:
            w = active_window(model, block)
            return ssmax_pattern(pattern, scale, window=w, sink=sink)

        return hook

    with model.hooks(fwd_hooks=[(_tl.pattern_name(b), make_hook(b)) for b in blocks]):
        yield model
