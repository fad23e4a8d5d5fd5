"""Model facts: TransformerLens version probes, shape facts from ``cfg``, weights and
normalisation details every analysis needs."""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .._validate import short as _short
from ..errors import UnsupportedModelError
from .names import pattern_name, post_attn_norm_names


def bridge_class() -> Any:
    """``TransformerBridge`` (top-level in TL 4, under ``model_bridge`` in TL 3.9)."""
    try:
        from transformer_lens import TransformerBridge
    except ImportError:
        from transformer_lens.model_bridge import TransformerBridge
    return TransformerBridge


def tl_major_version() -> int:
    from importlib.metadata import version

    return int(version("transformer-lens").split(".")[0])


@dataclass(frozen=True)
class ModelInfo:
    """Shape facts of a TransformerLens model, read once from ``model.cfg``."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    n_ctx: int
    d_vocab: int
    positional: str
    family: str  # "bridge" or "hooked"
    has_resid_mid: bool
    name: str


_HOOK_API = ("run_with_hooks", "run_with_cache", "hooks", "cfg")


def model_info(model: Any) -> ModelInfo:
    """Validate that ``model`` is a causal TransformerLens model and return its shape facts."""
    missing = [a for a in _HOOK_API if not hasattr(model, a)]
    if missing or not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(
            f"expected a TransformerLens model (TransformerBridge or HookedTransformer), got "
            f"{type(model).__name__!s} {_short(model)} "
            f"(missing: {', '.join(missing) or 'nn.Module'})"
        )
    cfg: Any = model.cfg
    direction = str(getattr(cfg, "attention_dir", "causal") or "causal")
    arch = str(getattr(cfg, "original_architecture", "") or getattr(cfg, "architecture", "") or "")
    if direction != "causal" or any(k in arch for k in ("Bert", "Encoder", "T5", "Bart")):
        raise UnsupportedModelError(
            f"model {getattr(cfg, 'model_name', arch)!r} is 'bidirectional' (attention_dir="
            f"{direction!r}, architecture {arch!r}); oversquash_lens analyses causal "
            f"decoder-only models only"
        )
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    family = "hooked" if type(model).__name__ == "HookedTransformer" else "bridge"
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False)) or "NeoX" in arch
    if family == "bridge":
        has_mid = "blocks.0.hook_resid_mid" in getattr(model, "hook_dict", {})
    else:
        has_mid = not parallel
    return ModelInfo(
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        n_ctx=int(cfg.n_ctx),
        d_vocab=int(cfg.d_vocab),
        positional=str(getattr(cfg, "positional_embedding_type", "standard")),
        family=family,
        has_resid_mid=has_mid,
        name=str(getattr(cfg, "model_name", "") or arch or type(model).__name__),
    )


def require_attention(model: Any, info: ModelInfo | None = None) -> ModelInfo:
    """:func:`model_info`, and raise :class:`UnsupportedModelError` when the model exposes no
    attention patterns (e.g. a Mamba bridge: no ``blocks.{l}.attn.hook_pattern``)."""
    info = info or model_info(model)
    hook_dict = getattr(model, "hook_dict", None)
    names = [pattern_name(b) for b in range(info.n_layers)]
    if isinstance(hook_dict, dict) and any(n not in hook_dict for n in names):
        missing = next(n for n in names if n not in hook_dict)
        raise UnsupportedModelError(
            f"model {info.name!r} ({type(model).__name__}) has no attention hook {missing!r}; "
            "attention-based analyses need a transformer with softmax attention in every block"
        )
    return info


def model_device(model: Any) -> torch.device:
    """Device of the first parameter that holds data (offloaded ``meta`` placeholders of a
    ``device_map`` model skipped; accelerate moves inputs on to each module's device)."""
    for p in model.parameters():
        if not p.is_meta:
            return p.device
    device = getattr(getattr(model, "cfg", None), "device", None)
    return torch.device(device) if isinstance(device, (str, torch.device)) else torch.device("cpu")


def is_offloaded(model: Any) -> bool:
    """Whether some weights are offloaded by accelerate (``device_map`` with CPU/disk targets):
    the module then holds ``meta`` placeholders that are filled in only during its forward."""
    return any(p.is_meta for p in model.parameters())


def require_weights(model: Any, name: str) -> None:
    """Refuse a model whose every weight is a ``meta`` tensor (shapes only, no values, e.g.
    after ``model.to("meta")``) unless accelerate fills them in during its forward (an
    offloaded ``device_map`` model carries ``_hf_hook``s): nothing could be measured."""
    params = iter(model.parameters())
    first = next(params, None)
    if first is None or not first.is_meta or not all(p.is_meta for p in params):
        return
    if any(hasattr(m, "_hf_hook") for m in model.modules()):
        return
    raise UnsupportedModelError(
        f"model {name!r} has all its weights on the meta device (shapes, no values): load real "
        "weights first (e.g. model.to_empty(device='cpu') then load_state_dict, or "
        "oversquash_lens.load_model)"
    )


@contextlib.contextmanager
def readable_weights(module: torch.nn.Module) -> Iterator[None]:
    """Offloaded weights of ``module`` and its descendants materialised for the duration
    (accelerate's ``align_module_device`` on every submodule; a no-op when nothing is
    offloaded). Tensors read inside stay valid afterwards."""
    if not any(p.is_meta for p in module.parameters()):
        yield
        return
    from accelerate.utils import align_module_device

    with contextlib.ExitStack() as stack:
        for submodule in module.modules():
            stack.enter_context(align_module_device(submodule))
        yield


def model_dtype(model: Any) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def w_o(model: Any, block: int) -> Float[Tensor, "head_index d_head d_model"]:
    """Output projection of every query head of ``block`` (detached)."""
    with readable_weights(model.blocks[block]):
        return model.blocks[block].attn.W_O.detach()


def w_v(model: Any, block: int) -> Float[Tensor, "head_index d_model d_head"]:
    """Value projection per *query* head (grouped K/V heads repeated to match), detached."""
    with readable_weights(model.blocks[block]):
        wv = model.blocks[block].attn.W_V.detach()
    if wv.ndim == 3 and wv.shape[0] != model.cfg.n_heads:
        wv = wv.repeat_interleave(model.cfg.n_heads // wv.shape[0], dim=0)
    return wv


def text_tokenizer(model: Any) -> Any:
    """The model's Hugging Face tokenizer, or None (e.g. ``boot_native`` models)."""
    return getattr(model, "tokenizer", None) if model is not None else None


def prepends_bos(model: Any) -> bool:
    """Whether TransformerLens prepends BOS by default for this model (``to_tokens``)."""
    return bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))


