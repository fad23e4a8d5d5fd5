"""The error hierarchy: every bad input raises an :class:`OversquashError` subclass.

Each message quotes the offending value so a notebook user sees what to fix.
"""

__all__ = [
    "OversquashError",
    "InvalidTokensError",
    "InvalidPatternError",
    "InvalidArgumentError",
    "UnsupportedModelError",
    "ModelLoadError",
]


class OversquashError(Exception):
    """Base class of every error raised by oversquash_lens."""


class InvalidTokensError(OversquashError, ValueError):
    """Tokens are empty, of the wrong rank or dtype, out of vocabulary, or longer than n_ctx."""


class InvalidPatternError(OversquashError, ValueError):
    """An attention pattern has the wrong shape, is not row-stochastic, not causal or has NaNs."""


class InvalidArgumentError(OversquashError, ValueError):
    """An option is out of range or unknown (target, precision, task, method, n_probes...)."""


class UnsupportedModelError(OversquashError, TypeError):
    """The object is not a (causal, decoder-only) TransformerLens model."""


class ModelLoadError(OversquashError, RuntimeError):
    """A model could not be loaded (missing package, missing file, bad folder)."""
