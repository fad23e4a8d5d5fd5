"""Fused attention for runs that read no attention internals (docs/architecture.md, "Fused
attention").

transformer-lens 4's ``PositionEmbeddingsAttentionBridge`` (Llama, SmolLM2, Gemma 3, …)
always re-implements attention eagerly so that ``hook_attn_scores`` and ``hook_pattern`` can
fire: it materialises ``[batch, head, query, key]`` scores and patterns in every layer — at
4,096 tokens that is most of a forward pass's memory. A run that only reads the residual
stream (``capture_residuals``, ``collapse_curve``, task accuracy) needs none of it.
:func:`fused_attention` temporarily routes each attention bridge to the wrapped Hugging Face
module's own forward with ``_attn_implementation = "sdpa"`` (PyTorch's fused
``scaled_dot_product_attention``), keeping the bridge's ``hook_in`` / ``hook_out`` and the
projections' hooks, and puts everything back on exit (also on exceptions).

It engages only when it cannot change what a caller sees:

- transformer-lens 4 bridge, every block's attention a ``PositionEmbeddingsAttentionBridge``
  around a Hugging Face module, no learned sinks, none of the per-head input/result modes;
- parameters in float32/float64 (low-precision runs stay eager: their rounding is itself the
  measurement in ``collapse_curve``);
- no hook — ours or the user's, e.g. a glasses context — on any hook point inside an
  attention bridge other than its ``hook_in`` / ``hook_out``;
- on first use per model (and again after its parameters change), one short probe run both
  ways must agree to float tolerance; otherwise the model always runs eagerly.
"""

import contextlib
import types
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .facts import model_device, tl_major_version

__all__ = ["fused_attention", "fusable", "eager_attention", "FUSED_TOLERANCE"]

#: Agreement the probe run must show: max |fused − eager| logit ≤ this × max(1, max |logit|).
FUSED_TOLERANCE = 1e-4

_PER_HEAD_MODES = ("use_split_qkv_input", "use_attn_in", "use_attn_result", "gated_q_proj")
_VERIFIED: "weakref.WeakKeyDictionary[Any, tuple[tuple, bool]]" = weakref.WeakKeyDictionary()
#: False inside :func:`eager_attention` (every run then takes transformer-lens' eager path).
ENABLED = True


@contextlib.contextmanager
def eager_attention() -> Iterator[None]:
    """Within the block every analysis runs transformer-lens' own eager attention, so residual
    captures are bitwise what ``run_with_cache`` gives (fused runs agree to float tolerance,
    about 1e-6 relative; docs/architecture.md, "Fused attention").

    Example:
        >>> with oversquash_lens.eager_attention():
        ...     states = capture_residuals(model, tokens)
    """
    global ENABLED
    saved = ENABLED
    ENABLED = False
    try:
        yield
    finally:
        ENABLED = saved


def _bridge_attentions(model: Any) -> list[Any] | None:
    """The blocks' attention bridges when all of them can be fused, else None."""
    if tl_major_version() < 4:
        return None
    try:
        from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (  # noqa: E501
            PositionEmbeddingsAttentionBridge,
        )
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return None
    if "sdpa" not in ALL_ATTENTION_FUNCTIONS:
        return None
    hf = getattr(model, "original_model", None)
    if not hasattr(getattr(hf, "config", None), "_attn_implementation"):
        return None
    blocks = getattr(model, "blocks", None)
    if not blocks:
        return None
    attns = [getattr(b, "attn", None) for b in blocks]
    cfg = getattr(model, "cfg", None)
    if any(getattr(cfg, mode, False) for mode in _PER_HEAD_MODES):
        return None
    for a in attns:
        if type(a) is not PositionEmbeddingsAttentionBridge:
            return None
        hf_attn = getattr(a, "original_component", None)
        if hf_attn is None or getattr(hf_attn, "sinks", None) is not None:
            return None
        if not hasattr(getattr(hf_attn, "config", None), "_attn_implementation"):
            return None
    if any(p.dtype not in (torch.float32, torch.float64) for p in model.parameters()):
        return None
    return attns


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
    )


def _bypassed_hook_points(attns: Sequence[Any]) -> list[torch.nn.Module]:
    """Hook points inside the attention bridges that a fused run would not fire."""
    from transformer_lens.hook_points import HookPoint

    kept = {id(a.hook_in) for a in attns} | {id(a.hook_out) for a in attns}
    return [m for a in attns for m in a.modules() if isinstance(m, HookPoint) and id(m) not in kept]


