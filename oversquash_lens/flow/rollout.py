"""Weighted causal paths seen from one target token: attention rollout (Abnar & Zuidema 2020,
PAPER §5) and the Theorem 5.1 over-squashing bound (PAPER §3).

Both are products of one ``n × n`` matrix per layer, read along the target's row only:
``row_ℓ = e_t · X_ℓ ⋯ X_1`` for every depth ℓ = 1..L, where X is the rollout matrix
``A = residual·I + (1 − residual)·mean_heads(α)`` (rows renormalised) or the theorem's
``ᾱ = α/β + I``. A row vector is pushed down through the layers (vector × matrix), never an
``n × n`` product.

Cost, honestly: every depth ℓ needs its own sweep from layer ℓ down to layer 1, so the L rows
take L(L+1)/2 vector-matrix products — O(L²·n²) flops — but each layer's head mean is formed
once (one read of the ``[head, query, key]`` patterns) and all sweeps pass through it together
in one (triangular) matrix product. The full-matrix rollout costs O(L·n³); see
``benchmarks/paths.py`` for measured ratios. ``attention_rollout(..., target="all")`` returns
those full matrices ``[layer, query, key]`` when every row is wanted, and
:func:`rollout_matrices` the per-layer factors ``A_ℓ`` themselves (the capacities of attention
flow, :mod:`.attention_flow`).
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import _tl, _validate
from .._tl.cache import resolve_learned_sinks
from ..errors import InvalidArgumentError, InvalidPatternError
from ..glasses import Intervention, applied
from ._streaming import (
    _bound_apply,
    _factor,
    _full_rollout,
    _Layer,
    _layers,
    _read_layer,
    _rollout_apply,
    _target_rows,
)

__all__ = [
    "attention_rollout",
    "attention_rollout_from_model",
    "oversquashing_bound",
    "rollout_matrices",
]


Patterns = (
    Float[Tensor, "layer head_index query_pos key_pos"] | Float[Tensor, "layer query_pos key_pos"]
)


def attention_rollout(
    patterns: Patterns | Any,
    *,
    target: int | str = -1,
    residual: float = 0.5,
    per_head: bool = False,
    learned_sinks: str = "auto",
) -> (
    Float[Tensor, "layer pos"]
    | Float[Tensor, "layer head_index pos"]
    | Float[Tensor, "layer query_pos key_pos"]
    | Float[Tensor, "layer head_index query_pos key_pos"]
):
    """Attention rollout of the target token's row (PAPER §5; Abnar & Zuidema 2020).

    Per layer ``A_ℓ = residual·I + (1 − residual)·mean_heads(α_ℓ)``, rows renormalised; row
    ``ℓ`` of the result is row ``target`` of ``A_{ℓ+1} ⋯ A_1`` (the rollout after ``ℓ+1``
    layers). Each row sums to 1; identity attention gives a one-hot at ``target``.

    Example:
        >>> _, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
        >>> attention_rollout(cache).shape  # [n_layers, pos]

    Args:
        patterns: post-softmax causal attention of one sequence: ``[layer, head, query, key]``,
            ``[layer, query, key]`` (already averaged over heads), ``[1, layer, head, query,
            key]``, or a TransformerLens ActivationCache holding ``hook_pattern`` entries
            (read only). Rows must sum to 1 and put no mass above the diagonal.
        target: query position whose row is rolled out (negative counts from the end), or
            ``"all"`` for the full rollout matrices ``A_{ℓ+1} ⋯ A_1`` (every query row; cost
            O(L·n³) and ``[layer, n, n]`` memory; the single-row path is unchanged).
        residual: weight of the identity (the residual stream) in every layer, in ``[0, 1]``.
        per_head: roll every head index separately through the layers (head h of layer ℓ
            feeds head h of layer ℓ−1); returns ``[layer, head, pos]``.
        learned_sinks: how rows summing to less than 1 (attention with a learned sink logit,
            GPT-OSS) are read (docs/science.md, "Learned attention sinks"): ``"keep"`` — the
            missing mass ``1 − Σ_j α_ij`` goes to the sink, an absorbing extra node that holds
            no token's information, so ``A``'s rows are *not* renormalised and the rollout row
            sums to ``1 −`` (the share absorbed by sinks up to that depth); ``"renormalize"`` —
            every head's rows are divided by their sums first (the sink removed); ``"auto"``
            (default) — ``"keep"`` for an ActivationCache of a model with learned sinks, else
            rows must sum to 1. Rows above 1 are refused in every mode.

    Returns:
        ``[layer, pos]`` (or ``[layer, head, pos]``); positions after ``target`` are 0.
        With ``target="all"``: ``[layer, query, key]`` (or ``[layer, head, query, key]``),
        lower-triangular, entry ``[ℓ, q, k]`` equal to the single-row result for ``target=q``.
        Computed in float32 (float64 for float64 input).

    Raises:
        InvalidPatternError: wrong shape or dtype, NaN/inf, rows not summing to 1 (tolerance
            ``max(1e-4, 4·eps(dtype))``; to at most 1 with ``learned_sinks``), negative entries
            or mass above the diagonal — in every head (an error in one head cannot hide in
            the head average), on the queries and keys up to ``target``.
    """
    sinks = resolve_learned_sinks(learned_sinks, patterns)
    pats, averaged = _as_patterns(patterns)
    if isinstance(residual, bool) or not isinstance(residual, (int, float)):
        raise InvalidArgumentError(f"residual={residual!r} must be a float in [0, 1]")
    if not 0.0 <= float(residual) <= 1.0:
        raise InvalidArgumentError(f"residual={residual!r} must lie in [0, 1]")
    if not isinstance(per_head, bool):
        raise InvalidArgumentError(f"per_head={per_head!r} must be True or False")
    if per_head and averaged:
        raise InvalidArgumentError(
            "per_head=True needs per-head patterns [layer, head, query, key]; got head-averaged "
            f"patterns of shape {tuple(pats.shape[:1] + pats.shape[2:])}"
        )
    dtype = torch.float64 if pats.dtype == torch.float64 else torch.float32
    if isinstance(target, str):
        if target != "all":
            raise InvalidArgumentError(f"target={target!r} must be an int position or 'all'")
        return _full_rollout(pats, float(residual), dtype=dtype, per_head=per_head, sinks=sinks)
    t = _validate.resolve_index(target, pats.shape[-1], name="target")
    res = float(residual)

    def rollout_step(layer: _Layer) -> Callable[[Tensor], Tensor]:
        # renormalise the rows of A (a learned sink's mass counts: it is absorbed, not spread)
        inv = 1.0 / (res + (1.0 - res) * layer.total)
        mat = layer.matrix if per_head else layer.matrix[0]  # [head, m, m] or [m, m]
        inv = inv if per_head else inv[0]
        return partial(_rollout_apply, mat=mat, inv=inv, res=res, scale=layer.scale)

    return _target_rows(pats, t, rollout_step, dtype=dtype, per_head=per_head, sinks=sinks)


def rollout_matrices(
    patterns: Patterns | Any,
    *,
    residual: float = 0.5,
    size: int | None = None,
    per_head: bool = False,
    learned_sinks: str = "auto",
) -> Float[Tensor, "layer m m"] | Float[Tensor, "layer head_index m m"]:
    """The per-layer rollout factors ``A_ℓ = diag(1/r) (residual·I + (1 − residual)·mean_heads
    α_ℓ)`` (``r`` the row sums), exactly as :func:`attention_rollout` builds and validates them,
    restricted to the first ``size`` queries and keys (default all).

    Args:
        patterns: as for :func:`attention_rollout` (tensor or ActivationCache).
        residual: weight of the identity, in ``[0, 1]``.
        size: keep positions ``0..size-1`` (causal: a target ``t`` needs ``size = t + 1``).
        per_head: one factor per head (``[layer, head, m, m]``) instead of the head mean.
        learned_sinks: as for :func:`attention_rollout`; with ``"keep"`` row ``i`` sums to
            ``1 − (1 − residual)·s_i`` (``s_i`` the learned-sink mass, absorbed).

    Returns:
        ``[layer, m, m]`` (or ``[layer, head, m, m]``), rows summing to 1 (at most 1 with
        ``learned_sinks="keep"``); float32 (float64 for float64 input).
    """
    sinks = resolve_learned_sinks(learned_sinks, patterns)
    pats, averaged = _as_patterns(patterns)
    res = _check_residual(residual)
    if per_head and averaged:
        raise InvalidArgumentError("per_head=True needs per-head patterns [layer, head, q, k]")
    n = pats.shape[-1]
    if size is None:
        size = n
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= n:
        raise InvalidArgumentError(f"size={size!r} must be an int in 1..{n}")
    dtype = torch.float64 if pats.dtype == torch.float64 else torch.float32
    layers = _layers(pats, size, dtype, per_head, sinks)
    mats = [_factor(layer, res, per_head) for layer in layers]
    return torch.stack(mats)


def attention_rollout_from_model(
    model: Any,
    tokens: Any,
    *,
    target: int | str = -1,
    residual: float = 0.5,
    per_head: bool = False,
    intervention: Intervention = None,
    learned_sinks: str = "auto",
) -> Float[Tensor, "layer pos"] | Float[Tensor, "layer head_index pos"]:
    """:func:`attention_rollout` of one sequence run through ``model`` (patterns captured with
    temporary hooks; the model is left unchanged). ``tokens``: text, ``[pos]`` or ``[1, pos]``.
    ``intervention``: glasses active during the run (e.g. ``functools.partial(sliding_window,
    window=16)``, see ``glasses.applied``); the rollout is then of the patterns they produce.
    ``learned_sinks="auto"`` reads ``model``: ``"keep"`` when it has learned sink logits.
    ``target``: a position or ``"all"``, as for :func:`attention_rollout`.

    Memory: without ``per_head`` the patterns are reduced inside the hooks to one validated
    head mean per layer over the queries and keys up to the target (``L·m²`` floats for the
    rollout, instead of every head of every layer, ``L·H·n²``); ``per_head=True`` keeps every
    head's pattern."""
    sinks = resolve_learned_sinks(learned_sinks, model)
    toks = _tl.single_sequence(model, tokens)
    if per_head is not True:  # stream: keep each layer's validated head mean, never all heads
        _validate.flag(per_head, "per_head")
        return _rollout_streamed(model, toks, target, residual, intervention, sinks)
    with applied(model, intervention):
        pats = _tl.attention_patterns(model, toks)[0]
    return attention_rollout(
        pats,
        target=target,
        residual=residual,
        per_head=per_head,
        learned_sinks="auto" if sinks == "none" else sinks,
    )


