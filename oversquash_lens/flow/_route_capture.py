"""The one forward pass behind :func:`~oversquash_lens.information_flow`: the residuals,
patterns (packed as they arrive, :mod:`._causal`), values and MLP outputs of one sequence, plus
the weights ``W_O``, ``b_O`` and the post-attention norms read off the same pass
(docs/science.md §8 "The residual as a sum of parts")."""

from typing import Any

import torch
from torch import Tensor

from .. import _tl
from ..errors import UnsupportedModelError
from ._causal import CausalPatterns, pack_causal

__all__ = ["capture_routes"]


def capture_routes(model: Any, toks: Tensor, info: Any) -> dict[str, Any]:
    """One forward pass with hooks: the tensors of :class:`FlowRoutes` (float32, one sequence)
    plus the weights ``W_O``, ``b_O`` and the post-attention norms."""
    n_layers = info.n_layers
    post = [_tl.has_post_attn_norm(model, b) for b in range(n_layers)]
    if any(post) and (not all(post) or _tl.centres_before_norm(model)):
        raise UnsupportedModelError(
            f"model {info.name!r}: a post-attention LayerNorm (or one on only some blocks) is not "
            "supported; only RMS-type post-attention norms on every block are"
        )
    names = [_tl.resid_name(n_layers)]
    for b in range(n_layers):
        names += [_tl.resid_name(b), _tl.pattern_name(b), _tl.v_name(b), _tl.mlp_out_name(b)]
        if post[b]:
            names += list(_tl.post_attn_norm_names(b))
    packed = {_tl.pattern_name(b) for b in range(n_layers)}

    def keep(name: str, x: Tensor) -> Tensor:  # patterns packed as they arrive
        kept = _keep(name, x)
        if name not in packed:
            return kept
        out = pack_causal(kept)
        _check_causal(kept, out, name, info.name)
        return out

    store = _tl.capture(model, toks, names, transform=keep)
    n = toks.shape[1]
    patterns = CausalPatterns([store.pop(_tl.pattern_name(b)) for b in range(n_layers)], n)
    # popped while stacked: each group's per-layer copies are freed before the next is stacked
    resid = torch.stack([store.pop(_tl.resid_name(b)) for b in range(n_layers + 1)])
    values, mlp_out = (
        torch.stack([store.pop(name(b)) for b in range(n_layers)])
        for name in (_tl.v_name, _tl.mlp_out_name)
    )
    w_o = torch.stack([_tl.w_o(model, b).float() for b in range(n_layers)]).to(resid.device)
    biases = [_tl.b_o(model, b) for b in range(n_layers)]
    b_o = None if any(x is None for x in biases) else torch.stack(biases).float().to(resid.device)  # type: ignore[arg-type]
    weight = inv_scale = None
    if any(post):
        weight, inv_scale = _post_norms(store, n_layers, info.name)
    return {
        "resid": resid,
        "causal_patterns": patterns,
        "values": values,
        "w_o": w_o,
        "b_o": b_o,
        "mlp_out": mlp_out,
        "norm_weight": weight,
        "norm_inv_scale": inv_scale,
    }


def _check_causal(pattern: Tensor, packed: Tensor, name: str, model: str) -> None:
    """Refuse attention with weight on keys after their query: packing keeps only ``key ≤
    query``. Post-softmax weights are non-negative, so any such weight shows as a total over
    each head above the packed triangle's (one pass over the pattern, no copy)."""
    # float32 sums: a dtype=float64 sum would first copy the whole pattern to float64
    full, kept = pattern.sum((-2, -1)), packed.sum(-1)
    excess = float((full - kept).abs().max())
    if excess > 1e-4 * max(1.0, float(kept.abs().max())):
        raise UnsupportedModelError(
            f"model {model!r}: {name} puts weight {excess:.3g} on keys after their query "
            "(attention that is not causal, e.g. from a hook or a bidirectional model); "
            "information_flow decomposes causal attention only"
        )


def _keep(name: str, x: Tensor) -> Tensor:
    """Hook transform: the one sequence, as float32."""
    return x[0].float()


def _post_norms(store: dict[str, Tensor], n_layers: int, name: str) -> tuple[Tensor, Tensor]:
    """``([layer, d_model] weight, [layer, pos] 1/rms)`` of the post-attention norms, from this
    forward pass: ``out = in / scale · w``, ``w`` read per coordinate at the position where the
    normalised input is largest (so no division by a near-zero entry)."""
    weights, invs = [], []
    for b in range(n_layers):
        x_in, scale, out = (store[n] for n in _tl.post_attn_norm_names(b))
        inv = 1.0 / scale.reshape(-1)  # [pos]
        normed = x_in * inv[:, None]
        best = normed.abs().argmax(0)  # [d_model]
        cols = torch.arange(normed.shape[1], device=normed.device)
        w = out[best, cols] / normed[best, cols]
        w = torch.where(normed[best, cols] == 0, torch.zeros_like(w), w)
        if float((normed * w - out).abs().max()) > 1e-3 * max(1.0, float(out.abs().max())):
            raise UnsupportedModelError(
                f"model {name!r}: the post-attention norm of block {b} is not x / scale · w"
            )
        weights.append(w)
        invs.append(inv)
    return torch.stack(weights), torch.stack(invs)
