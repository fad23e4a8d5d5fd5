"""Representational collapse: residual capture, the collapse curve of a prompt pair, and the
synthetic reproductions of the paper's numbers (docs/science.md §2)."""

from . import synthetic as synthetic
from .capture import ResidualStates as ResidualStates
from .capture import capture_residuals as capture_residuals
from .curve import CollapseCurve as CollapseCurve
from .curve import collapse_curve as collapse_curve
from .curve import resolution as resolution

__all__ = [
    "ResidualStates",
    "capture_residuals",
    "CollapseCurve",
    "collapse_curve",
    "resolution",
    "synthetic",
]
