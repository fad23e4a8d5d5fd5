"""The one Intervention protocol every "glasses" shares (docs/architecture.md, "Glasses").

An intervention is ``None``; a factory ``f(model) -> context manager`` (e.g.
:func:`~oversquash_lens.glasses.adaptive_temperature`, or ``functools.partial`` of
``sliding_window``); or a list of ``(hook_name, hook_fn)`` forward hooks. Analyses that accept
``intervention=`` enter it with :func:`applied`, which removes every hook on exit.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

from .._tl.protocol import HookedModel
from ..errors import InvalidArgumentError

__all__ = ["Intervention", "applied", "describe"]


#: ``None``, a factory ``f(model) -> context manager`` (e.g. :func:`adaptive_temperature`) or
#: a list of ``(hook_name, hook_fn)`` pairs; validated by :func:`applied` (hence ``Any``).
Intervention = Any


@contextlib.contextmanager
def applied(model: HookedModel, intervention: Intervention) -> Iterator[None]:
    """Enter an intervention: ``None``; a factory called as ``intervention(model)`` that
    returns a context manager (e.g. :func:`adaptive_temperature`); or a list of
    ``(hook_name, hook_fn)`` forward hooks. Hooks are removed on exit."""
    if intervention is None:
        yield
    elif callable(intervention):
        ctx: Any = intervention(model)
        if not (hasattr(ctx, "__enter__") and hasattr(ctx, "__exit__")):
            raise InvalidArgumentError(
                f"intervention={intervention!r} returned {type(ctx).__name__}, "
                "not a context manager"
            )
        with ctx:
            yield
    elif isinstance(intervention, (list, tuple)) and all(
        isinstance(h, tuple) and len(h) == 2 and callable(h[1]) for h in intervention
    ):
        _check_hook_names(model, intervention)
        with model.hooks(fwd_hooks=list(intervention)):
            yield
    else:
        raise InvalidArgumentError(
            f"intervention={intervention!r} is not None, a context-manager factory or a list "
            "of (hook_name, hook_fn) pairs"
        )


def describe(intervention: Intervention) -> str:
    """A short name for an intervention (for result objects)."""
    if intervention is None:
        return "none"
    return getattr(intervention, "__name__", None) or type(intervention).__name__


def _check_hook_names(model: Any, hooks: Any) -> None:
    """Every ``(name, fn)`` pair names a hook point the model has (or is a TransformerLens name
    filter, a callable); anything else raises InvalidArgumentError naming it and a valid one."""
    known = getattr(model, "hook_dict", None)
    for name, _ in hooks:
        if callable(name):
            continue
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"intervention hook name {name!r} must be a hook-point name (str), e.g. "
                "'blocks.0.attn.hook_pattern'"
            )
        if isinstance(known, dict) and name not in known:
            raise InvalidArgumentError(
                f"intervention hook name {name!r} is not a hook point of this model, e.g. "
                f"{next(iter(known), 'blocks.0.attn.hook_pattern')!r}"
            )
