"""Path expansion of one token's final residual (Elhage et al. 2021; docs/science.md
§"Circuits framework").

With this forward pass frozen (:mod:`.frozen`: patterns and norm divisors fixed), every head is
a linear map ``X ↦ P_h X M_h`` of the residual entering its block, so the residual after the
last block is a sum over *paths*: the embedding X₀ (token + position), then any increasing
chain of heads h₁ (layer ℓ₁) < h₂ (layer ℓ₂) < … applied to it:

    x_L[t] = X₀[t] + Σ_h (P_h X₀ M_h)[t] + Σ_{ℓ₁<ℓ₂} (P_h₂ P_h₁ X₀ M_h₁ M_h₂)[t] + … + rest,

where "rest" holds every path that starts at a bias (b_O, b_V, the norms' β) or at an MLP
output instead of X₀. A path of order k contributes ``r_P X₀ M_P`` with source-position weights
``r_P = e_t P_hk ⋯ P_h1`` — so each term also splits over the source positions it reads.

Terms up to ``max_order`` are returned one by one; the remainder (orders above ``max_order``,
bias-started and MLP-started paths) is computed independently, by propagating those parts of
the residual stream through every block, so ``vectors.sum(0) + remainder`` reproduces the
measured residual only if the frozen linear model is right: ``reconstruction_error`` reports it.
For an attention-only model with ``max_order = n_layers`` the remainder is the bias part only
(0 for a model without biases).

Cost: one forward pass, then for order ≤ 2 about ``n_heads²·n_layers²/2 · (pos + d_head) ·
d_model`` multiply-adds; memory ``terms · d_model`` for the vectors plus one ``[layer, head,
pos, d_model]`` accumulator per order ≥ 1 for the source-position split (per-pair,
per-position vectors are never stored).
"""

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import _tl, _validate
from ..errors import InvalidArgumentError
from .frozen import FrozenForward, freeze
from .result import PathExpansion

__all__ = ["path_expansion", "count_paths"]


def count_paths(n_layers: int, n_heads: int, max_order: int) -> int:
    """Number of terms of the expansion up to ``max_order``, the direct path included:
    ``1 + Σ_{k=1..max_order} C(n_layers, k) · n_heads^k``."""
    return 1 + sum(math.comb(n_layers, k) * n_heads**k for k in range(1, max_order + 1))


def _check_order(max_order: Any, n_layers: int) -> int:
    if isinstance(max_order, bool) or not isinstance(max_order, int):
        raise InvalidArgumentError(f"max_order={max_order!r} must be an int in 1..{n_layers}")
    if not 1 <= max_order <= n_layers:
        raise InvalidArgumentError(
            f"max_order={max_order} is out of range: a path passes at most one head per layer, "
            f"so it must be in 1..{n_layers} (n_layers)"
        )
    return max_order


def path_expansion(
    model: Any,
    tokens: Any,
    *,
    target: int = -1,
    max_order: int = 2,
    max_terms: int = 200_000,
) -> PathExpansion:
    """Split the target's final residual (``hook_resid_post`` of the last block, before the
    final norm) into the direct path, every single-head path, every virtual-head (two-head)
    path, … up to ``max_order``, and a remainder (docs/science.md §"Circuits framework").

    Example:
        >>> exp = path_expansion(model, "3 8 1 9 4 7 2 6 . Answer:", max_order=2)
        >>> exp.vectors.shape  # [terms, d_model]: direct, single heads, head pairs
        >>> exp.logit_contributions(token_id).head()  # terms that push that token most

    Args:
        model: a TransformerBridge or HookedTransformer (left unchanged).
        tokens: one sequence: text, ``[pos]`` or ``[1, pos]`` token ids.
        target: the position whose residual is expanded (negative counts from the end).
        max_order: longest chain of heads listed term by term, 1..n_layers.
        max_terms: refuse (InvalidArgumentError) when the expansion would have more terms
            (``1 + Σ_k C(n_layers, k) n_heads^k``; each is a ``d_model`` vector).

    Returns:
        :class:`PathExpansion`: ``vectors [term, d_model]`` (rows of ``to_dataframe()``),
        ``remainder [d_model]`` and its parts, ``by_position [order, pos, d_model]``, the
        measured ``residual`` and the ``reconstruction_error``.
    """
    info = _tl.require_attention(model)
    toks = _tl.single_sequence(model, tokens, info)
    t = _validate.resolve_index(target, toks.shape[1], name="target")
    order = _check_order(max_order, info.n_layers)
    if isinstance(max_terms, bool) or not isinstance(max_terms, int) or max_terms < 1:
        raise InvalidArgumentError(f"max_terms={max_terms!r} must be a positive int")
    n_terms = count_paths(info.n_layers, info.n_heads, order)
    if n_terms > max_terms:
        raise InvalidArgumentError(
            f"max_order={order} gives {n_terms} terms for {info.n_layers} layers × "
            f"{info.n_heads} heads, more than max_terms={max_terms}; lower max_order or raise "
            "max_terms"
        )
    frozen = freeze(model, toks[:, : t + 1], info)
    paths, vectors, by_position = _expand(frozen, order)
    parts, listed = _remainder(frozen, order)
    store = torch.float64 if _tl.model_dtype(model) == torch.float64 else torch.float32
    w_u, b_u = _tl.unembed(model)
    return PathExpansion(
        paths=tuple(paths),
        vectors=vectors.to(store).cpu(),
        remainder_parts={k: v.to(store).cpu() for k, v in parts.items()},
        listed_check=listed.to(store).cpu(),
        residual=frozen.residual.to(store).cpu(),
        by_position=by_position.to(store).cpu(),
        tokens=frozen.tokens,
        target=t,
        max_order=order,
        final_scale=frozen.final_scale,
        final_gamma=None if frozen.final_gamma is None else frozen.final_gamma.cpu(),
        final_beta=None if frozen.final_beta is None else frozen.final_beta.cpu(),
        final_centres=frozen.centres,
        w_u=w_u,
        b_u=b_u,
        labels=_token_labels(model, frozen.tokens),
        model_name=info.name,
        tokenizer=_tl.text_tokenizer(model),
    )


