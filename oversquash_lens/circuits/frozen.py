"""One forward pass, frozen into a linear model of every attention head (docs/science.md
§"Circuits framework", path expansion).

With the attention patterns A and the norms' per-position divisors σ fixed at their values in
this forward pass, what head h of block ℓ adds to the residual is *linear* in the residual
X [pos, d_model] entering the block, plus a constant:

    head_h(X) = P_h X M_h + const,     P_h = diag(1/ρ) A_h diag(1/σ)     (positions × positions)
                                       M_h = C diag(γ) W_V^h W_O^h C' diag(γ')   (d_model²)

σ and γ are the pre-attention norm's divisor and scale (LayerNorm also centres: C = I − 11^T/d);
ρ, C' and γ' belong to a post-attention norm where the block has one (Gemma 2/3 ``ln1_post``;
otherwise identity). M_h is kept as its factors ``v_in = C diag(γ) W_V`` [d_model, d_head] and
``v_out = W_O C' diag(γ')`` [d_head, d_model]. The constant collects what does not depend on X:
Σ_h (rowsum A_h)(β W_V^h + b_V^h) W_O^h + b_O (β: the pre-norm's bias), passed through the
post-norm. The MLP's write is taken as measured (it is not linear): ``resid_post − resid_mid``
for sequential blocks, ``hook_mlp_out`` for parallel ones (GPT-NeoX), nothing for attention-only
models.

Only positions up to the target are run (causal attention: later ones cannot matter).
"""

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .. import _tl


@dataclass(frozen=True)
class FrozenBlock:
    """The frozen linear map of one attention block (float64)."""

    pos: Float[Tensor, "head_index pos pos"]  # P_h = diag(1/ρ) A_h diag(1/σ)
    v_in: Float[Tensor, "head_index d_model d_head"]
    v_out: Float[Tensor, "head_index d_head d_model"]
    const: Float[Tensor, "pos d_model"]  # biases written by the attention block
    mlp: Float[Tensor, "pos d_model"]  # the MLP's measured write (zeros when there is none)

    def apply(self, x: Float[Tensor, "stream pos d_model"]) -> Float[Tensor, "stream pos d_model"]:
        """Σ_h P_h X M_h for a stack of residual-stream parts (no constant)."""
        z = torch.einsum("snd,hde->shne", x, self.v_in)
        z = torch.matmul(self.pos, z)
        return torch.einsum("shne,hed->snd", z, self.v_out)


@dataclass(frozen=True)
class FrozenForward:
    """Everything path expansion needs from one forward pass (float64, positions ≤ target)."""

    tokens: Int[Tensor, " pos"]
    embed: Float[Tensor, "pos d_model"]  # residual entering block 0 (token + position)
    blocks: tuple[FrozenBlock, ...]
    residual: Float[Tensor, " d_model"]  # the target's hook_resid_post of the last block
    final_scale: float  # the final norm's divisor at the target (1 when there is none)
    final_gamma: Float[Tensor, " d_model"] | None
    final_beta: Float[Tensor, " d_model"] | None
    centres: bool  # whether the model's norms subtract the mean (LayerNorm)


def _work_device(model: Any) -> torch.device:
    device = _tl.model_device(model)
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


def _centre_rows(w: Tensor) -> Tensor:
    """``C W`` for C = I − 11^T/d acting on the d_model axis (second to last)."""
    return w - w.mean(-2, keepdim=True)


