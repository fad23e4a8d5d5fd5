"""Residual-stream capture: the per-layer token states v_i^(ℓ) of docs/science.md §1.

``capture_residuals`` keeps only the requested query positions inside the hooks, so memory is
proportional to the kept positions, never to a full ``run_with_cache``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import _tl, _validate
from .._display import frame_html
from .._tl.protocol import HookedModel
from ..errors import InvalidArgumentError

__all__ = ["ResidualStates", "capture_residuals"]


@dataclass(frozen=True)
class ResidualStates:
    """Residual stream of a batch: layer 0 = input of block 0, layer ℓ = output of block ℓ−1.

    Attributes:
        states: ``[batch, layer, pos, d_model]`` with ``n_layers + 1`` layers; ``pos`` indexes
            the kept positions only (see ``positions``).
        positions: absolute positions (0-based) of the kept columns.
        tokens: the ``[batch, seq]`` token ids that were run.
        dtype: the dtype the states were cast to after capture.
    """

    states: Float[Tensor, "batch layer pos d_model"]
    positions: Int[Tensor, " pos"]
    tokens: Int[Tensor, "batch seq"]
    model_name: str = ""

    @property
    def n_layers(self) -> int:
        return self.states.shape[1] - 1

    def at(self, position: int) -> Float[Tensor, "batch layer d_model"]:
        """States at an absolute position (which must have been kept)."""
        hits = (self.positions == position).nonzero()
        if hits.numel() == 0:
            raise InvalidArgumentError(
                f"position={position} was not captured; kept positions are "
                f"{self.positions.tolist()[:10]}"
            )
        return self.states[:, :, int(hits[0, 0])]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (batch, layer, position): L2 norm, mean and std of the state."""
        s = self.states.float()
        b, layer, p, _ = s.shape
        idx = pd.MultiIndex.from_product(
            [range(b), range(layer), self.positions.tolist()], names=["batch", "layer", "pos"]
        )
        return pd.DataFrame(
            {
                "norm": s.norm(dim=-1).flatten().cpu().numpy(),
                "mean": s.mean(dim=-1).flatten().cpu().numpy(),
                "std": s.std(dim=-1).flatten().cpu().numpy(),
            },
            index=idx,
        ).reset_index()

    def _repr_html_(self) -> str:
        b, layer, p, d = self.states.shape
        head = (
            f"<b>ResidualStates</b> {self.model_name}: batch={b}, layers={layer} "
            f"(0 = embeddings), positions={p}, d_model={d}, dtype={self.states.dtype}"
        )
        df = self.to_dataframe().groupby("layer")["norm"].agg(["mean", "min", "max"])
        return frame_html(head, df)

    def plot(self):
        """Mean residual norm per layer and kept position (plotly heat map)."""
        import plotly.express as px

        norms = self.states.float().norm(dim=-1).mean(0).cpu().numpy()
        return px.imshow(
            norms,
            labels={"x": "position", "y": "layer", "color": "‖v‖"},
            x=[str(p) for p in self.positions.tolist()],
            aspect="auto",
            title="Residual-stream norm per layer and position",
        )


def capture_residuals(
    model: HookedModel,
    tokens: Any,
    *,
    positions: int | Sequence[int] | slice | Tensor | None = None,
    dtype: torch.dtype | str | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> ResidualStates:
    """Residual stream v^(ℓ) at every layer ℓ = 0..n_layers for the requested positions.

    Example:
        >>> states = capture_residuals(model, "1 1 1 1", positions=-1)
        >>> states.states.shape  # [batch, n_layers + 1, 1, d_model]

    Args:
        model: a TransformerBridge or HookedTransformer.
        tokens: text, token ids ``[pos]`` or ``[batch, pos]``.
        positions: query positions to keep (int, list, slice; negative allowed). Default: all.
        dtype: cast the captured states to this dtype (e.g. ``"bfloat16"``); default unchanged.
        batch_size: stream the batch in chunks of this many sequences (bounds peak memory).
        progress: show a progress bar (default: when there is more than one chunk).
    """
    info = _tl.model_info(model)
    toks = _tl.prepare_tokens(model, tokens, info)
    keep = _validate.resolve_positions(positions, toks.shape[1]).to(toks.device)
    out_dtype = _validate.resolve_dtype(dtype)
    if batch_size is None:
        batch_size = toks.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size={batch_size!r} must be a positive int")
    names = [_tl.resid_name(layer) for layer in range(info.n_layers + 1)]
    order = {n: i for i, n in enumerate(names)}

    def keep_positions(name: str, x: Tensor) -> Tensor:
        kept = x.index_select(1, keep)
        return kept.to(out_dtype) if out_dtype is not None else kept

    chunks = list(range(0, toks.shape[0], batch_size))
    show = _validate.progress_flag(progress, len(chunks) > 1)
    parts = []
    for start in tqdm(chunks, desc="capture_residuals", disable=not show, leave=False):
        store = _tl.capture(
            model, toks[start : start + batch_size], names, transform=keep_positions
        )
        parts.append(torch.stack([store[n] for n in sorted(store, key=order.__getitem__)], dim=1))
    return ResidualStates(
        states=torch.cat(parts, dim=0),
        positions=keep.cpu(),
        tokens=toks.cpu(),
        model_name=info.name,
    )