def _rollout_streamed(
    model: Any, toks: Tensor, target: Any, residual: float, intervention: Intervention, sinks: str
) -> Tensor:
    """Head-mean rollout from ``model`` with patterns reduced inside the hooks: each layer's
    ``[head, query, key]`` pattern is validated (every head and the mean, learned sinks
    handled as in :func:`attention_rollout`) and only its head mean over the queries and keys
    up to the target is kept — ``L·m²`` floats instead of ``L·H·n²``."""
    n = toks.shape[1]
    m = n if isinstance(target, str) else _validate.resolve_index(target, n, name="target") + 1
    dtype = torch.float64 if _tl.model_dtype(model) == torch.float64 else torch.float32
    names = [_tl.pattern_name(b) for b in range(_tl.require_attention(model).n_layers)]
    blocks = {name: b for b, name in enumerate(names)}
    # the only per-layer state: each head mean is summed straight into its slot (no copies)
    means = torch.empty(len(names), m, m, dtype=dtype, device=_tl.model_device(model))

    def head_mean(name: str, x: Tensor) -> Tensor:
        b = blocks[name]
        layer = _read_layer(x[0, None].detach(), 0, m, means[b : b + 1], dtype, sinks, label=b)
        means[b].mul_(layer.scale)
        return x.new_empty(0)  # what capture keeps of this hook: nothing

    with applied(model, intervention):
        _tl.capture(model, toks, names, transform=head_mean)
    # renormalised heads give a row-stochastic mean; "keep" leaves the sink's share out of it
    out = attention_rollout(
        means,
        target=target if isinstance(target, str) else m - 1,
        residual=residual,
        learned_sinks="keep" if sinks == "keep" else "auto",
    )
    if out.shape[-1] == n:
        return out
    full = out.new_zeros(*out.shape[:-1], n)
    full[..., :m] = out
    return full


