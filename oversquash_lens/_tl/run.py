"""Forward runs with temporary hooks: hooks always removed, model state always restored
(also when an exception is raised inside a forward pass)."""

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import UnsupportedModelError
from .facts import model_device, model_info, require_attention, tl_major_version
from .fused import fused_attention
from .names import pattern_name
from .state import preserved

Hook = tuple[str, Callable[..., Any]]


def run_with_hooks(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Sequence[Hook],
    *,
    grad: bool = False,
    stop_at_layer: int | None = None,
    freeze: bool = False,
    fused: bool = True,
) -> Any:
    """One forward pass with temporary hooks; hooks removed and model state restored always.

    Returns the logits (or the residual stream when ``stop_at_layer`` is given). Without
    ``grad``, and when no hook reads attention internals, attention runs fused
    (:func:`~oversquash_lens._tl.fused.fused_attention`; ``fused=False`` forces the eager path).
    """
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    kwargs: dict[str, Any] = {}
    if stop_at_layer is not None:
        kwargs["stop_at_layer"] = stop_at_layer
    hooks = list(fwd_hooks)
    fuse = (
        fused_attention(model, [name for name, _ in hooks])
        if fused and not grad
        else contextlib.nullcontext()
    )
    with preserved(model, freeze=freeze), ctx, fuse, model.hooks(fwd_hooks=hooks):
        return model(tokens, **kwargs)


def capture(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    names: Sequence[str],
    *,
    transform: Callable[[str, Tensor], Tensor] | None = None,
    stop_at_layer: int | None = None,
) -> dict[str, Tensor]:
    """Capture the listed hook activations in one forward pass (detached copies).

    ``transform(name, activation)`` may shrink each activation inside the hook (e.g. keep only a
    few positions) so memory stays proportional to what is kept, never a full cache. What it
    returns is copied when it shares memory with the activation (a view, or the activation
    itself), and kept as it is otherwise (a tensor the transform just built).
    """
    store: dict[str, Tensor] = {}

    def make_hook(name: str) -> Callable[..., None]:
        # Bind the name we asked for: TL 4 passes alias hook points (hook.name may differ).
        def hook(x: Tensor, hook: Any) -> None:
            kept = (transform(name, x) if transform is not None else x).detach()
            if kept.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                kept = kept.clone()  # a view of the activation: the model may reuse it
            store[name] = kept

        return hook

    if stop_at_layer is None:  # nothing after the last hooked block is needed
        stop_at_layer = _last_block(model, names)
    run_with_hooks(model, tokens, [(n, make_hook(n)) for n in names], stop_at_layer=stop_at_layer)
    missing = [n for n in names if n not in store]
    if missing:
        raise UnsupportedModelError(
            f"model {model_info(model).name!r} did not fire hook(s) {missing[:3]}"
        )
    return store


def _last_block(model: Any, names: Sequence[str]) -> int | None:
    """``b + 1`` when every name is a hook inside blocks ``0..b``, else None: the forward pass
    may stop before block ``b + 1``. (transformer-lens 4 stops a bridge at the entry of that
    block, so with ``b`` the last block it still runs the unembedding; 3.x stops after ``b``.)"""
    blocks = []
    for name in names:
        head, _, rest = name.partition(".")
        index = rest.partition(".")[0]
        if head != "blocks" or not index.isdigit():
            return None
        blocks.append(int(index))
    if not blocks:
        return None
    return max(blocks) + 1


def attention_patterns(
    model: Any, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch layer head_index query_pos key_pos"]:
    """Post-softmax attention of every layer and head, for each sequence in the batch."""
    info = require_attention(model)
    names = [pattern_name(b) for b in range(info.n_layers)]
    store = capture(model, tokens, names)
    return torch.stack([store[n] for n in names], dim=1)


def run_from_layer(
    model: Any,
    resid: Float[Tensor, "batch pos d_model"],
    block: int,
    fwd_hooks: Sequence[Hook],
    *,
    tokens: Int[Tensor, "batch pos"] | None = None,
) -> Any:
    """Logits of a forward pass that starts at ``block`` from the residual entering it
    (``start_at_layer``), with temporary hooks (blocks before ``block`` are not run). Block 0
    with ``tokens`` given, or a shortformer model, runs the whole model from ``tokens``."""
    shortformer = getattr(model.cfg, "positional_embedding_type", "") == "shortformer"
    if tokens is not None and (block == 0 or shortformer):
        return run_with_hooks(model, tokens, fwd_hooks)
    try:
        with preserved(model), torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
            return model(resid, start_at_layer=block)
    except NotImplementedError:
        # TL 3.9's TransformerBridge has no start_at_layer: run the whole model instead.
        if tokens is None:
            raise
        return run_with_hooks(model, tokens, fwd_hooks)


def resumes_exactly(model: Any, tokens: Int[Tensor, "batch pos"], resid: Sequence[Tensor]) -> bool:
    """Whether ``model(resid[b], start_at_layer=b)`` reproduces the logits of a full forward
    pass over ``tokens`` (checked at block 1 and at the last block; ``resid[b]`` is the
    residual entering block ``b``). Not every bridge does: transformer-lens 4.3's Bloom bridge
    loses its ALiBi bias when it starts mid-model. Callers then run the whole model instead."""
    blocks = sorted({1, len(resid) - 1} - {0})
    if not blocks:
        return True
    full = run_with_hooks(model, tokens, [], fused=False)
    tol = 1e-4 * max(1.0, float(full.abs().max()))
    for block in blocks:
        try:
            part = run_from_layer(model, resid[block], block, [])
        except NotImplementedError:  # TL 3.9's bridge: run_from_layer falls back to full runs
            return False
        if part.shape != full.shape or float((part - full).abs().max()) > tol:
            return False
    return True


def check_pattern_edits_reach_output(model: Any) -> None:
    """Raise :class:`UnsupportedModelError` when replacing ``hook_pattern`` does not change the
    model's output: some bridges (e.g. transformer-lens 3.9's ``boot_native`` bridge) expose the
    pattern for reading only, so an intervention there would silently do nothing.

    Probe: 3 tokens, every layer's pattern replaced by all-attention-on-position-0; one
    no-grad forward each way, hooks removed on exit."""
    info = require_attention(model)
    tokens = torch.arange(3, device=model_device(model)).remainder(info.d_vocab)[None]

    def first_only(pattern: Tensor, hook: Any) -> Tensor:
        out = torch.zeros_like(pattern)
        out[..., 0] = 1
        return out

    names = [pattern_name(b) for b in range(info.n_layers)]
    with torch.no_grad():
        plain = run_with_hooks(model, tokens, [])
        edited = run_with_hooks(model, tokens, [(n, first_only) for n in names])
    if torch.equal(plain, edited):
        raise UnsupportedModelError(
            f"model {info.name!r} ({type(model).__name__}, transformer-lens "
            f"{tl_major_version()}.x): edits to hook_pattern do not reach its output, so an "
            f"attention-pattern intervention would silently do nothing"
        )
