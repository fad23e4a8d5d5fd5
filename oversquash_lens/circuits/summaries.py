"""Per-head summaries of the OV and QK circuits from the weights alone (Elhage et al. 2021;
docs/science.md §"Circuits framework").

- ``ov_copying`` = Σ Re λ / Σ |λ| over the eigenvalues λ of W_OV = W_V W_O (+1: the head
  copies what it reads, −1: it writes the opposite) and ``ov_neg_fraction`` = the share of
  |λ| mass with Re λ < 0 (candidate erasure): both from
  :func:`oversquash_lens.heads.scores.ov_scores`, not recomputed here.
- ``qk_self`` = tr(W_QK) / ‖W_QK‖_* with W_QK = W_Q W_K^T, in [−1, 1]. For an input x drawn
  isotropically, E[x W_QK x^T] = tr(W_QK) is the mean score of a token's query against its *own*
  key, and ‖W_QK‖_* = max over rotations O of tr(W_QK O) is the largest that mean could be for
  a bilinear form with these singular values (equivalently the minimum of ‖W_Q‖_F ‖W_K‖_F over
  all factorisations, so ``qk_self`` is the best-case cosine between queries and keys of the
  same input: Round and Round's "q·k near the Cauchy–Schwarz bound ‖q‖‖k‖" on diagonal heads).
  It is 1 exactly when W_QK is symmetric positive semi-definite (every key points where its own
  query looks), 0 for a head that ignores self-similarity, negative for one that avoids it. With
  RoPE the query and key of the *same* position are rotated alike, so the score is exact at
  relative distance 0, where a diagonal head lives.
- ``qk_eig_positive`` = Σ Re λ / Σ |λ| over the eigenvalues of W_QK (the OV copying score's
  analogue; ≥ ``qk_self`` in absolute value since Σ|λ| ≤ Σσ).
- ``ov_norm`` and ``qk_norm``: Frobenius norms ‖W_OV‖_F and ‖W_QK‖_F.

Everything is computed on d_head × d_head cores (QR of the factors); nothing is d_model².
"""

from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .. import _tl
from ..heads.scores import ov_scores
from .composition import _flag, _left_core, block_factors

__all__ = ["circuit_summaries", "qk_scores"]

Grid = Float[Tensor, "layer head_index"]


def qk_scores(
    w_q: Float[Tensor, "... d_model d_head"], w_k: Float[Tensor, "... d_model d_head"]
) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."], Float[Tensor, "..."]]:
    """``(qk_self, qk_eig_positive, qk_norm)`` of W_QK = W_Q W_K^T for each leading index
    (see the module docstring); NaN where W_QK is exactly zero."""
    w_q, w_k = w_q.double(), w_k.double()
    trace = (w_q * w_k).sum((-2, -1))
    r_q = torch.linalg.qr(w_q, mode="r")[1]
    r_k = torch.linalg.qr(w_k, mode="r")[1]
    sigma = torch.linalg.svdvals(r_q @ r_k.transpose(-2, -1))  # singular values of W_QK
    lam = torch.linalg.eigvals(w_k.transpose(-2, -1) @ w_q)  # nonzero spectrum of W_QK
    return (
        trace / sigma.sum(-1),
        lam.real.sum(-1) / lam.abs().sum(-1),
        sigma.square().sum(-1).sqrt(),
    )


def circuit_summaries(model: Any, *, fold_norm: bool = True) -> pd.DataFrame:
    """One row per head: ``block``, ``head``, ``name`` (``"L0H3"``), ``ov_copying``,
    ``ov_neg_fraction``, ``qk_self``, ``qk_eig_positive``, ``ov_norm``, ``qk_norm``
    (definitions in the module docstring; docs/science.md §"Circuits framework").

    Example:
        >>> table = circuit_summaries(model)
        >>> table.sort_values("qk_self", ascending=False).head()  # diagonal-head candidates

    Args:
        model: a TransformerBridge or HookedTransformer (read only).
        fold_norm: fold each block's pre-attention norm scale γ into W_Q, W_K and W_V (as
            :func:`~oversquash_lens.circuits.composition_scores` does), so the circuits are
            the ones the head applies to the normalised residual.
    """
    info = _tl.model_info(model)
    fold_norm = _flag(fold_norm, "fold_norm")
    ov_copying, ov_neg, _ = ov_scores(model, info.n_layers, fold_norm=fold_norm)
    rows = []
    for block in range(info.n_layers):  # one block's weights in memory at a time
        f, _ = block_factors(model, block, fold_norm=fold_norm)
        ov_norm = _left_core(f["V"], f["O"]).square().sum((-2, -1)).sqrt()
        rows.append(torch.stack([*qk_scores(f["Q"], f["K"]), ov_norm]))
    qk_self, qk_eig, qk_norm, ov_norm = torch.stack(rows, dim=1)  # each [layer, head]
    n_layers, n_heads = info.n_layers, info.n_heads
    frame = pd.DataFrame(
        {
            "block": [block for block in range(n_layers) for _ in range(n_heads)],
            "head": list(range(n_heads)) * n_layers,
        }
    )
    frame["name"] = [f"L{a}H{b}" for a, b in zip(frame["block"], frame["head"])]
    columns = {
        "ov_copying": ov_copying,
        "ov_neg_fraction": ov_neg,
        "qk_self": qk_self,
        "qk_eig_positive": qk_eig,
        "ov_norm": ov_norm,
        "qk_norm": qk_norm,
    }
    for name, grid in columns.items():
        frame[name] = grid.double().flatten().numpy()
    return frame
