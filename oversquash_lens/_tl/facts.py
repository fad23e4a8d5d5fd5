"""Model facts: TransformerLens version probes, shape facts from ``cfg``, weights and
normalisation details every analysis needs."""

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .._validate import short as _short
from ..errors import UnsupportedModelError
from .names import pattern_name


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
    cfg = model.cfg
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


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def w_o(model: Any, block: int) -> Float[Tensor, "head_index d_head d_model"]:
    """Output projection of every query head of ``block`` (detached)."""
    return model.blocks[block].attn.W_O.detach()


def w_v(model: Any, block: int) -> Float[Tensor, "head_index d_model d_head"]:
    """Value projection per *query* head (grouped K/V heads repeated to match), detached."""
    wv = model.blocks[block].attn.W_V.detach()
    if wv.ndim == 3 and wv.shape[0] != model.cfg.n_heads:
        wv = wv.repeat_interleave(model.cfg.n_heads // wv.shape[0], dim=0)
    return wv


def text_tokenizer(model: Any) -> Any | None:
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
    weight = getattr(norm, "w", None) if norm is not None else None
    if not isinstance(weight, Tensor):
        return None
    weight = weight.detach()
    return 1.0 + weight if getattr(model.cfg, "rmsnorm_uses_offset", False) else weight