def centres_before_norm(model: Any) -> bool:
    """True when the pre-attention norm subtracts the mean (LayerNorm), False for RMSNorm: the
    divisor a norm applies is then the std (LayerNorm) or the RMS (RMSNorm) of the residual."""
    kind = str(getattr(model.cfg, "normalization_type", "LN") or "LN")
    return not kind.upper().startswith("RMS")


def ln1_scale(model: Any, block: int) -> Float[Tensor, " d_model"] | None:
    """Elementwise scale the pre-attention norm of ``block`` applies (detached), or None when
    the norm has no weight (TL ``LayerNormPre``/``RMSNormPre``: already folded). Gemma-style
    RMSNorm (``cfg.rmsnorm_uses_offset``) scales by ``1 + weight``."""
    norm = getattr(model.blocks[block], "ln1", None)
    with readable_weights(model.blocks[block]):
        # A bridge's ``w`` alias is bound once at boot; an offloaded weight is only live on
        # the wrapped module (``original_component``), so read it there.
        original = getattr(norm, "_modules", {}).get("_original_component")
        weight = getattr(original, "weight", None) if original is not None else None
        if weight is None and norm is not None:
            weight = getattr(norm, "w", None)
        if not isinstance(weight, Tensor):
            return None
        weight = weight.detach()
    return 1.0 + weight if getattr(model.cfg, "rmsnorm_uses_offset", False) else weight


def b_o(model: Any, block: int) -> Float[Tensor, " d_model"] | None:
    """Attention output bias of ``block`` (detached), or None when the model has none."""
    bias = getattr(model.blocks[block].attn, "b_O", None)
    return bias.detach() if isinstance(bias, Tensor) else None


def has_post_attn_norm(model: Any, block: int) -> bool:
    """Whether ``block`` normalises its attention output before adding it to the residual
    (Gemma 2/3 ``ln1_post``): its hooks are then :func:`.names.post_attn_norm_names`."""
    hook_dict = getattr(model, "hook_dict", None)
    return isinstance(hook_dict, dict) and all(n in hook_dict for n in post_attn_norm_names(block))


def _hf_config(model: Any) -> Any | None:
    """The wrapped Hugging Face config of a TransformerBridge (None for native/legacy models)."""
    try:
        hf_model = model.original_model
    except Exception:  # native bridges have none; the property may raise
        return None
    return getattr(hf_model, "config", None)


def _layer_kinds(config: Any, n_layers: int) -> list[str] | None:
    for key in ("layer_types", "attn_types", "attention_layers"):  # HF v5 / TL legacy / GPT-Neo
        kinds = getattr(config, key, None)
        if isinstance(kinds, (list, tuple)) and len(kinds) == n_layers:
            return [str(k) for k in kinds]
    return None


