"""Validation of plain arguments shared by every module: dtype names, position indices and
position selections (bad values raise InvalidArgumentError naming them)."""

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import InvalidArgumentError

__all__ = ["resolve_dtype", "resolve_index", "resolve_positions"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Map a dtype or its name (``"bfloat16"``, ``"bf16"``...) to a torch dtype."""
    if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
        raise InvalidArgumentError(f"dtype={dtype!r} is not a floating-point dtype")
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise InvalidArgumentError(
        f"dtype={dtype!r} is not one of {sorted(set(_DTYPES))} or a torch.dtype"
    )


def resolve_index(index: int, n: int, *, name: str = "target") -> int:
    """Normalise a (possibly negative) position index into ``0..n-1`` or raise."""
    if isinstance(index, bool) or not isinstance(index, (int, torch.SymInt)):
        if isinstance(index, Tensor) and index.numel() == 1 and not index.is_floating_point():
            index = int(index)
        else:
            raise InvalidArgumentError(f"{name}={index!r} must be an int position")
    if not -n <= index < n:
        raise InvalidArgumentError(f"{name}={index} is out of range for {n} positions")
    return index % n


def resolve_positions(
    positions: int | Sequence[int] | slice | Tensor | None, n: int
) -> Int[Tensor, " kept"]:
    """Positions to keep (int, list, slice, 1-D tensor; negatives allowed), in given order."""
    if positions is None:
        return torch.arange(n)
    if isinstance(positions, slice):
        try:
            idx = torch.arange(n)[positions]
        except (ValueError, TypeError) as exc:  # e.g. a negative step
            raise InvalidArgumentError(f"positions={positions!r}: {exc}") from None
        if idx.numel() == 0:
            raise InvalidArgumentError(f"positions={positions!r} selects nothing of {n} positions")
        return idx
    if isinstance(positions, int) and not isinstance(positions, bool):
        return torch.tensor([resolve_index(positions, n, name="positions")])
    if isinstance(positions, Tensor):
        positions = positions.flatten().tolist()
    try:
        items = list(positions)
    except TypeError:
        msg = f"positions={positions!r} is not an int, list or slice"
        raise InvalidArgumentError(msg) from None
    if not items:
        raise InvalidArgumentError("positions=[] selects nothing")
    return torch.tensor([resolve_index(p, n, name="positions") for p in items])
