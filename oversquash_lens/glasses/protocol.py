"""The one Intervention protocol every "glasses" shares (docs/architecture.md, "Glasses").

An intervention is ``None``; a factory ``f(model) -> context manager`` (e.g.
:func:`~oversquash_lens.glasses.adaptive_temperature`, or ``functools.partial`` of
``sliding_window``); or a list of ``(hook_name, hook_fn)`` forward hooks. Analyses that accept
``intervention=`` enter it with :func:`applied`, which removes every hook on exit.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidArgumentError

__all__ = ["Intervention", "applied", "describe"]


#: ``None``, a factory ``f(model) -> context manager`` (e.g. :func:`adaptive_temperature`) or
#: a list of ``(hook_name, hook_fn)`` pairs; validated by :func:`applied` (hence ``Any``).
Intervention = Any


@contextlib.contextmanager
def applied(model: Any, intervention: Intervention) -> Iterator[None]:
    """Enter an intervention: ``None``; a factory called as ``intervention(model)`` that
    returns a context manager (e.g. :func:`adaptive_temperature`); or a list of
    ``(hook_name, hook_fn)`` forward hooks. Hooks are removed on exit."""
    if intervention is None:
        yield
    elif callable(intervention):
        ctx = intervention(model)
        if not hasattr(ctx, "__enter__"):
            raise InvalidArgumentError(
                f"intervention={intervention!r} returned {type(ctx).__name__}, "
                "not a context manager"
            )
        with ctx:
            yield
    elif isinstance(intervention, (list, tuple)) and all(
        isinstance(h, tuple) and len(h) == 2 and callable(h[1]) for h in intervention
    ):
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