def oversquashing_bound(
    patterns: Patterns | Any,
    *,
    target: int = -1,
    beta: float | Sequence[float] | Float[Tensor, " layer"] | Float[Tensor, "layer pos"] = 1.0,
    learned_sinks: str = "auto",
) -> Float[Tensor, "layer pos"]:
    """The path sum of Theorem 5.1 (PAPER §3), without its constant ``C``.

    ``‖∂y_t/∂v_i^(0)‖ ≤ C · Σ_{paths i=k_0 ≤ … ≤ k_L=t} Π_ℓ ᾱ^(ℓ)_{k_ℓ, k_{ℓ−1}}`` with
    ``ᾱ^(ℓ) = α^(ℓ)/β^(ℓ) + I`` and ``α`` the head-averaged attention. Row ``ℓ`` of the result
    is the sum after ``ℓ+1`` layers, i.e. row ``target`` of ``ᾱ^(ℓ+1) ⋯ ᾱ^(1)``. ``C`` (the
    product of the MLP/value/norm Lipschitz constants) is not included and must be reported
    separately. With ``beta=1`` this is ``2^(ℓ+1)`` times the rollout with ``residual=0.5``;
    with every ``α`` replaced by ``tril(ones)`` it would count the paths of ``(M + I)^L``.

    Args:
        patterns: as for :func:`attention_rollout` (tensor or ActivationCache).
        target: receiving position (negative counts from the end).
        beta: the normalisation scale dividing α (the theorem's β, e.g. the residual's standard
            deviation that the pre-attention norm divides by): a positive float, one value per
            layer ``[layer]``, or one per layer and key position ``[layer, pos]`` (then
            ``ᾱ_{qk} = α_{qk}/β_k + δ_{qk}``).
        learned_sinks: as for :func:`attention_rollout`. ``"keep"`` uses α as it is: the
            learned sink carries no value vector, so a path into it reaches no input token and
            contributes nothing (the sink is an absorbing node); ``"renormalize"`` divides every
            head's rows by their sums first, which can only raise the sum.

    Returns:
        ``[layer, pos]`` float64 (values grow like ``(1 + 1/β)^L``); positions after ``target``
        are 0.
    """
    sinks = resolve_learned_sinks(learned_sinks, patterns)
    pats, _ = _as_patterns(patterns)
    n_layers, n = pats.shape[0], pats.shape[-1]
    t = _validate.resolve_index(target, n, name="target")
    scale = resolve_beta(beta, n_layers, n)[:, : t + 1].reciprocal().to(pats.device)

    def bound_step(layer: _Layer) -> Callable[[Tensor], Tensor]:
        return partial(_bound_apply, mat=layer.matrix[0], per_key=scale[layer.index] * layer.scale)

    return _target_rows(pats, t, bound_step, dtype=torch.float64, per_head=False, sinks=sinks)


