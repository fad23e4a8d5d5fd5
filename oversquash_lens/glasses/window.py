"""'Glasses': sliding-window attention as an intervention (docs/science.md §7, "Windowed
attention and scalable softmax").

A window of ``w`` keys lets query ``i`` attend to keys ``j`` with ``i − w < j ≤ i`` (itself
included): the softmax is taken over those keys only, i.e. the scores of the others are set to
−inf. Since ``softmax`` restricted to a subset of keys is the full softmax zeroed outside the
subset and renormalised, a hook on the post-softmax ``hook_pattern`` computes exactly that

    p'_ij = p_ij · [i − w < j ≤ i] / Σ_{i − w < k ≤ i} p_ik

without touching the pre-softmax score hook (unreliable on ``boot_native`` bridges). Queries are
the last ``query_pos`` of the ``key_pos`` keys, so cached generation (one query, many keys) gets
the same mask. Two caveats of working after the softmax, both outside ordinary use:

- when every allowed weight of a row has underflowed to 0 (the allowed scores are all ~87+
  below an excluded one in float32) the row cannot be renormalised; it becomes uniform over the
  window and a ``RuntimeWarning`` says how many rows this hit;
- models with learned attention sinks (GPT-OSS: rows sum to less than 1, the missing mass is the
  sink's) are detected and keep their sink: ``p'_ij = p_ij / (Σ_allowed p + 1 − Σ_all p)``.

With every layer windowed, source ``i`` can reach target ``t`` through ``L`` layers only when
``t − i ≤ L·(w − 1)`` (:func:`oversquash_lens.path_counts` with ``window=w``), and with
relative positions (RoPE) a prompt and the same prompt with more tokens in front are identical
to the last token once the extra tokens are out of reach.

Example:
    >>> with sliding_window(model, 16):
    ...     logits = model(tokens)                       # every layer sees 16 keys
    >>> with sliding_window(model, 64, layers=[0, -1]):  # first and last block only
    ...     ...
    >>> collapse_curve(model, [8, 64], intervention=functools.partial(sliding_window, window=16))
"""

import contextlib
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .. import _tl, _validate
from .._tl.protocol import HookedModel

__all__ = ["window_mask", "window_pattern", "sliding_window", "active_window"]

# model -> stack of {block: window} for every sliding_window context open on it (read by
# scalable_softmax to count the keys a query sees). Weak keys: nothing keeps a model alive.
_OPEN: "weakref.WeakKeyDictionary[Any, list[dict[int, int]]]" = weakref.WeakKeyDictionary()


def window_mask(
    query_len: int, key_len: int, window: Any, *, device: torch.device | str | None = None
) -> Bool[Tensor, "query_pos key_pos"]:
    """Allowed (query, key) pairs: key ``j`` for query ``i`` iff ``i − window < j ≤ i``, where
    the queries are the last ``query_len`` of ``key_len`` positions (``i = key_len − query_len +
    row``)."""
    # a window of key_len keys or more changes nothing; clamping keeps a huge int (10**30)
    # out of the int64 comparison below
    w = min(_validate.integer(window, "window", minimum=1), max(key_len, 1))
    i = torch.arange(key_len - query_len, key_len, device=device)[:, None]
    j = torch.arange(key_len, device=device)[None, :]
    return (j <= i) & (j > i - w)


def window_pattern(
    pattern: Float[Tensor, "*batch query_pos key_pos"], window: Any, *, sink: bool = False
) -> Float[Tensor, "*batch query_pos key_pos"]:
    """The attention a ``window``-key sliding window gives (docs/science.md §7): ``pattern``
    zeroed outside ``i − w < j ≤ i`` and each row
    renormalised, which equals the softmax of the scores masked with −inf. ``sink=True`` treats
    ``1 − Σ_j p_ij`` as the mass of a learned sink logit, which keeps its score.

    Rows whose allowed weights are all 0 (underflow) become uniform over the window and raise
    a ``RuntimeWarning``."""
    sink = _validate.flag(sink, "sink")
    work = torch.promote_types(pattern.dtype, torch.float32)
    p = pattern.to(work)
    allowed = window_mask(p.shape[-2], p.shape[-1], window, device=p.device)
    kept = torch.where(allowed, p, torch.zeros((), dtype=work, device=p.device))
    mass = kept.sum(-1, keepdim=True)
    if sink:
        mass = mass + (1 - p.sum(-1, keepdim=True)).clamp(min=0)
    empty = mass <= 0
    out = kept / torch.where(empty, torch.ones_like(mass), mass)
    if bool(empty.any()):
        count = int(empty.sum())
        warnings.warn(
            f"sliding window {window}: {count} attention row(s) had every allowed weight "
            "underflow to 0; they were made uniform over the window",
            RuntimeWarning,
            stacklevel=2,
        )
        uniform = allowed.to(work) / allowed.sum(-1, keepdim=True).clamp(min=1).to(work)
        out = torch.where(empty, uniform.expand_as(out), out)
    return out.to(pattern.dtype)


def has_attention_sinks(model: HookedModel) -> bool:
    """Whether an attention module of ``model`` carries learned sink logits (GPT-OSS), whose
    patterns then sum to less than 1 per row."""
    return any(isinstance(getattr(m, "sinks", None), Tensor) for m in model.modules())


def active_window(model: HookedModel, block: int) -> int | None:
    """The narrowest :func:`sliding_window` open on ``block`` of ``model`` (None if none)."""
    widths = [w[block] for w in _OPEN.get(model, ()) if block in w]
    return min(widths) if widths else None


@contextlib.contextmanager
def sliding_window(model: HookedModel, window: Any, *, layers: Any = None) -> Iterator[Any]:
    """Within the block each chosen layer of ``model`` attends only to the last ``window``
    keys of every query, itself included (docs/science.md §7): exactly the softmax over keys
    ``i − window < j ≤ i``. Yields the model.

    Args:
        model: a TransformerBridge or HookedTransformer (hooks removed on exit, also when the
            block raises; parameters never touched).
        window: keys per query, an int >= 1 (1 = attend to yourself only; >= the sequence
            length = unchanged).
        layers: None (every block), a block index or a list of them; negative indices count
            from the end (−1 = last block); duplicates count once.

    Nests with itself (the narrowest window wins), :func:`adaptive_temperature` and
    :func:`scalable_softmax` (which then counts the keys a query sees as ``min(i + 1, w)``).
    Usable as ``intervention=functools.partial(sliding_window, window=w)``.

    Raises :class:`InvalidArgumentError` for a bad ``window`` or ``layers`` and
    :class:`UnsupportedModelError` for a model whose ``hook_pattern`` edits do not reach its
    output (checked with a 3-token probe), instead of silently changing nothing."""
    info = _tl.require_attention(model)
    w = _validate.integer(window, "window", minimum=1)
    blocks = _validate.block_indices(layers, info.n_layers)
    _tl.check_pattern_edits_reach_output(model)
    sink = has_attention_sinks(model)

    def hook(pattern: Tensor, hook: Any) -> Tensor:
        return window_pattern(pattern, w, sink=sink)

    entry = {b: w for b in blocks}
    stack = _OPEN.setdefault(model, [])
    stack.append(entry)
    try:
        with model.hooks(fwd_hooks=[(_tl.pattern_name(b), hook) for b in blocks]):
            yield model
    finally:
        stack.remove(entry)
        if not stack:
            _OPEN.pop(model, None)
