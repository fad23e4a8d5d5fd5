"""Attention heads: pattern scores (diagonal, previous-token, first-token), weight scores and
the classifier (docs/science.md §4)."""

from .classify import LABELS as LABELS
from .classify import HeadReport as HeadReport
from .classify import HeadThresholds as HeadThresholds
from .classify import classify_heads as classify_heads
from .classify import label_heads as label_heads
from .classify import pattern_scores as pattern_scores

__all__ = [
    "LABELS",
    "HeadThresholds",
    "HeadReport",
    "classify_heads",
    "label_heads",
    "pattern_scores",
]
