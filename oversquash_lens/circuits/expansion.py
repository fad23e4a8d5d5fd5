"""Path expansion of one token's final residual (Elhage et al. 2021; docs/science.md
§"Circuits framework").

With this forward pass frozen (:mod:`.frozen`: patterns and norm divisors fixed), every head is
a linear map ``X ↦ P_h X M_h`` of the residual entering its block, so the residual after the
last block is a sum over *paths*: a source — the embedding X₀ (token + position) — then any
increasing chain of heads h₁ (layer ℓ₁) < h₂ (layer ℓ₂) < … applied to it:

    x_L[t] = X₀[t] + Σ_h (P_h X₀ M_h)[t] + Σ_{ℓ₁<ℓ₂} (P_h₂ P_h₁ X₀ M_h₁ M_h₂)[t] + … + rest.

A path of order k contributes ``r_P X₀ M_P`` with source-position weights
``r_P = e_t P_hk ⋯ P_h1``, so each term also splits over the source positions it reads.
"rest" holds the paths that start at a bias (b_O, b_V, the norms' β) or at an MLP output. With
``mlp_order`` the MLP outputs become sources too: the write of MLP ℓ (taken as measured) and its
paths through up to ``mlp_order`` heads of later layers are listed as terms ``"MLP3"``,
``"MLP3 → L5H2"``.

Terms are returned one by one; the remainder (orders above the limits, bias-started paths, MLP
paths not listed) is computed independently, by propagating those parts of the residual stream
through every block at every position, so ``vectors.sum(0) + remainder`` reproduces the
measured residual only if the frozen linear model is right (``reconstruction_error``). For an
attention-only model with ``max_order = n_layers`` the remainder is the bias part only (0 for a
model without biases).

Cost, SmolLM2-135M at 64 tokens, order 2 (35,506 terms): ~4.3 CPU-seconds (one thread) and
~0.4 GiB peak — the frozen per-head factors (float64, ~160 MiB, independent of length), the
term vectors (float32, 78 MiB) and one ``[layer, head, pos, d_model]`` float64 accumulator per
order ≥ 2 for the source-position split (80 MiB, ∝ pos); per-pair, per-position vectors are
never stored. Prefixes are processed a whole layer of heads at a time (batched products).
"""

import itertools
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

Path = tuple[tuple[int, int], ...]


def count_paths(n_layers: int, n_heads: int, max_order: int, mlp_order: int | None = None) -> int:
    """Number of terms of the expansion: ``1 + Σ_{k=1..max_order} C(n_layers, k) n_heads^k``
    from the embedding, plus with ``mlp_order`` for each MLP ℓ ``Σ_{k=0..mlp_order}
    C(n_layers − ℓ − 1, k) n_heads^k``."""
    total = sum(math.comb(n_layers, k) * n_heads**k for k in range(max_order + 1))
    if mlp_order is not None:
        for layer in range(n_layers):
            rest = n_layers - layer - 1
            total += sum(math.comb(rest, k) * n_heads**k for k in range(mlp_order + 1))
    return total


def _check_order(value: Any, n_layers: int, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name}={value!r} must be an int in {low}..{n_layers}")
    if not low <= value <= n_layers:
        raise InvalidArgumentError(
            f"{name}={value} is out of range: a path passes at most one head per layer, so it "
            f"must be in {low}..{n_layers} (n_layers)"
        )
    return value


