"""Validation of plain arguments shared by every module: dtype names, position indices and
position selections (bad values raise InvalidArgumentError naming them)."""

import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import InvalidArgumentError

__all__ = ["resolve_dtype", "resolve_index", "resolve_positions", "int_list", "short"]

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


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def int_list(values: Any, *, name: str = "lengths", minimum: int | None = 1) -> list[int]:
    """An int or an iterable of ints — Python, numpy or tensor integers, e.g. a numpy log
    grid — as a list of Python ints (each ``>= minimum`` unless it is None). Bools, floats,
    strings and empty lists raise InvalidArgumentError naming the value."""
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        values = values.tolist()  # tensors, numpy arrays and numpy scalars
    if _is_int(values):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidArgumentError(f"{name}={values!r} must be an int or a list of ints")
    out = list(values)
    if not out:
        raise InvalidArgumentError(f"{name}=[] is empty; give at least one length")
    for n in out:
        if not _is_int(n) or (minimum is not None and n < minimum):
            need = (
                "ints"
                if minimum is None
                else ("positive ints" if minimum == 1 else f"ints >= {minimum}")
            )
            raise InvalidArgumentError(f"{name} contains {n!r}; {name} must be {need}")
    return [int(n) for n in out]


def short(x: Any, limit: int = 60) -> str:
    """``repr(x)`` cut to ``limit`` characters, for error messages."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."
