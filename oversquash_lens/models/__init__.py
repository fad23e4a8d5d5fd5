"""Models: :func:`load_model`, the registry of real models (:func:`available_models`,
:func:`model_card`: the embedded SmolLM2 and Gemma 3 270M), and the tiny offline test models
(:mod:`.tiny`) and planted-head models (:mod:`.planted`)."""

from . import planted as planted
from . import tiny as tiny
from .loading import load_model as load_model
from .registry import ModelCard as ModelCard
from .registry import available_models as available_models
from .registry import model_card as model_card

__all__ = ["load_model", "available_models", "model_card", "ModelCard", "tiny", "planted"]
