"""Tiny models with hand-planted attention heads: ground truth for :func:`classify_heads`.

``planted_heads_model()`` edits layer 0 of a tiny RoPE Llama with grouped-query attention
(10 query heads, 5 K/V heads) so that five heads have a known behaviour — a diagonal no-op,
a BOS sink, a previous-token head, a diagonal eraser and a diagonal copier — and every other
head stays random. ``nope_qk_model()`` applies the "q = k" edit to a GPT-2 with its position
embeddings zeroed (NoPE): "Round and Round We Go!" (Prop 5.2) shows that without positional
information no such edit gives a diagonal head, because identical tokens have identical keys.
Both build offline in well under a second (see :mod:`oversquash_lens.testing`).
"""

import math
from typing import Any

import torch

from ..errors import InvalidArgumentError
from . import tiny as testing

__all__ = ["PLANTED", "planted_heads_model", "nope_qk_model"]

D, H, KV, DH = 80, 10, 5, 8  # Llama: 10 query heads, 5 K/V heads (pairs share a key head)
SIZE = 20.0  # |q| = |k| of planted heads: logit gaps of ~30 nats
#: Layer-0 head index -> the label :func:`classify_heads` should give it; all others: mixing.
PLANTED = {0: "diagonal-noop", 2: "bos-sink", 4: "previous-token", 6: "diagonal-eraser"}
PLANTED |= {8: "diagonal"}


def planted_heads_model() -> Any:
    """Layer 0 of a fresh tiny RoPE Llama with planted heads (the label in ``PLANTED``).

    Every token embedding gets a constant feature (dim 0), a BOS indicator (dim 1: +1 at BOS,
    −1 elsewhere) and equal norm, so after RMSNorm a query/key that reads dim 0 is the same
    vector at every position. Planted queries/keys live in chosen rotary pairs (dims p, p+4);
    the other query head sharing the K/V head (head + 1) has its query zeroed on those dims,
    so it keeps its random, unplanted pattern.
    """
    model = testing.tiny_model("llama", d_model=D, n_layers=2, n_heads=H, n_kv_heads=KV, seed=1)
    hf = model.original_model.model
    attn = hf.layers[0].self_attn
    q, k, o, v = (attn.q_proj.weight, attn.k_proj.weight, attn.o_proj.weight, attn.v_proj.weight)
    theta = hf.rotary_emb.inv_freq  # 1, 0.1, 0.01, 0.001
    unit = math.sqrt(D / 3)  # |normalised dim 0| = |normalised dim 1| for every token

    def rows(head, dims):
        return [head * DH + d for d in dims]

    def plant(head, q_vec, k_vec, feature=0):
        dims = (q_vec != 0).nonzero().flatten().tolist()
        dims = sorted({d % (DH // 2) for d in dims} | {d % (DH // 2) + DH // 2 for d in dims})
        q[rows(head, range(DH))] = 0
        q[rows(head, range(DH)), 0] = q_vec / unit
        k[rows(head // (H // KV), dims)] = 0
        k[rows(head // (H // KV), dims), feature] = k_vec[dims] / unit
        q[rows(head + 1, dims)] = 0

    with torch.no_grad():
        emb = hf.embed_tokens.weight
        rest = torch.randn(emb.shape[0], D - 2, generator=torch.Generator().manual_seed(0))
        emb[:, 2:] = rest / rest.norm(dim=1, keepdim=True)  # (the pad row was all zeros)
        emb[:, 0], emb[:, 1], emb[0, 1] = 1.0, -1.0, 1.0
        const = torch.zeros(DH)
        const[[0, 1]] = SIZE  # q = k in the two fastest rotary pairs: only j = i scores max
        plant(0, const, const)
        o[:, 0:DH] = 0  # writes nothing
        sink = torch.zeros(DH)
        sink[3] = SIZE  # slowest pair (cos(0.001 t) ≈ 1); key = ±SIZE from the BOS indicator
        plant(2, sink, sink, feature=1)
        prev = torch.zeros(DH)
        prev[[0, 1]] = SIZE * torch.cos(theta[[0, 1]])
        prev[[4, 5]] = SIZE * torch.sin(theta[[0, 1]])
        plant(4, const, prev)  # key pre-rotated by one position: j = i − 1 scores max
        plant(6, const, const)
        o[:, 6 * DH : 7 * DH] = -5.0 * v[3 * DH : 4 * DH].T  # W_O = −5 W_V^T: erases
        plant(8, const, const)
        o[:, 8 * DH : 9 * DH] = 5.0 * v[4 * DH : 5 * DH].T  # W_O = +5 W_V^T: copies
    return model


def nope_qk_model(edit: str = "token") -> Any:
    """Tiny GPT-2 with its position embeddings zeroed (NoPE) and head 0 of layer 0 set to
    q = k: ``"constant"`` (W_Q = W_K = 0, equal large biases) or ``"token"`` (W_K = W_Q, large)."""
    if edit not in ("token", "constant"):
        raise InvalidArgumentError(f"edit={edit!r} is not 'token' or 'constant'")
    model = testing.tiny_model("gpt2", seed=2)
    hf = model.original_model.transformer
    d = model.cfg.d_model
    with torch.no_grad():
        hf.wpe.weight.zero_()
        w, b = hf.h[0].attn.c_attn.weight, hf.h[0].attn.c_attn.bias
        if edit == "constant":
            w[:, 0:8], w[:, d : d + 8] = 0, 0
            b[0:8], b[d : d + 8] = 20.0, 20.0
        else:
            w[:, 0:8] *= 100
            w[:, d : d + 8], b[d : d + 8] = w[:, 0:8], b[0:8]
    return model