def fusable(model: Any, hook_names: Sequence[Any] = ()) -> bool:
    """Whether a run of ``model`` with forward hooks at ``hook_names`` may use fused attention
    (structure, dtype and hooks only; the probe check happens in :func:`fused_attention`)."""
    if not ENABLED:
        return False
    attns = _bridge_attentions(model)
    if attns is None:
        return False
    bypassed = _bypassed_hook_points(attns)
    if any(_has_hooks(m) for m in bypassed):
        return False
    ids = {id(m) for m in bypassed}
    hook_dict = getattr(model, "hook_dict", {})
    for name in hook_names:
        point = hook_dict.get(name) if isinstance(name, str) else None
        if point is None or id(point) in ids:
            return False
    return True


def _delegate(self: Any, *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
    """Fused stand-in for ``PositionEmbeddingsAttentionBridge.forward``."""
    if "hidden_states" in kwargs:
        hidden = kwargs.pop("hidden_states")
    else:
        hidden, args = args[0], args[1:]
    hidden = self.hook_in(hidden)
    out = self.original_component(hidden, *args, **kwargs)[0]
    return self.hook_out(out), None


def _configs(model: Any, attns: Sequence[Any]) -> list[Any]:
    found: dict[int, Any] = {}
    hf = model.original_model
    for cfg in [hf.config, getattr(getattr(hf, "model", None), "config", None)] + [
        a.original_component.config for a in attns
    ]:
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            found[id(cfg)] = cfg
    return list(found.values())


@contextlib.contextmanager
def _swapped(model: Any, attns: Sequence[Any]) -> Iterator[None]:
    configs = _configs(model, attns)
    saved = [(c, c._attn_implementation) for c in configs]
    installed: list[Any] = []
    try:
        for c in configs:
            c._attn_implementation = "sdpa"
        for a in attns:
            a.__dict__["forward"] = types.MethodType(_delegate, a)
            installed.append(a)
        yield
    finally:
        for a in installed:
            a.__dict__.pop("forward", None)
        for c, value in saved:
            c._attn_implementation = value


@contextlib.contextmanager
def _hook_points_silenced(model: Any) -> Iterator[None]:
    """Within the block no hook on any TransformerLens hook point runs (a user's steering
    hook, a recorder); the very same hook dictionaries are refilled on exit, so the handles
    that remove those hooks keep working."""
    from transformer_lens.hook_points import HookPoint

    saved = []
    for m in model.modules():
        if isinstance(m, HookPoint):
            for table in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks):
                if table:
                    saved.append((table, dict(table)))
                    table.clear()
    try:
        yield
    finally:
        for table, entries in saved:
            table.update(entries)


def _fingerprint(model: Any) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def _probe_length(model: Any) -> int:
    cfg = model.original_model.config
    window = getattr(cfg, "sliding_window", None) or getattr(
        getattr(cfg, "text_config", None), "sliding_window", None
    )
    n = 16 if not isinstance(window, int) else min(window + 8, 1100)
    return max(2, min(n, int(getattr(model.cfg, "n_ctx", n) or n)))


def _agrees(model: Any, attns: Sequence[Any]) -> bool:
    """One probe run eagerly and fused: do the logits agree to :data:`FUSED_TOLERANCE`?"""
    key = _fingerprint(model)
    hit = _VERIFIED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    vocab = int(model.cfg.d_vocab)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (1, _probe_length(model)), generator=gen)
    tokens = tokens.to(model_device(model))
    with torch.no_grad(), _hook_points_silenced(model):  # the probe runs no user hook
        eager = model(tokens)
        with _swapped(model, attns):
            fused = model(tokens)
    ok = bool(
        eager.shape == fused.shape
        and torch.isfinite(fused).all()
        and float((eager - fused).abs().max())
        <= FUSED_TOLERANCE * max(1.0, float(eager.abs().max()))
    )
    _VERIFIED[model] = (key, ok)
    return ok


@contextlib.contextmanager
def fused_attention(model: Any, hook_names: Sequence[Any] = ()) -> Iterator[bool]:
    """Run the block with fused attention where :func:`fusable` allows it and the probe run
    agrees; yields whether fused attention is on. Everything is restored on exit."""
    if not fusable(model, hook_names):
        yield False
        return
    attns = _bridge_attentions(model)
    assert attns is not None
    if not _agrees(model, attns):
        yield False
        return
    with _swapped(model, attns):
        yield True
