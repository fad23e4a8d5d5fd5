"""Reading TransformerLens ActivationCaches (or plain dicts of hook tensors), read-only.

The one pattern adapter of the package: :func:`cache_patterns` turns a cache into a
``[batch, block, head, query, key]`` tensor, or raises :class:`~oversquash_lens.errors.
InvalidPatternError` naming what is wrong with it (a key without a block number, a value that
is not a tensor, blocks of different shapes, blocks missing in the middle or at the start).
"""

import re
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .._validate import short
from ..errors import InvalidPatternError

_PATTERN_KEY = re.compile(r"^blocks\.(\d+)\.attn\.hook_pattern$")


def is_activation_cache(obj: Any) -> bool:
    """True for a TransformerLens ActivationCache (from either TL version) or a plain dict cache."""
    return type(obj).__name__ == "ActivationCache" or (
        isinstance(obj, dict) and any(isinstance(k, str) and "hook_" in k for k in obj)
    )


def cache_patterns(cache: Any) -> Float[Tensor, "batch layer head_index query_pos key_pos"]:
    """Every block's ``blocks.{b}.attn.hook_pattern`` stacked as ``[batch, block, head, query,
    key]`` (a batch-less ``[head, query, key]`` entry counts as batch 1). The cache is only
    read. Blocks must be 0..L−1 without gaps: a cache holding only some blocks' patterns would
    silently renumber them, so it is refused with the blocks it does hold."""
    try:
        keys = [k for k in cache.keys() if isinstance(k, str) and k.endswith("hook_pattern")]
    except (AttributeError, TypeError):
        raise InvalidPatternError(f"cache={short(cache)} has no keys()") from None
    if not keys:
        raise InvalidPatternError(
            "the cache holds no 'blocks.{b}.attn.hook_pattern' entries; run_with_cache with "
            "names_filter=lambda n: n.endswith('hook_pattern')"
        )
    blocks: dict[int, Tensor] = {}
    for key in keys:
        match = _PATTERN_KEY.match(key)
        if match is None:
            raise InvalidPatternError(
                f"cache key {key!r} is not of the form 'blocks.<block>.attn.hook_pattern'"
            )
        value = cache[key]
        if not isinstance(value, Tensor):
            raise InvalidPatternError(f"cache[{key!r}] is a {type(value).__name__}, not a tensor")
        if value.ndim == 3:
            value = value.unsqueeze(0)
        if value.ndim != 4:
            raise InvalidPatternError(
                f"cache[{key!r}] has shape {tuple(value.shape)}; expected [batch, head, query, "
                "key] or [head, query, key]"
            )
        blocks[int(match.group(1))] = value
    present = sorted(blocks)
    if present != list(range(len(present))):
        raise InvalidPatternError(
            f"the cache holds hook_pattern for blocks {present}, not every block 0.."
            f"{present[-1]}: rows would not be the model's layers; cache every block's pattern "
            "(or slice the tensor yourself)"
        )
    shapes = {b: tuple(t.shape) for b, t in blocks.items()}
    if len(set(shapes.values())) != 1:
        raise InvalidPatternError(f"the cached patterns differ in shape across blocks: {shapes}")
    return torch.stack([blocks[b] for b in present], dim=1)


def patterns_from_cache(
    cache: Any, *, batch_index: int = 0
) -> Float[Tensor, "layer head_index query_pos key_pos"]:
    """``[block, head, query, key]`` patterns of sequence ``batch_index`` of a cache."""
    return cache_patterns(cache)[batch_index]


def cache_pattern_batch(cache: Any) -> int:
    """Number of sequences behind the ``hook_pattern`` entries of a cache (1 when batch-less)."""
    return int(cache_patterns(cache).shape[0])


# --------------------------------------------------------------------------- learned sinks
#: Values of the ``learned_sinks`` keyword of every function that reads attention patterns
#: (docs/science.md, "Learned attention sinks").
LEARNED_SINKS = ("auto", "keep", "renormalize")


def cache_model(cache: Any) -> Any:
    """The model a TransformerLens ActivationCache was made by (``cache.model``), else None."""
    if type(cache).__name__ != "ActivationCache":
        return None
    return getattr(cache, "model", None)


def resolve_learned_sinks(learned_sinks: Any, source: Any = None) -> str:
    """How pattern rows that sum to less than 1 are read: ``"none"`` (rows must sum to 1),
    ``"keep"`` (the missing mass ``1 − Σ_j p_ij`` is a learned sink's: reported as its own score,
    an absorbing node in rollout / bound) or ``"renormalize"`` (rows divided by their sums).

    ``learned_sinks="auto"`` gives ``"keep"`` when ``source`` (a model, or an ActivationCache
    whose model is known) has learned sink logits (GPT-OSS, see
    :func:`~oversquash_lens.glasses.window.has_attention_sinks`), else ``"none"``; a plain
    tensor or dict cache carries no model, so sub-stochastic rows from it need an explicit
    ``"keep"`` or ``"renormalize"``."""
    from .._validate import choice

    value = choice(learned_sinks, "learned_sinks", LEARNED_SINKS)
    if value != "auto":
        return value
    model = cache_model(source) if is_activation_cache(source) else source
    if model is None or not hasattr(model, "modules"):
        return "none"
    from ..glasses.window import has_attention_sinks  # lazy: glasses imports _tl

    return "keep" if has_attention_sinks(model) else "none"


def sub_stochastic_hint(total: float) -> str:
    """The error text for a row summing to ``total`` < 1 where rows must sum to 1."""
    return (
        f"{total:.6g} < 1: this looks like attention with a learned sink (GPT-OSS style: a "
        f"per-head sink logit joins the softmax and its column is dropped, so the missing "
        f"{1 - total:.3g} went to the sink); pass learned_sinks='keep' (the missing mass kept "
        "as the learned sink's: its own score, an absorbing node in rollout and bound) or "
        "learned_sinks='renormalize' (rows divided by their sums)"
    )