def _expand(
    frozen: FrozenForward, max_order: int
) -> tuple[list[tuple[tuple[int, int], ...]], Tensor, Float[Tensor, "order pos d_model"]]:
    """Every path up to ``max_order`` (found depth-first over increasing layers, returned by
    order, then layer and head): its vector at the target, and per order the sum over paths
    split by source position."""
    x0, blocks = frozen.embed, frozen.blocks
    n, d = x0.shape
    t = n - 1
    n_layers, n_heads = len(blocks), blocks[0].pos.shape[0]
    paths: list[tuple[tuple[int, int], ...]] = [()]
    vectors: list[Tensor] = [x0[t][None]]
    # acc[k][l, h]: Σ over order-k paths ending at (l, h) of r_P[j] · (X₀ M_prefix)[j]
    acc = [
        torch.zeros(n_layers, n_heads, n, d, dtype=x0.dtype, device=x0.device)
        for _ in range(max_order)
    ]

    def extend(prefix: tuple, y: Tensor, feat: Tensor, weights: Tensor | None) -> None:
        # y: the prefix's output at every position; feat: X₀ M_prefix (position-wise);
        # weights: P_prefix [pos, source] (None for the empty prefix: identity)
        k = len(prefix)
        first = prefix[-1][0] + 1 if prefix else 0
        for layer in range(first, n_layers):
            blk = blocks[layer]
            a = blk.pos[:, t, :]  # [head, pos]: row t of every head's P
            u = torch.einsum("hn,nd->hd", a, y)
            out = torch.einsum("hd,hde,hef->hf", u, blk.v_in, blk.v_out)
            paths.extend(prefix + ((layer, h),) for h in range(n_heads))
            vectors.append(out)
            r = a if weights is None else a @ weights  # [head, source]
            acc[k][layer] += r[:, :, None] * feat[None]
            if k + 1 < max_order:
                for h in range(n_heads):
                    m_y = (y @ blk.v_in[h]) @ blk.v_out[h]
                    m_f = (feat @ blk.v_in[h]) @ blk.v_out[h]
                    p = blk.pos[h] if weights is None else blk.pos[h] @ weights
                    extend(prefix + ((layer, h),), blk.pos[h] @ m_y, m_f, p)

    extend((), x0, x0, None)
    order = sorted(range(len(paths)), key=lambda i: (len(paths[i]), paths[i]))
    paths = [paths[i] for i in order]  # by order, then by layers and heads
    stacked = torch.cat(vectors)[order]
    by_position = torch.zeros(max_order + 1, n, d, dtype=x0.dtype, device=x0.device)
    by_position[0, t] = x0[t]
    for k in range(max_order):
        for layer, blk in enumerate(blocks):
            z = torch.einsum("hnd,hde->hne", acc[k][layer], blk.v_in)
            by_position[k + 1] += torch.einsum("hne,hed->nd", z, blk.v_out)
    return paths, stacked, by_position


def _remainder(
    frozen: FrozenForward, max_order: int
) -> tuple[dict[str, Float[Tensor, " d_model"]], Float[Tensor, " d_model"]]:
    """The target's share of the paths not listed: orders above ``max_order`` (started at the
    embedding), and every path started at an attention bias or an MLP output — found by
    propagating each part of the residual stream through all blocks at every position. Also
    returns what the listed terms must add up to (orders 0..max_order, same propagation)."""
    x0 = frozen.embed
    m = max_order
    # streams: 0..m exact orders, m+1 higher orders, m+2 bias-started, m+3 MLP-started
    streams = torch.zeros(m + 4, *x0.shape, dtype=x0.dtype, device=x0.device)
    streams[0] = x0
    for blk in frozen.blocks:
        out = blk.apply(streams)
        new = streams.clone()
        new[1 : m + 1] += out[:m]
        new[m + 1] += out[m] + out[m + 1]
        new[m + 2] += out[m + 2] + blk.const
        new[m + 3] += out[m + 3] + blk.mlp
        streams = new
    parts = {
        "higher_order": streams[m + 1, -1],
        "attention_bias": streams[m + 2, -1],
        "mlp": streams[m + 3, -1],
    }
    return parts, streams[: m + 1, -1].sum(0)


def _token_labels(model: Any, ids: Tensor) -> tuple[str, ...]:
    tokenizer = _tl.text_tokenizer(model)
    if tokenizer is None:
        return tuple(str(i) for i in ids.tolist())
    return tuple(tokenizer.decode([i]) for i in ids.tolist())