def attention_windows(model: Any) -> list[int | None]:
    """Per block: the sliding-window size of a local attention layer — query ``i`` sees key
    ``j`` iff ``0 <= i - j < window`` (Hugging Face's ``sliding_window``, TransformerLens'
    ``window_size``) — or ``None`` for full causal (global) attention.

    Read from the model's config (``layer_types`` + ``sliding_window`` in transformers 5, e.g.
    Gemma 2/3, Qwen2; ``attn_types`` + ``window_size`` in TransformerLens configs, e.g. GPT-Neo),
    falling back to the wrapped Hugging Face config of a TransformerBridge. A config with a
    ``sliding_window`` but no per-layer types (Mistral) windows every layer unless
    ``use_sliding_window`` is false. Only sliding windows count: chunked attention and the
    like are reported as ``None``.
    """
    cfg = model.cfg
    n_layers = int(cfg.n_layers)
    configs = [c for c in (cfg, _hf_config(model)) if c is not None]

    def window_of(config: Any) -> int | None:
        for key in ("sliding_window", "window_size"):
            value = getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    window = next((w for w in map(window_of, configs) if w is not None), None)
    for config in configs:
        kinds = _layer_kinds(config, n_layers)
        if kinds is not None:
            local = [k.lower() in ("sliding_attention", "local", "sliding") for k in kinds]
            if any(local) and window is None:
                raise UnsupportedModelError(
                    f"model {getattr(cfg, 'model_name', '')!r} has local attention layers "
                    f"({kinds}) but no sliding_window / window_size in its config"
                )
            return [window if is_local else None for is_local in local]
    if window is not None and any(
        getattr(c, "sliding_window", None) for c in configs
    ):  # Mistral-style: one window for every layer
        if all(getattr(c, "use_sliding_window", True) is not False for c in configs):
            return [window] * n_layers
    return [None] * n_layers


def w_q(model: Any, block: int) -> Float[Tensor, "head_index d_model d_head"]:
    """Query projection of every query head of ``block`` (detached)."""
    with readable_weights(model.blocks[block]):
        return model.blocks[block].attn.W_Q.detach()


def w_k(model: Any, block: int) -> Float[Tensor, "head_index d_model d_head"]:
    """Key projection per *query* head (grouped K/V heads repeated to match), detached."""
    with readable_weights(model.blocks[block]):
        wk = model.blocks[block].attn.W_K.detach()
    if wk.ndim == 3 and wk.shape[0] != model.cfg.n_heads:
        wk = wk.repeat_interleave(model.cfg.n_heads // wk.shape[0], dim=0)
    return wk


def b_v(model: Any, block: int) -> Float[Tensor, "head_index d_head"] | None:
    """Value bias per *query* head (grouped heads repeated), detached, or None when absent."""
    with readable_weights(model.blocks[block]):
        bias = getattr(model.blocks[block].attn, "b_V", None)
        bias = bias.detach() if isinstance(bias, Tensor) else None
    if bias is None:
        return None
    if bias.ndim == 2 and bias.shape[0] != model.cfg.n_heads:
        bias = bias.repeat_interleave(model.cfg.n_heads // bias.shape[0], dim=0)
    return bias


def find_module(model: Any, path: str) -> Any | None:
    """The submodule at a dotted ``path`` (``"blocks.3.ln1"``, ``"ln_final"``), or None."""
    module = model
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part, None)
        if module is None:
            return None
    return module


def norm_params(
    model: Any, path: str
) -> tuple[Float[Tensor, " d_model"] | None, Float[Tensor, " d_model"] | None]:
    """``(scale, bias)`` a norm module at ``path`` applies after dividing by its per-position
    scale (detached; None where absent, e.g. TL's folded ``LayerNormPre``). Gemma-style RMSNorm
    (``cfg.rmsnorm_uses_offset``) scales by ``1 + weight``."""
    norm = find_module(model, path)
    if not isinstance(norm, torch.nn.Module):
        return None, None
    with readable_weights(norm):
        weight, bias = getattr(norm, "w", None), getattr(norm, "b", None)
        weight = weight.detach() if isinstance(weight, Tensor) else None
        bias = bias.detach() if isinstance(bias, Tensor) else None
    if weight is not None and getattr(model.cfg, "rmsnorm_uses_offset", False):
        weight = 1.0 + weight
    return weight, bias


def unembed(
    model: Any,
) -> tuple[Float[Tensor, "d_model d_vocab"], Float[Tensor, " d_vocab"] | None]:
    """``(W_U, b_U)`` of the unembedding (detached; ``b_U`` None when absent)."""
    bias = getattr(model, "b_U", None)
    return model.W_U.detach(), bias.detach() if isinstance(bias, Tensor) else None


def norm_eps(model: Any) -> float:
    """The ε a TransformerLens norm adds under its square root (``cfg.eps``, 1e-5 by default)."""
    eps = getattr(getattr(model, "cfg", None), "eps", None)
    return float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) else 1e-5