# --------------------------------------------------------------------------- inputs
def _check_residual(residual: Any) -> float:
    if isinstance(residual, bool) or not isinstance(residual, (int, float)):
        raise InvalidArgumentError(f"residual={residual!r} must be a float in [0, 1]")
    if not 0.0 <= float(residual) <= 1.0:
        raise InvalidArgumentError(f"residual={residual!r} must lie in [0, 1]")
    return float(residual)


def _as_patterns(patterns: Any) -> tuple[Tensor, bool]:
    """``([layer, head, query, key] tensor, was_head_averaged)`` from any accepted input."""
    if _tl.is_activation_cache(patterns):
        batch = _tl.cache_pattern_batch(patterns)
        if batch != 1:
            raise InvalidPatternError(
                f"the ActivationCache holds attention for {batch} sequences; analyses here take "
                "one sequence (run_with_cache on a single prompt)"
            )
        patterns = _tl.patterns_from_cache(patterns)
    if not isinstance(patterns, Tensor):
        raise InvalidPatternError(
            f"patterns={type(patterns).__name__} is neither a tensor nor an ActivationCache"
        )
    patterns = patterns.detach()  # e.g. stacked HF output_attentions: read values, no graph
    shape = tuple(patterns.shape)
    if patterns.ndim == 5 and shape[0] == 1:
        patterns = patterns[0]
    averaged = patterns.ndim == 3
    if averaged:
        patterns = patterns.unsqueeze(1)
    if patterns.ndim != 4 or patterns.shape[-1] != patterns.shape[-2] or 0 in patterns.shape:
        raise InvalidPatternError(
            f"patterns of shape {shape} must be [layer, head, query, key] or [layer, query, key] "
            "for one sequence, with query == key and no empty axis"
        )
    if not patterns.is_floating_point():
        raise InvalidPatternError(f"patterns must be floating point, got dtype {patterns.dtype}")
    return patterns, averaged


def resolve_beta(beta: Any, n_layers: int, n: int) -> Float[Tensor, "layer pos"]:
    """β of :func:`oversquashing_bound` broadcast to ``[layer, pos]`` float64, checked finite
    and positive (also used by the profile to record the β it used)."""
    if isinstance(beta, bool):
        raise InvalidArgumentError(f"beta={beta!r} must be a positive float or a tensor")
    try:
        values = torch.as_tensor(beta, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise InvalidArgumentError(f"beta={beta!r} is not a number or tensor") from None
    if values.ndim == 1 and values.shape[0] == n_layers:
        values = values[:, None]
    if values.ndim not in (0, 2) or (
        values.ndim == 2 and tuple(values.shape) not in ((n_layers, n), (n_layers, 1))
    ):
        raise InvalidArgumentError(
            f"beta of shape {tuple(values.shape)} must be a float, [layer={n_layers}] or "
            f"[layer={n_layers}, pos={n}]"
        )
    if not bool(torch.isfinite(values).all()) or bool((values <= 0).any()):
        raise InvalidArgumentError(f"beta must be finite and > 0, got {_short(values)}")
    return values.expand(n_layers, n)


def _short(t: Tensor) -> str:
    flat = t.flatten().tolist()
    return str(flat[:6])[:-1] + (", ...]" if len(flat) > 6 else "]")


# --------------------------------------------------------------------------- core
