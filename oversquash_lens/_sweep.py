"""Long sweeps keep what they measured when interrupted (docs/architecture.md, "Sweeps").

A researcher who stops a sweep with Ctrl-C / the Jupyter stop button (``KeyboardInterrupt``)
after minutes of measurement gets the rows measured so far, marked incomplete, and a
:class:`SweepInterrupted` warning saying so — instead of losing them. An interrupt before the
first row is measured propagates as usual.
"""

import warnings

__all__ = ["SweepInterrupted", "interrupted"]


class SweepInterrupted(UserWarning):
    """A sweep was interrupted; the result holds only the rows measured before."""


def interrupted(what: str, done: int, total: int, exc: KeyboardInterrupt | None = None) -> None:
    """After a KeyboardInterrupt (``exc``, when caught by the caller): re-raise it when
    nothing was measured, else warn that ``done`` of ``total`` steps are kept."""
    if done == 0:
        raise exc if exc is not None else KeyboardInterrupt
    warnings.warn(
        f"{what} interrupted (KeyboardInterrupt) after {done} of {total} steps: returning the "
        "rows measured so far (the result's complete=False)",
        SweepInterrupted,
        stacklevel=3,
    )
