"""Token preparation: text or ids in, a validated ``[batch, pos]`` LongTensor out."""

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from .._validate import short as _short
from ..errors import InvalidTokensError
from .facts import ModelInfo, model_device, model_info, require_weights


def prepare_tokens(
    model: Any, tokens: Any, info: ModelInfo | None = None, *, name: str = "tokens"
) -> Int[Tensor, "batch pos"]:
    """Validate ``tokens`` and return a ``[batch, pos]`` LongTensor on the model's device.

    Accepts a string or list of strings (tokenized with ``model.to_tokens``), a list of ints,
    a list of equal-length lists of ints, or a 1-D/2-D integer tensor.
    """
    info = info or model_info(model)
    require_weights(model, info.name)
    if isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, str) for t in tokens)
    ):
        tokens = _from_text(model, tokens, info, name)
    if not isinstance(tokens, Tensor):
        try:
            tokens = torch.tensor(tokens)
        except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: None, objects
            raise InvalidTokensError(
                f"{name}={_short(tokens)} cannot be read as token ids ({exc})"
            ) from None
    if tokens.numel() == 0:
        raise InvalidTokensError(f"{name} is empty (shape {tuple(tokens.shape)})")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise InvalidTokensError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2:
        raise InvalidTokensError(
            f"{name} must be [pos] or [batch, pos], got shape {tuple(tokens.shape)}"
        )
    if tokens.numel() == 0:
        raise InvalidTokensError(f"{name} is empty (shape {tuple(tokens.shape)})")
    if tokens.shape[1] > info.n_ctx:
        raise InvalidTokensError(
            f"{name} has {tokens.shape[1]} positions, more than the model's n_ctx={info.n_ctx}"
        )
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= info.d_vocab:
        bad = lo if lo < 0 else hi
        raise InvalidTokensError(
            f"{name} contains token id {bad}, outside the vocabulary [0, {info.d_vocab})"
        )
    return tokens.to(device=model_device(model), dtype=torch.long)


def single_sequence(
    model: Any, tokens: Any, info: ModelInfo | None = None, *, name: str = "tokens"
) -> Int[Tensor, "1 pos"]:
    """:func:`prepare_tokens`, then insist on exactly one sequence (``[pos]`` or ``[1, pos]``)."""
    toks = prepare_tokens(model, tokens, info, name=name)
    if toks.shape[0] != 1:
        raise InvalidTokensError(
            f"{name} of shape {tuple(toks.shape)} hold {toks.shape[0]} sequences; pass one "
            "sequence ([pos] or [1, pos])"
        )
    return toks


def _from_text(model: Any, texts: Any, info: ModelInfo, name: str) -> Tensor:
    """Text (one string or a list of equal-length texts) tokenized with ``model.to_tokens``,
    never truncated at n_ctx (too long is refused by the caller)."""
    tokens = texts
    if getattr(model, "tokenizer", None) is None:
        raise InvalidTokensError(
            f"{name}={_short(tokens)} is text but the model has no tokenizer; pass token ids"
        )
    if isinstance(tokens, str) and not tokens:
        raise InvalidTokensError(f"{name}='' is empty")
    if isinstance(tokens, (list, tuple)) and len(tokens) > 1:
        # to_tokens right-pads a ragged batch: position -1 of a shorter text would then be
        # a pad token, silently. Texts of different token lengths are refused here.
        lengths = {int(model.to_tokens(t, truncate=False).shape[1]) for t in tokens}
        if len(lengths) > 1 and max(lengths) <= info.n_ctx:  # too long: the caller refuses
            raise InvalidTokensError(
                f"{name} holds texts of different token lengths {sorted(lengths)}; they "
                "would be padded, so the last position of a shorter text would be a pad "
                "token: pass the texts one at a time, or equal-length token ids"
            )
    try:  # never let to_tokens cut text at n_ctx silently: the caller refuses too long
        tokens = model.to_tokens(tokens, truncate=False)
    except TypeError:  # a duck-typed model whose to_tokens has no ``truncate``
        tokens = model.to_tokens(tokens)
    return tokens
