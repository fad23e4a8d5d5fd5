"""The one validation module: every plain argument of the public API is checked here — ints,
numbers (finite), flags (real bools only), choices, dtypes, position indices and selections,
block lists, option mappings, context sizes — and every bad value raises
:class:`~oversquash_lens.errors.InvalidArgumentError` naming it (docs/architecture.md,
"Guarantees")."""

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import InvalidArgumentError, InvalidTokensError

__all__ = [
    "resolve_dtype",
    "resolve_index",
    "resolve_positions",
    "int_list",
    "block_indices",
    "short",
    "integer",
    "number",
    "flag",
    "choice",
    "fits_context",
    "options",
    "progress_flag",
    "vector",
    "strings",
    "text",
]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    # 8-bit storage formats (OCP FP8): only as rounding targets, torch cannot run a model in them
    "float8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "fp8_e5m2": torch.float8_e5m2,
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
        elif _is_int(index):  # numpy integers
            index = int(index)
        else:
            raise InvalidArgumentError(f"{name}={short(index)} must be an int position")
    if not -n <= index < n:
        raise InvalidArgumentError(f"{name}={index} is out of range for {n} positions")
    return index % n


def resolve_positions(positions: Any, n: int) -> Int[Tensor, " kept"]:
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
    if _is_int(positions):
        return torch.tensor([resolve_index(positions, n, name="positions")])
    if _is_array(positions):  # tensors and numpy arrays alike: 0-d or 1-D only
        _one_dim(positions, "positions")
        positions = positions.reshape(-1).tolist()
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


def _is_array(x: Any) -> bool:
    """A torch tensor or a numpy array (numpy is not imported for the check)."""
    return isinstance(x, Tensor) or type(x).__name__ == "ndarray"


def _one_dim(x: Any, name: str) -> None:
    """Refuse a tensor or array of more than one axis: flattening a ``[batch, pos]`` grid
    would silently mix its rows."""
    if x.ndim > 1:
        raise InvalidArgumentError(
            f"{name} has shape {tuple(x.shape)}: give an int, a list or a 1-D array, "
            f"not a {x.ndim}-D one"
        )


def int_list(values: Any, *, name: str = "lengths", minimum: int | None = 1) -> list[int]:
    """An int or an iterable of ints — Python, numpy or tensor integers, e.g. a numpy log
    grid — as a list of Python ints (each ``>= minimum`` unless it is None). Bools, floats,
    strings, 2-D arrays and empty lists raise InvalidArgumentError naming the value."""
    if _is_array(values):
        _one_dim(values, name)
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        values = values.tolist()  # tensors, numpy arrays and numpy scalars
    if _is_int(values):
        values = [values]
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InvalidArgumentError(f"{name}={short(values)} must be an int or a list of ints")
    out = list(values)
    if not out:
        raise InvalidArgumentError(f"{name}=[] is empty; give at least one value")
    for n in out:
        if not _is_int(n) or (minimum is not None and n < minimum):
            need = (
                "ints"
                if minimum is None
                else ("positive ints" if minimum == 1 else f"ints >= {minimum}")
            )
            raise InvalidArgumentError(f"{name} contains {n!r}; {name} must be {need}")
    return [int(n) for n in out]


def block_indices(layers: Any, n_layers: int, *, name: str = "layers") -> list[int]:
    """Blocks chosen by ``layers``: None = all ``0..n_layers-1``; an int or a list of ints,
    negatives counting from the end (−1 = last block). Returned normalised to ``0..n_layers-1``,
    deduplicated, in the order given. An empty list selects no block."""
    if layers is None:
        return list(range(n_layers))
    if _is_array(layers):
        _one_dim(layers, name)
    if hasattr(layers, "tolist") and not isinstance(layers, (str, bytes)):
        layers = layers.tolist()
    if _is_int(layers):
        layers = [layers]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise InvalidArgumentError(f"{name}={short(layers)} must be None, a block index or a list")
    out: list[int] = []
    for b in layers:
        if not _is_int(b) or not -n_layers <= b < n_layers:
            raise InvalidArgumentError(
                f"{name} contains {short(b)}, not a block index of a {n_layers}-block model "
                f"(ints in -{n_layers}..{n_layers - 1})"
            )
        out.append(int(b) % n_layers)
    return list(dict.fromkeys(out))


def short(x: Any, limit: int = 60) -> str:
    """``repr(x)`` cut to ``limit`` characters, for error messages."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def integer(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    hint: str = "",
) -> int:
    """``value`` as a Python int (Python, numpy or one-element integer tensors) within
    ``[minimum, maximum]``; bools, floats, strings and out-of-range values raise
    InvalidArgumentError naming the value (``hint``, e.g. why there is a maximum, is
    appended to an out-of-range message). The one integer check of the package."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if not _is_int(value):
        raise InvalidArgumentError(f"{name}={short(value)} must be an int")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "-inf" if minimum is None else str(minimum)
        hi = "inf" if maximum is None else str(maximum)
        raise InvalidArgumentError(f"{name}={value} is outside [{lo}, {hi}]{hint}")
    return int(value)


