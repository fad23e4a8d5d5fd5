"""Models: :func:`load_model`, the embedded real SmolLM2, and the tiny offline test models
(:mod:`.tiny`) and planted-head models (:mod:`.planted`)."""

from . import planted as planted
from . import tiny as tiny
from .loading import load_model as load_model

__all__ = ["load_model", "tiny", "planted"]