def path_expansion(
    model: Any,
    tokens: Any,
    *,
    target: int = -1,
    max_order: int = 2,
    mlp_order: int | None = None,
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
        max_order: longest chain of heads from the embedding listed term by term, 1..n_layers.
        mlp_order: also list each MLP output and its paths through up to this many heads
            (0..n_layers − 1); None leaves every MLP-started path in the remainder.
        max_terms: refuse (InvalidArgumentError) when the expansion would have more terms
            (:func:`count_paths`; each is a ``d_model`` vector).

    Returns:
        :class:`PathExpansion`: ``vectors [term, d_model]`` (rows of ``to_dataframe()``),
        ``remainder [d_model]`` and its parts, ``by_position`` (per source kind ``[order, pos,
        d_model]``), the measured ``residual`` and the ``reconstruction_error``. Positions
        after the target are not run (causal attention), so ``tokens`` stops at the target.
    """
    info = _tl.require_attention(model)
    toks = _tl.single_sequence(model, tokens, info)
    t = _validate.resolve_index(target, toks.shape[1], name="target")
    order = _check_order(max_order, info.n_layers, "max_order", 1)
    if mlp_order is not None:
        mlp_order = _check_order(mlp_order, info.n_layers - 1, "mlp_order", 0)
    if isinstance(max_terms, bool) or not isinstance(max_terms, int) or max_terms < 1:
        raise InvalidArgumentError(f"max_terms={max_terms!r} must be a positive int")
    n_terms = count_paths(info.n_layers, info.n_heads, order, mlp_order)
    if n_terms > max_terms:
        raise InvalidArgumentError(
            f"max_order={order}, mlp_order={mlp_order} give {n_terms} terms for "
            f"{info.n_layers} layers × {info.n_heads} heads, more than max_terms={max_terms}; "
            "lower the orders or raise max_terms"
        )
    if getattr(model.cfg, "attn_only", False):
        mlp_order = None  # no MLP to list
    frozen = freeze(model, toks[:, : t + 1], info)
    store = torch.float64 if _tl.model_dtype(model) == torch.float64 else torch.float32
    terms = _enumerate(info.n_layers, info.n_heads, order, mlp_order)
    vectors, by_position = _expand(frozen, terms, order, mlp_order, store)
    parts, listed = _remainder(frozen, order, mlp_order)
    w_u, b_u = _tl.unembed(model)
    final = (frozen.final_gamma, frozen.final_beta)
    return PathExpansion(
        sources=tuple(s for s, _ in terms),
        paths=tuple(p for _, p in terms),
        vectors=vectors.cpu(),
        remainder_parts={k: v.to(store).cpu() for k, v in parts.items()},
        listed_check=listed.to(store).cpu(),
        residual=frozen.residual.to(store).cpu(),
        by_position={k: v.to(store).cpu() for k, v in by_position.items()},
        tokens=frozen.tokens,
        target=t,
        max_order=order,
        mlp_order=mlp_order,
        final_scale=frozen.final_scale,
        final_gamma=None if final[0] is None else final[0].cpu(),
        final_beta=None if final[1] is None else final[1].cpu(),
        final_centres=frozen.centres,
        w_u=w_u,
        b_u=b_u,
        labels=_token_labels(model, frozen.tokens),
        model_name=info.name,
        tokenizer=_tl.text_tokenizer(model),
    )


def _enumerate(
    n_layers: int, n_heads: int, max_order: int, mlp_order: int | None
) -> list[tuple[str, Path]]:
    """Every term ``(source, path)`` in output order: the embedding's paths by order, then
    each MLP's (paths sorted by layer, head of their first head, then second, ...)."""
    sources = [("embed", 0, max_order)]
    if mlp_order is not None:
        sources += [(f"MLP{layer}", layer + 1, mlp_order) for layer in range(n_layers)]
    terms = []
    for name, first, top in sources:
        for k in range(top + 1):
            paths = [
                tuple(zip(layers, heads))
                for layers in itertools.combinations(range(first, n_layers), k)
                for heads in itertools.product(range(n_heads), repeat=k)
            ]
            terms += [(name, p) for p in sorted(paths)]
    return terms


def _expand(
    frozen: FrozenForward,
    terms: list[tuple[str, Path]],
    max_order: int,
    mlp_order: int | None,
    store: torch.dtype,
) -> tuple[Float[Tensor, "term d_model"], dict[str, Tensor]]:
    """Every term's vector at the target (written in place, in the order of ``terms``), and
    per source kind and order the sum over its paths split by source position."""
    x0, blocks = frozen.embed, frozen.blocks
    n, d = x0.shape
    t = n - 1
    n_layers, n_heads = len(blocks), blocks[0].pos.shape[0]
    index = {term: i for i, term in enumerate(terms)}
    vectors = torch.zeros(len(terms), d, dtype=store, device=x0.device)
    kinds = {"embed": max_order} | ({"mlp": mlp_order} if mlp_order is not None else {})
    by_position = {k: torch.zeros(top + 1, n, d, dtype=x0.dtype) for k, top in kinds.items()}
    # acc[kind][k][l, h]: Σ over order-k paths ending at (l, h) of r_P[j] (X_src M_prefix)[j]
    acc = {
        kind: {
            k: torch.zeros(n_layers, n_heads, n, d, dtype=x0.dtype, device=x0.device)
            for k in range(2, top + 1)
        }
        for kind, top in kinds.items()
    }

    def extend(
        kind: str,
        src: str,
        group: list[Path],
        y: Tensor,
        feat: Tensor,
        weights: Tensor | None,
        first: int,
        top: int,
    ) -> None:
        # group: B prefixes ending in one layer; y [B, pos, d]: their outputs at every position;
        # feat [B, pos, d]: X_src M_prefix (position-wise); weights [B, pos, source]: P_prefix
        k = len(group[0])
        for layer in range(first, n_layers):
            blk = blocks[layer]
            a = blk.pos[:, t, :]  # [head, pos]: row t of every head's P
            u = torch.einsum("hn,bnd->hbd", a, y)
            out = torch.bmm(torch.bmm(u, blk.v_in), blk.v_out)  # [head, B, d]
            rows = [index[src, p + ((layer, h),)] for p in group for h in range(n_heads)]
            vectors[rows] = out.transpose(0, 1).reshape(-1, d).to(store)
            if k >= 1:  # order >= 2: split by source position through the prefix weights
                r = torch.einsum("hn,bnm->bhm", a, weights)
                acc[kind][k + 1][layer] += torch.einsum("bhm,bmd->hmd", r, feat)
            if k + 1 < top:
                z = torch.einsum("bnd,hde->bhne", y, blk.v_in)
                m_y = torch.einsum("bhne,hed->bhnd", z, blk.v_out)
                z_f = torch.einsum("bnd,hde->bhne", feat, blk.v_in)
                m_f = torch.einsum("bhne,hed->bhnd", z_f, blk.v_out)
                new_y = torch.matmul(blk.pos[None], m_y)  # [B, head, pos, d]
                new_w = blk.pos[None].expand(len(group), -1, -1, -1)
                if weights is not None:
                    new_w = torch.matmul(new_w, weights[:, None])
                new = [p + ((layer, h),) for p in group for h in range(n_heads)]
                flat_y, flat_f, flat_w = (part.flatten(0, 1) for part in (new_y, m_f, new_w))
                extend(kind, src, new, flat_y, flat_f, flat_w, layer + 1, top)

    sources = [("embed", "embed", x0, 0)]
    if mlp_order is not None:
        sources += [("mlp", f"MLP{b}", blk.mlp, b + 1) for b, blk in enumerate(blocks)]
    for kind, src, x, first in sources:
        vectors[index[src, ()]] = x[t].to(store)
        by_position[kind][0, t] += x[t].cpu()
        if kinds[kind] >= 1:
            extend(kind, src, [()], x[None], x[None], None, first, kinds[kind])
    # order 1 split by source position: Σ_h a_h[j] (S[j] M_h), S = the sources a layer reads
    cumulative = torch.zeros_like(x0)
    for blk in blocks:
        a = blk.pos[:, t, :]
        reads = {"embed": x0} | ({"mlp": cumulative} if kinds.get("mlp", 0) >= 1 else {})
        for kind, s in reads.items():
            z = torch.einsum("nd,hde->hne", s, blk.v_in) * a[:, :, None]
            by_position[kind][1] += torch.einsum("hne,hed->nd", z, blk.v_out).cpu()
        cumulative = cumulative + blk.mlp
    for kind, orders in acc.items():
        for k, grid in orders.items():
            for layer, blk in enumerate(blocks):
                z = torch.einsum("hnd,hde->hne", grid[layer], blk.v_in)
                by_position[kind][k] += torch.einsum("hne,hed->nd", z, blk.v_out).cpu()
    return vectors, by_position


def _remainder(
    frozen: FrozenForward, max_order: int, mlp_order: int | None
) -> tuple[dict[str, Float[Tensor, " d_model"]], Float[Tensor, " d_model"]]:
    """The target's share of the paths not listed — embedding paths above ``max_order``, every
    bias-started path, MLP-started paths above ``mlp_order`` (all of them when None) — found by
    propagating each part of the residual stream through all blocks at every position. Also
    returns what the listed terms must add up to (the listed orders, same propagation)."""
    x0 = frozen.embed
    m, q = max_order, -1 if mlp_order is None else mlp_order
    # streams: embed orders 0..m, embed above m, bias-started, MLP orders 0..q, MLP above q
    e_hi, bias, mlp0 = m + 1, m + 2, m + 3
    m_hi = mlp0 + q + 1
    streams = torch.zeros(m_hi + 1, *x0.shape, dtype=x0.dtype, device=x0.device)
    streams[0] = x0
    for blk in frozen.blocks:
        out = blk.apply(streams)
        new = streams.clone()
        new[1:e_hi] += out[: e_hi - 1]
        new[e_hi] += out[e_hi - 1] + out[e_hi]
        new[bias] += out[bias] + blk.const
        new[mlp0 + 1 : m_hi] += out[mlp0 : m_hi - 1]
        new[m_hi] += out[m_hi] + (out[m_hi - 1] if q >= 0 else 0)
        new[mlp0 if q >= 0 else m_hi] += blk.mlp
        streams = new
    parts = {
        "higher_order": streams[e_hi, -1],
        "attention_bias": streams[bias, -1],
        "mlp": streams[m_hi, -1],
    }
    listed = streams[:e_hi, -1].sum(0) + streams[mlp0:m_hi, -1].sum(0)
    return parts, listed


def _token_labels(model: Any, ids: Tensor) -> tuple[str, ...]:
    tokenizer = _tl.text_tokenizer(model)
    if tokenizer is None:
        return tuple(str(i) for i in ids.tolist())
    return tuple(tokenizer.decode([i]) for i in ids.tolist())
