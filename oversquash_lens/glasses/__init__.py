"""'Glasses': interventions that change how a model attends (docs/science.md §6-7), all
context managers that restore the model on exit, composable, and accepted wherever an analysis
takes ``intervention=`` (the protocol: :mod:`.protocol`)."""

from .protocol import Intervention as Intervention
from .protocol import applied as applied
from .protocol import describe as describe
from .ssmax import scalable_softmax as scalable_softmax
from .ssmax import ssmax_pattern as ssmax_pattern
from .ssmax import ssmax_s as ssmax_s
from .temperature import COEFFICIENTS as COEFFICIENTS
from .temperature import adaptive_beta as adaptive_beta
from .temperature import adaptive_pattern as adaptive_pattern
from .temperature import adaptive_softmax as adaptive_softmax
from .temperature import adaptive_temperature as adaptive_temperature
from .window import sliding_window as sliding_window
from .window import window_pattern as window_pattern

__all__ = [
    "Intervention",
    "applied",
    "describe",
    "COEFFICIENTS",
    "adaptive_beta",
    "adaptive_softmax",
    "adaptive_pattern",
    "adaptive_temperature",
    "sliding_window",
    "window_pattern",
    "scalable_softmax",
    "ssmax_pattern",
    "ssmax_s",
]
