"""Reading TransformerLens ActivationCaches (or plain dicts of hook tensors), read-only."""

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import InvalidArgumentError


def is_activation_cache(obj: Any) -> bool:
    """True for a TransformerLens ActivationCache (from either TL version) or a plain dict cache."""
    return type(obj).__name__ == "ActivationCache" or (
        isinstance(obj, dict) and any(isinstance(k, str) and "hook_" in k for k in obj)
    )


def patterns_from_cache(
    cache: Any, *, batch_index: int = 0
) -> Float[Tensor, "layer head_index query_pos key_pos"]:
    """Stack ``blocks.{l}.attn.hook_pattern`` from an ActivationCache (read-only)."""
    keys = [k for k in cache.keys() if k.endswith("attn.hook_pattern")]
    if not keys:
        raise InvalidArgumentError(
            "the cache holds no 'blocks.{l}.attn.hook_pattern' entries; run_with_cache with "
            "names_filter=lambda n: n.endswith('hook_pattern')"
        )
    keys.sort(key=lambda k: int(k.split(".")[1]))
    out = []
    for k in keys:
        t = cache[k]
        if t.ndim == 4:
            t = t[batch_index]
        out.append(t)
    return torch.stack(out, dim=0)


def cache_pattern_batch(cache: Any) -> int:
    """Number of sequences behind the ``hook_pattern`` entries of a cache (1 when batch-less)."""
    for key in cache.keys():
        if key.endswith("attn.hook_pattern"):
            t = cache[key]
            return int(t.shape[0]) if t.ndim == 4 else 1
    return 1
