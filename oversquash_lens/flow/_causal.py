"""Causal attention patterns stored packed: only the ``key ≤ query`` triangle of every head, half
the memory of ``[layer, head, query, key]`` (docs/architecture.md "Long contexts").

The route graph of :func:`~oversquash_lens.information_flow` reads attention rows one node at a
time, but must keep every layer's pattern because the walk decides later which nodes it reaches.
A causal pattern is zero above the diagonal, so row ``q`` of a head holds ``q + 1`` numbers;
packing them row after row stores ``n (n + 1) / 2`` per head instead of ``n²``. On SmolLM2 at
4,096 tokens that is 9.1 GB instead of 18.1 GB, which is what makes one target fit in 24 GiB.
Rows come back as slices of the packed buffer (one row is contiguous), so reading a node's
attention costs what reading it from a dense tensor costs.
"""

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import _validate
from ..errors import InvalidArgumentError

__all__ = ["CausalPatterns", "pack_causal"]


def pack_causal(pattern: Float[Tensor, "head query key"]) -> Float[Tensor, "head packed"]:
    """The ``key ≤ query`` entries of every head, row-major (row ``q`` starts at ``q(q+1)/2``).
    Entries above the diagonal are dropped: they are zero in a causal pattern (the validators of
    :mod:`.rollout` refuse patterns that put mass there)."""
    n = pattern.shape[-1]
    out = pattern.new_empty(pattern.shape[0], n * (n + 1) // 2)
    for q in range(n):  # one slice copy per row: 8x faster than masked_select at 4,096 tokens
        start = q * (q + 1) // 2
        out[:, start : start + q + 1] = pattern[:, q, : q + 1]
    return out


class CausalPatterns:
    """``[layer, head, query, key]`` causal attention kept as packed lower triangles.

    Built from a list of :func:`pack_causal` buffers, one ``[head, n(n+1)/2]`` per layer.
    ``shape``, ``dtype`` and ``device`` describe the dense tensor it stands for; :meth:`layer`
    and :meth:`dense` materialise it, :meth:`rows` and :meth:`entry` read without doing so.
    """

    def __init__(self, packed: list[Tensor], n_pos: int):
        self._packed = packed
        self._n = n_pos

    # ------------------------------------------------------------------ facts
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._packed), self._packed[0].shape[0], self._n, self._n))

    @property
    def dtype(self) -> torch.dtype:
        return self._packed[0].dtype

    @property
    def device(self) -> torch.device:
        return self._packed[0].device

    @property
    def nbytes(self) -> int:
        """Bytes held (the packed triangles), like ``Tensor.nbytes``."""
        return sum(p.numel() * p.element_size() for p in self._packed)

    @property
    def dense_nbytes(self) -> int:
        """Bytes the dense ``[layer, head, query, key]`` tensor would take."""
        return self.shape.numel() * self._packed[0].element_size()

    def __repr__(self) -> str:
        return (
            f"CausalPatterns(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"{self.nbytes / 2**20:.0f} MiB packed)"
        )

    # ------------------------------------------------------------------ reads
    def entry(self, layer: int, head: int, query: int, key: int) -> float:
        """One weight ``α^{layer,head}_{query,key}`` (0 above the diagonal); negative indices
        count from the end, as in the dense tensor."""
        n_layers, n_heads = self.shape[0], self.shape[1]
        b = _validate.resolve_index(layer, n_layers, name="layer")
        h = _validate.resolve_index(head, n_heads, name="head")
        q = _validate.resolve_index(query, self._n, name="query")
        k = _validate.resolve_index(key, self._n, name="key")
        return self._entry(b, h, q, k)

    def rows(
        self, layer: int, queries: Any, k0: int = 0, k1: int | None = None
    ) -> Float[Tensor, "head query key"]:
        """``[head, len(queries), k1 − k0]``: keys ``k0..k1-1`` (default all) of the given
        query rows (ints, a list or a 1-D integer tensor/array; negatives count from the end),
        zeros where a key lies after its query, exactly as slicing the dense causal pattern."""
        b = _validate.resolve_index(layer, self.shape[0], name="layer")
        q = self._queries(queries)
        lo = _validate.integer(k0, "k0", minimum=0, maximum=self._n)
        hi = self._n if k1 is None else _validate.integer(k1, "k1", minimum=lo, maximum=self._n)
        return self._rows(b, q, lo, hi)

    def _queries(self, queries: Any) -> Tensor:
        device = self.device
        if isinstance(queries, Tensor) or type(queries).__name__ == "ndarray":
            if not _integer_array(queries):
                raise InvalidArgumentError(
                    f"queries has dtype {queries.dtype}: give query positions as integers"
                )
            if queries.ndim > 1:
                raise InvalidArgumentError(f"queries has shape {tuple(queries.shape)}: give 1-D")
            queries = queries.reshape(-1).tolist()
        elif not isinstance(queries, (list, tuple, range)):
            queries = [queries]
        kept = [_validate.resolve_index(q, self._n, name="queries") for q in queries]
        return torch.tensor(kept, dtype=torch.long, device=device)

    def _entry(self, b: int, h: int, q: int, k: int) -> float:
        """:meth:`entry` for indices already in range (the route graph's inner loop)."""
        return 0.0 if k > q else float(self._packed[b][h, q * (q + 1) // 2 + k])

    def _rows(self, b: int, queries: Tensor, k0: int, k1: int) -> Tensor:
        """:meth:`rows` for in-range ``b``, non-negative long ``queries`` and ``0 ≤ k0 ≤ k1 ≤
        n`` (the route graph's inner loop: no validation)."""
        flat = self._packed[b]
        q = queries.reshape(-1, 1)
        keys = torch.arange(k0, k1, device=flat.device).reshape(1, -1)
        index = q * (q + 1) // 2 + keys  # [query, key] offsets in the packed row-major triangle
        valid = keys <= q
        out = flat[:, index.where(valid, torch.zeros_like(index))]
        return out.masked_fill_(~valid, 0.0)

    def layer(self, layer: int) -> Float[Tensor, "head query key"]:
        """The dense ``[head, query, key]`` pattern of one layer (``H·n²`` floats)."""
        flat = self._packed[layer]
        out = torch.zeros(flat.shape[0], self._n, self._n, dtype=flat.dtype, device=flat.device)
        for q in range(self._n):
            start = q * (q + 1) // 2
            out[:, q, : q + 1] = flat[:, start : start + q + 1]
        return out

    def dense(self) -> Float[Tensor, "layer head query key"]:
        """The dense ``[layer, head, query, key]`` tensor (``L·H·n²`` floats)."""
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        for b in range(len(self._packed)):
            out[b] = self.layer(b)
        return out


def available_bytes() -> int | None:
    """``MemAvailable`` of this machine (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_dense_fits(patterns: CausalPatterns, what: Any) -> None:
    """Refuse to materialise a dense CPU tensor larger than the memory available (a Jupyter
    kernel killed by the OOM killer loses everything; a clear error loses nothing)."""
    need = patterns.dense_nbytes
    free = available_bytes() if patterns.device.type == "cpu" else None
    if free is not None and need > free:
        raise InvalidArgumentError(
            f"{what}: the dense [layer, head, query, key] patterns {tuple(patterns.shape)} "
            f"take {_size(need)} and this machine has {_size(free)} available; read them a "
            "layer at a time with routes.layer_patterns(layer) or routes.causal_patterns.rows"
            "(layer, queries); for a rollout at this length use attention_rollout_from_model"
        )


def _size(n_bytes: int) -> str:
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f} GiB"
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes:,} bytes"


def _integer_array(x: Any) -> bool:
    """A tensor or numpy array of integers (bools and floats are not positions)."""
    if isinstance(x, Tensor):
        return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
    return getattr(x.dtype, "kind", "") in ("i", "u")
