"""oversquash_lens: measure information over-squashing and representational collapse in
TransformerLens models (Barbero et al. 2024, "Transformers need glasses!"; docs/science.md).

No side effects and no network access on import. The public names below are imported lazily
(PEP 562): ``import oversquash_lens`` costs milliseconds, so the command line answers
``--help`` before torch is loaded; the first use of a name imports its module.
"""

from importlib import import_module as _import_module
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

try:
    __version__ = _version("oversquash_lens")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

#: public name -> (module, attribute) it is imported from on first use
_LAZY: dict[str, tuple[str, str]] = {
    "OversquashError": (".errors", "OversquashError"),
    "InvalidTokensError": (".errors", "InvalidTokensError"),
    "InvalidPatternError": (".errors", "InvalidPatternError"),
    "InvalidArgumentError": (".errors", "InvalidArgumentError"),
    "UnsupportedModelError": (".errors", "UnsupportedModelError"),
    "ModelLoadError": (".errors", "ModelLoadError"),
    "load_model": (".models", "load_model"),
    "available_models": (".models", "available_models"),
    "model_card": (".models", "model_card"),
    "ModelCard": (".models", "ModelCard"),
    "ResidualStates": (".collapse", "ResidualStates"),
    "capture_residuals": (".collapse", "capture_residuals"),
    "eager_attention": ("._tl.fused", "eager_attention"),
    "CollapseCurve": (".collapse", "CollapseCurve"),
    "collapse_curve": (".collapse", "collapse_curve"),
    "AccuracyReport": (".tasks", "AccuracyReport"),
    "task_accuracy": (".tasks", "task_accuracy"),
    "adaptive_temperature": (".glasses", "adaptive_temperature"),
    "sliding_window": (".glasses", "sliding_window"),
    "scalable_softmax": (".glasses", "scalable_softmax"),
    "HeadReport": (".heads", "HeadReport"),
    "classify_heads": (".heads", "classify_heads"),
    "pattern_scores": (".heads", "pattern_scores"),
    "path_counts": (".flow", "path_counts"),
    "attention_rollout": (".flow", "attention_rollout"),
    "attention_rollout_from_model": (".flow", "attention_rollout_from_model"),
    "oversquashing_bound": (".flow", "oversquashing_bound"),
    "Sensitivity": (".flow", "Sensitivity"),
    "token_sensitivity": (".flow", "token_sensitivity"),
    "OversquashProfile": (".flow", "OversquashProfile"),
    "oversquash_profile": (".flow", "oversquash_profile"),
    "FlowRoutes": (".flow", "FlowRoutes"),
    "information_flow": (".flow", "information_flow"),
    "attention_flow": (".flow", "attention_flow"),
    "composition_scores": (".circuits", "composition_scores"),
    "composition": (".circuits", "composition"),
    "Composition": (".circuits", "Composition"),
    "circuit_summaries": (".circuits", "circuit_summaries"),
    "path_expansion": (".circuits", "path_expansion"),
    "PathExpansion": (".circuits", "PathExpansion"),
}
#: documented submodules, also importable as attributes (``oversquash_lens.tasks``)
_SUBMODULES = (
    "errors", "tasks", "viz", "views", "testing", "planted", "synthetic", "glasses", "flow",
    "collapse", "heads", "models", "circuits",
)  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(_import_module(module, __name__), attribute)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in _SUBMODULES:
        return _import_module(f".{name}", __name__)
    raise AttributeError(f"module 'oversquash_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


if TYPE_CHECKING:  # static type checkers and IDEs see the real names
    from ._tl.fused import eager_attention as eager_attention
    from .circuits import Composition as Composition
    from .circuits import PathExpansion as PathExpansion
    from .circuits import circuit_summaries as circuit_summaries
    from .circuits import composition as composition
    from .circuits import composition_scores as composition_scores
    from .circuits import path_expansion as path_expansion
    from .collapse import CollapseCurve as CollapseCurve
    from .collapse import ResidualStates as ResidualStates
    from .collapse import capture_residuals as capture_residuals
    from .collapse import collapse_curve as collapse_curve
    from .errors import InvalidArgumentError as InvalidArgumentError
    from .errors import InvalidPatternError as InvalidPatternError
    from .errors import InvalidTokensError as InvalidTokensError
    from .errors import ModelLoadError as ModelLoadError
    from .errors import OversquashError as OversquashError
    from .errors import UnsupportedModelError as UnsupportedModelError
    from .flow import FlowRoutes as FlowRoutes
    from .flow import OversquashProfile as OversquashProfile
    from .flow import Sensitivity as Sensitivity
    from .flow import attention_flow as attention_flow
    from .flow import attention_rollout as attention_rollout
    from .flow import attention_rollout_from_model as attention_rollout_from_model
    from .flow import information_flow as information_flow
    from .flow import oversquash_profile as oversquash_profile
    from .flow import oversquashing_bound as oversquashing_bound
    from .flow import path_counts as path_counts
    from .flow import token_sensitivity as token_sensitivity
    from .glasses import adaptive_temperature as adaptive_temperature
    from .glasses import scalable_softmax as scalable_softmax
    from .glasses import sliding_window as sliding_window
    from .heads import HeadReport as HeadReport
    from .heads import classify_heads as classify_heads
    from .heads import pattern_scores as pattern_scores
    from .models import ModelCard as ModelCard
    from .models import available_models as available_models
    from .models import load_model as load_model
    from .models import model_card as model_card
    from .tasks import AccuracyReport as AccuracyReport
    from .tasks import task_accuracy as task_accuracy

__all__ = [
    "__version__",
    "OversquashError",
    "InvalidTokensError",
    "InvalidPatternError",
    "InvalidArgumentError",
    "UnsupportedModelError",
    "ModelLoadError",
    "load_model",
    "available_models",
    "model_card",
    "ModelCard",
    "ResidualStates",
    "capture_residuals",
    "eager_attention",
    "CollapseCurve",
    "collapse_curve",
    "AccuracyReport",
    "task_accuracy",
    "adaptive_temperature",
    "sliding_window",
    "scalable_softmax",
    "HeadReport",
    "classify_heads",
    "pattern_scores",
    "path_counts",
    "attention_rollout",
    "attention_rollout_from_model",
    "oversquashing_bound",
    "Sensitivity",
    "token_sensitivity",
    "OversquashProfile",
    "oversquash_profile",
    "FlowRoutes",
    "information_flow",
    "attention_flow",
    "composition_scores",
    "composition",
    "Composition",
    "circuit_summaries",
    "path_expansion",
    "PathExpansion",
]