def freeze(model: Any, tokens: Int[Tensor, "1 pos"], info: _tl.ModelInfo) -> FrozenForward:
    """Run ``tokens`` once (hooks removed afterwards, model unchanged) and freeze it."""
    n_layers = info.n_layers
    hook_dict = getattr(model, "hook_dict", {}) or {}
    attn_only = bool(getattr(model.cfg, "attn_only", False))
    centres = _tl.centres_before_norm(model)
    pre = [_tl.norm_scale_name(_tl.ln1_path(b)) for b in range(n_layers)]
    post = [_tl.post_attn_norm_names(b)[1] for b in range(n_layers)]
    has_pre = [n in hook_dict for n in pre]
    has_post = [_tl.has_post_attn_norm(model, b) for b in range(n_layers)]
    final = _tl.norm_scale_name(_tl.FINAL_NORM)
    names = [_tl.resid_name(0), _tl.resid_name(n_layers)]
    names += [_tl.pattern_name(b) for b in range(n_layers)]
    names += [n for n, keep in zip(pre, has_pre) if keep]
    names += [n for n, keep in zip(post, has_post) if keep]
    if final in hook_dict:
        names.append(final)
    if not attn_only:
        if info.has_resid_mid:
            names += [_tl.resid_mid_name(b) for b in range(n_layers)]
            names += [_tl.resid_name(b + 1) for b in range(n_layers - 1)]
        else:
            names += [_tl.mlp_out_name(b) for b in range(n_layers)]
    store = _tl.capture(model, tokens, list(dict.fromkeys(names)))
    device = _work_device(model)

    def get(name: str) -> Tensor:
        return store[name][0].to(device=device, dtype=torch.float64)

    def weight(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device=device, dtype=torch.float64)

    n = tokens.shape[1]
    blocks = []
    for b in range(n_layers):
        pattern = get(_tl.pattern_name(b))  # [head, query, key]
        sigma = (
            get(pre[b])[:, 0] if has_pre[b] else torch.ones(n, dtype=torch.float64, device=device)
        )
        gamma, beta = map(weight, _tl.norm_params(model, _tl.ln1_path(b)))
        w_v = _tl.w_v(model, b).to(device=device, dtype=torch.float64)
        w_o = _tl.w_o(model, b).to(device=device, dtype=torch.float64)
        v_in = w_v if gamma is None else gamma[None, :, None] * w_v
        if centres and has_pre[b]:
            v_in = _centre_rows(v_in)
        # constant value per head: β W_V + b_V, weighted by each query row's total attention
        value_bias = torch.zeros(w_v.shape[0], w_v.shape[2], dtype=torch.float64, device=device)
        if beta is not None and has_pre[b]:
            value_bias = value_bias + torch.einsum("d,hde->he", beta, w_v)
        b_v = weight(_tl.b_v(model, b))
        if b_v is not None:
            value_bias = value_bias + b_v
        const = torch.einsum("hq,he,hed->qd", pattern.sum(-1), value_bias, w_o)
        b_o = weight(_tl.b_o(model, b))
        if b_o is not None:
            const = const + b_o
        v_out, pos = w_o, pattern / sigma[None, None, :]
        if has_post[b]:
            rho = get(post[b])[:, 0]
            g_post, b_post = map(weight, _tl.norm_params(model, _tl.ln1_post_path(b)))
            if centres:
                v_out = v_out - v_out.mean(-1, keepdim=True)
                const = const - const.mean(-1, keepdim=True)
            if g_post is not None:
                v_out, const = v_out * g_post, const * g_post
            pos = pos / rho[None, :, None]
            const = const / rho[:, None] + (0 if b_post is None else b_post)
        if attn_only:
            mlp = torch.zeros(n, info.d_model, dtype=torch.float64, device=device)
        elif info.has_resid_mid:
            mlp = get(_tl.resid_name(b + 1)) - get(_tl.resid_mid_name(b))
        else:
            mlp = get(_tl.mlp_out_name(b))
        blocks.append(FrozenBlock(pos=pos, v_in=v_in, v_out=v_out, const=const, mlp=mlp))
    g_final, b_final = map(weight, _tl.norm_params(model, _tl.FINAL_NORM))
    has_final = final in store
    return FrozenForward(
        tokens=tokens[0].cpu(),
        embed=get(_tl.resid_name(0)),
        blocks=tuple(blocks),
        residual=get(_tl.resid_name(n_layers))[-1],
        final_scale=float(store[final][0, -1, 0]) if has_final else 1.0,
        final_gamma=g_final if has_final else None,
        final_beta=b_final if has_final else None,
        centres=centres and has_final,
    )
