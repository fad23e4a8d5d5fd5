"""Model state guards: every call leaves the model as it found it (docs/architecture.md,
"Guarantees"): train/eval flags, ``requires_grad``, dtype (temporary casts are undone
bitwise), no autograd graph left on modules, and a hook counter to prove no hook leaked."""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["count_hooks", "preserved", "cast_temporarily", "release_graphs"]


def count_hooks(model: Any) -> int:
    """Total number of PyTorch hooks registered on any submodule (used to prove no leaks)."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total


@contextlib.contextmanager
def preserved(model: Any, *, eval_mode: bool = True, freeze: bool = False) -> Iterator[None]:
    """Run a block with the model in eval mode (and parameters frozen if ``freeze``), then
    restore every module's train/eval flag and every parameter's ``requires_grad``, also when
    the block raises."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for p, _ in grads:
                p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


@contextlib.contextmanager
def cast_temporarily(model: Any, dtype: torch.dtype) -> Iterator[None]:
    """Run a block with every floating parameter and buffer of ``model`` held in ``dtype``
    (what ``model.to(dtype)`` does), then put the *original tensors* back, also on exceptions.

    Used instead of ``copy.deepcopy(model).to(dtype)``: a deep copy of a TL 4 bridge shares
    the bridge's capture-hook closures with the original (the copy's forward writes into the
    original's attention modules). Restoring the saved tensors is bitwise exact.
    """
    saved: list[tuple[Tensor, Tensor]] = []
    seen: set[int] = set()
    # accelerate's offload hooks (``device_map`` with CPU/disk targets) swap the Parameter
    # objects of offloaded modules during every forward: put the original objects back too.
    slots = [
        (table, name, t)
        for m in model.modules()
        for table in (m._parameters, m._buffers)
        for name, t in table.items()
        if t is not None
    ]
    # TransformerLens components cast to ``cfg.dtype`` inside forward (e.g. RMSNorm's output in
    # TL 3.x), so ``model.to(dtype)`` also updates the config: do the same, and restore it.
    cfg: Any = getattr(model, "cfg", None)
    cfg_dtype = getattr(cfg, "dtype", None)
    try:
        if isinstance(cfg_dtype, torch.dtype):
            cfg.dtype = dtype
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) in seen or not t.is_floating_point() or t.dtype == dtype:
                continue
            seen.add(id(t))
            saved.append((t, t.data))
            t.data = t.data.to(dtype)
        yield
    finally:
        for table, name, t in slots:
            table[name] = t  # pyright: ignore[reportArgumentType]
        for t, data in saved:
            t.data = data
        if isinstance(cfg_dtype, torch.dtype):
            cfg.dtype = cfg_dtype


def release_graphs(model: Any) -> None:
    """Detach tensors that a grad-enabled forward pass left on modules (TL 4 bridges keep the
    last attention pattern as ``attn._pattern``), so no autograd graph outlives the call that
    built it (it would pin the activations and make ``copy.deepcopy(model)`` fail)."""
    for module in model.modules():
        stale = [
            k for k, v in vars(module).items() if isinstance(v, Tensor) and v.grad_fn is not None
        ]
        for key in stale:
            module.__dict__[key] = module.__dict__[key].detach()