def number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """``value`` as a finite Python float within the given bounds (``open_*``: strict);
    bools, strings, NaN and inf raise InvalidArgumentError naming the value."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name}={short(value)} must be a number")
    out = float(value)
    if not math.isfinite(out):
        raise InvalidArgumentError(f"{name}={out!r} must be a finite number")
    below = minimum is not None and (out <= minimum if open_min else out < minimum)
    above = maximum is not None and (out >= maximum if open_max else out > maximum)
    if below or above:
        lo = "(" if open_min else "["
        hi = ")" if open_max else "]"
        low = "-inf" if minimum is None else f"{minimum:g}"
        high = "inf" if maximum is None else f"{maximum:g}"
        raise InvalidArgumentError(f"{name}={out!r} is outside {lo}{low}, {high}{hi}")
    return out


def flag(value: Any, name: str) -> bool:
    """``value`` if it is a bool (numpy bools too); anything else — notably the strings
    ``'no'``/``'false'``, which are truthy — raises InvalidArgumentError naming it."""
    kind = type(value)
    if kind.__module__ == "numpy" and kind.__name__ in ("bool_", "bool"):  # numpy 1.x / 2.x
        value = bool(value)
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name}={short(value)} must be True or False")
    return value


def choice(value: Any, name: str, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options`` (strings), else InvalidArgumentError listing them."""
    allowed = list(options)
    if not isinstance(value, str) or value not in allowed:
        raise InvalidArgumentError(f"{name}={short(value)} is not one of {allowed}")
    return value


def fits_context(
    lengths: Sequence[int], n_ctx: int, *, name: str = "lengths", extra: int = 0
) -> None:
    """Refuse, before any prompt is built, a length whose ``n + extra`` items alone exceed the
    model's context (every item takes at least one token): building a 10**9-item prompt
    first would exhaust memory before the proper error."""
    too_long = [n for n in lengths if n + extra > n_ctx]
    if too_long:
        n = too_long[0]
        raise InvalidTokensError(
            f"{name}: n={n} cannot fit: {n + extra} items need more than the model's "
            f"n_ctx={n_ctx} positions (each item is at least one token)"
        )


def options(value: Any, name: str) -> dict[str, Any]:
    """``value`` (None or a mapping with string keys) as a new dict; anything else — a string,
    a number, a list — raises InvalidArgumentError naming it."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidArgumentError(
            f"{name}={short(value)} must be a dict of keyword options, e.g. {{'sep': ','}}"
        )
    return dict(value)


def progress_flag(progress: Any, default: bool) -> bool:
    """``progress`` (None = ``default``, else a bool) for tqdm's ``disable=not ...``."""
    return default if progress is None else flag(progress, "progress")


def vector(values: Any, name: str, *, finite: bool = True) -> list[float]:
    """One real number per item — a list, a 1-D tensor or numpy array — as Python floats;
    strings, bools, nested lists, 2-D arrays and (when ``finite``) NaN or inf raise
    InvalidArgumentError naming the value and its position."""
    if _is_array(values):
        _one_dim(values, name)
        if values.ndim == 0:
            raise InvalidArgumentError(f"{name}={short(values)} is a scalar: give one per item")
        if isinstance(values, Tensor):
            values = values.detach().cpu()
        values = values.tolist()
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InvalidArgumentError(f"{name}={short(values)} must be a list or 1-D array of numbers")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InvalidArgumentError(
                f"{name}[{i}]={short(v)} is not a number; {name} must hold one number per item"
            )
        x = float(v)
        if finite and not math.isfinite(x):
            raise InvalidArgumentError(
                f"{name}[{i}]={x!r} is not finite; replace NaN/inf first (e.g. numpy.nan_to_num)"
            )
        out.append(x)
    return out


def strings(values: Any, name: str) -> list[str]:
    """A list (or tuple, or other non-string iterable) of strings as a list; a bare string, a
    tensor of ids or any non-string element raise InvalidArgumentError naming it."""
    if isinstance(values, (str, bytes, Mapping)) or _is_array(values):
        raise InvalidArgumentError(
            f"{name}={short(values)} must be a list of strings (e.g. model.to_str_tokens(text))"
        )
    if not isinstance(values, Iterable):
        raise InvalidArgumentError(f"{name}={short(values)} must be a list of strings")
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise InvalidArgumentError(
                f"{name}[{i}]={short(v)} is not a string; convert first, e.g. [str(t) for t in ...]"
            )
    return out


def text(value: Any, name: str) -> str:
    """``value`` if it is a string, else InvalidArgumentError naming it."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name}={short(value)} must be a string")
    return value
