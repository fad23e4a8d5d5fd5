"""oversquash_lens: measure information over-squashing and representational collapse in
TransformerLens models (Barbero et al. 2024, "Transformers need glasses!").

No side effects and no network access on import.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .capture import ResidualStates as ResidualStates
from .capture import capture_residuals as capture_residuals
from .errors import InvalidArgumentError as InvalidArgumentError
from .errors import InvalidPatternError as InvalidPatternError
from .errors import InvalidTokensError as InvalidTokensError
from .errors import ModelLoadError as ModelLoadError
from .errors import OversquashError as OversquashError
from .errors import UnsupportedModelError as UnsupportedModelError
from .loading import load_model as load_model

try:
    __version__ = _version("oversquash_lens")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "__version__",
    "OversquashError",
    "InvalidTokensError",
    "InvalidPatternError",
    "InvalidArgumentError",
    "UnsupportedModelError",
    "ModelLoadError",
    "load_model",
    "ResidualStates",
    "capture_residuals",
]
