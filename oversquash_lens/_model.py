"""The one place that knows TransformerLens: hook names, version differences, guards.

Every other module asks this one for hook names, model facts and validated tokens, and runs
forward passes through :func:`run_with_hooks` so that hooks are always removed and the model's
state is always restored (also when an exception is raised inside a forward pass).

Supported model objects (duck-typed on the HookedRootModule API):
``transformer_lens.TransformerBridge`` (TL 3.9+/4.x) and the legacy ``HookedTransformer``
(TL 2.x/3.x).
"""

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ._inputs import int_list as int_list
from ._inputs import resolve_dtype as resolve_dtype
from ._inputs import resolve_index as resolve_index
from ._inputs import resolve_positions as resolve_positions
from ._state import cast_temporarily as cast_temporarily
from ._state import count_hooks as count_hooks
from ._state import preserved as preserved
from ._state import release_graphs as release_graphs
from .errors import InvalidArgumentError, InvalidTokensError, UnsupportedModelError

# --------------------------------------------------------------------------- hook names
EMBED = "hook_embed"


def resid_name(layer: int) -> str:
    """Hook for residual layer ``layer`` in 0..n_layers (0 = input of block 0)."""
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def resid_pre_name(block: int) -> str:
    return f"blocks.{block}.hook_resid_pre"


def resid_post_name(block: int) -> str:
    return f"blocks.{block}.hook_resid_post"


def pattern_name(block: int) -> str:
    """``[batch, head, query_pos, key_pos]`` post-softmax attention of block ``block``."""
    return f"blocks.{block}.attn.hook_pattern"


def z_name(block: int) -> str:
    """``[batch, pos, head, d_head]`` per-head attention outputs before W_O."""
    return f"blocks.{block}.attn.hook_z"


def attn_out_name(block: int) -> str:
    return f"blocks.{block}.hook_attn_out"


def attn_scores_name(block: int) -> str:
    """Pre-softmax scores. Unreliable on ``boot_native`` bridges (holds the pattern there)."""
    return f"blocks.{block}.attn.hook_attn_scores"


# --------------------------------------------------------------------------- TL versions
def bridge_class() -> Any:
    """``TransformerBridge`` (top-level in TL 4, under ``model_bridge`` in TL 3.9)."""
    try:
        from transformer_lens import TransformerBridge
    except ImportError:
        from transformer_lens.model_bridge import TransformerBridge
    return TransformerBridge


def hooked_transformer_class() -> Any | None:
    """The legacy ``HookedTransformer`` class (TL 2.x/3.x), or None on TL 4."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return None
    return HookedTransformer


def tl_major_version() -> int:
    from importlib.metadata import version

    return int(version("transformer-lens").split(".")[0])


# --------------------------------------------------------------------------- model facts
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


def _short(x: Any, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


# --------------------------------------------------------------------------- weights
def w_o(model: Any, block: int) -> Float[Tensor, "head_index d_head d_model"]:
    """Output projection of every query head of ``block`` (detached)."""
    return model.blocks[block].attn.W_O.detach()


def w_v(model: Any, block: int) -> Float[Tensor, "head_index d_model d_head"]:
    """Value projection per *query* head (grouped K/V heads repeated to match), detached."""
    wv = model.blocks[block].attn.W_V.detach()
    if wv.ndim == 3 and wv.shape[0] != model.cfg.n_heads:
        wv = wv.repeat_interleave(model.cfg.n_heads // wv.shape[0], dim=0)
    return wv


# --------------------------------------------------------------------------- inputs
def prepare_tokens(
    model: Any, tokens: Any, info: ModelInfo | None = None, *, name: str = "tokens"
) -> Int[Tensor, "batch pos"]:
    """Validate ``tokens`` and return a ``[batch, pos]`` LongTensor on the model's device.

    Accepts a string or list of strings (tokenized with ``model.to_tokens``), a list of ints,
    a list of equal-length lists of ints, or a 1-D/2-D integer tensor.
    """
    info = info or model_info(model)
    if isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, str) for t in tokens)
    ):
        if getattr(model, "tokenizer", None) is None:
            raise InvalidTokensError(
                f"{name}={_short(tokens)} is text but the model has no tokenizer; pass token ids"
            )
        if isinstance(tokens, str) and not tokens:
            raise InvalidTokensError(f"{name}='' is empty")
        try:  # never let to_tokens cut text at n_ctx silently: too long must raise below
            tokens = model.to_tokens(tokens, truncate=False)
        except TypeError:  # a duck-typed model whose to_tokens has no ``truncate``
            tokens = model.to_tokens(tokens)
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


# --------------------------------------------------------------------------- runs
Hook = tuple[str, Callable[..., Any]]


def run_with_hooks(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Sequence[Hook],
    *,
    grad: bool = False,
    stop_at_layer: int | None = None,
    freeze: bool = False,
) -> Any:
    """One forward pass with temporary hooks; hooks removed and model state restored always.

    Returns the logits (or the residual stream when ``stop_at_layer`` is given).
    """
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    kwargs: dict[str, Any] = {}
    if stop_at_layer is not None:
        kwargs["stop_at_layer"] = stop_at_layer
    with preserved(model, freeze=freeze), ctx, model.hooks(fwd_hooks=list(fwd_hooks)):
        return model(tokens, **kwargs)


def capture(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    names: Sequence[str],
    *,
    transform: Callable[[str, Tensor], Tensor] | None = None,
    stop_at_layer: int | None = None,
) -> dict[str, Tensor]:
    """Capture the listed hook activations in one forward pass (detached copies).

    ``transform(name, activation)`` may shrink each activation inside the hook (e.g. keep only a
    few positions) so memory stays proportional to what is kept, never a full cache.
    """
    store: dict[str, Tensor] = {}

    def make_hook(name: str) -> Callable[..., None]:
        # Bind the name we asked for: TL 4 passes alias hook points (hook.name may differ).
        def hook(x: Tensor, hook: Any) -> None:
            kept = transform(name, x) if transform is not None else x
            store[name] = kept.detach().clone()

        return hook

    run_with_hooks(model, tokens, [(n, make_hook(n)) for n in names], stop_at_layer=stop_at_layer)
    missing = [n for n in names if n not in store]
    if missing:
        raise UnsupportedModelError(
            f"model {model_info(model).name!r} did not fire hook(s) {missing[:3]}"
        )
    return store


def attention_patterns(
    model: Any, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch layer head_index query_pos key_pos"]:
    """Post-softmax attention of every layer and head, for each sequence in the batch."""
    info = require_attention(model)
    names = [pattern_name(b) for b in range(info.n_layers)]
    store = capture(model, tokens, names)
    return torch.stack([store[n] for n in names], dim=1)


def is_activation_cache(obj: Any) -> bool:
    """True for a TransformerLens ActivationCache (from either TL version) or a plain dict cache."""
    return type(obj).__name__ == "ActivationCache" or (
        isinstance(obj, dict) and any(isinstance(k, str) and "hook_" in k for k in obj)
    )


def patterns_from_cache(
    cache: Any, *, batch_index: int = 0
) -> Float[Tensor, "layer head_index query_pos key_pos"]:
    """Stack ``blocks.{l}.attn.hook_pattern`` from an ActivationCache (read-only)."""
    keys = [k for k in cache.keys() if k.endswith("attn.hook_pattern")]
    if not keys:
        raise InvalidArgumentError(
            "the cache holds no 'blocks.{l}.attn.hook_pattern' entries; run_with_cache with "
            "names_filter=lambda n: n.endswith('hook_pattern')"
        )
    keys.sort(key=lambda k: int(k.split(".")[1]))
    out = []
    for k in keys:
        t = cache[k]
        if t.ndim == 4:
            t = t[batch_index]
        out.append(t)
    return torch.stack(out, dim=0)


# --------------------------------------------------------------------------- one sequence
# (added for paths/rollout/sensitivity: analyses of one prompt seen from one target token)
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


def cache_pattern_batch(cache: Any) -> int:
    """Number of sequences behind the ``hook_pattern`` entries of a cache (1 when batch-less)."""
    for key in cache.keys():
        if key.endswith("attn.hook_pattern"):
            t = cache[key]
            return int(t.shape[0]) if t.ndim == 4 else 1
    return 1


# --------------------------------------------------------------------------- text
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


# --------------------------------------------------------------------------- heads
# (added for heads: the pre-attention norm scale and forward passes that start mid-model)
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


def run_from_layer(
    model: Any,
    resid: Float[Tensor, "batch pos d_model"],
    block: int,
    fwd_hooks: Sequence[Hook],
    *,
    tokens: Int[Tensor, "batch pos"] | None = None,
) -> Any:
    """Logits of a forward pass that starts at ``block`` from the residual entering it
    (``start_at_layer``), with temporary hooks (blocks before ``block`` are not run). Block 0
    with ``tokens`` given, or a shortformer model, runs the whole model from ``tokens``."""
    shortformer = getattr(model.cfg, "positional_embedding_type", "") == "shortformer"
    if tokens is not None and (block == 0 or shortformer):
        return run_with_hooks(model, tokens, fwd_hooks)
    try:
        with preserved(model), torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
            return model(resid, start_at_layer=block)
    except NotImplementedError:
        # TL 3.9's TransformerBridge has no start_at_layer: run the whole model instead.
        if tokens is None:
            raise
        return run_with_hooks(model, tokens, fwd_hooks)


def resumes_exactly(model: Any, tokens: Int[Tensor, "batch pos"], resid: Sequence[Tensor]) -> bool:
    """Whether ``model(resid[b], start_at_layer=b)`` reproduces the logits of a full forward
    pass over ``tokens`` (checked at block 1 and at the last block; ``resid[b]`` is the
    residual entering block ``b``). Not every bridge does: transformer-lens 4.3's Bloom bridge
    loses its ALiBi bias when it starts mid-model. Callers then run the whole model instead."""
    blocks = sorted({1, len(resid) - 1} - {0})
    if not blocks:
        return True
    full = run_with_hooks(model, tokens, [])
    tol = 1e-4 * max(1.0, float(full.abs().max()))
    for block in blocks:
        try:
            part = run_from_layer(model, resid[block], block, [])
        except NotImplementedError:  # TL 3.9's bridge: run_from_layer falls back to full runs
            return False
        if part.shape != full.shape or float((part - full).abs().max()) > tol:
            return False
    return True


def check_pattern_edits_reach_output(model: Any) -> None:
    """Raise :class:`UnsupportedModelError` when replacing ``hook_pattern`` does not change the
    model's output: some bridges (e.g. transformer-lens 3.9's ``boot_native`` bridge) expose the
    pattern for reading only, so an intervention there would silently do nothing.

    Probe: 3 tokens, every layer's pattern replaced by all-attention-on-position-0; one
    no-grad forward each way, hooks removed on exit."""
    info = require_attention(model)
    tokens = torch.arange(3, device=model_device(model)).remainder(info.d_vocab)[None]

    def first_only(pattern: Tensor, hook: Any) -> Tensor:
        out = torch.zeros_like(pattern)
        out[..., 0] = 1
        return out

    names = [pattern_name(b) for b in range(info.n_layers)]
    with torch.no_grad():
        plain = run_with_hooks(model, tokens, [])
        edited = run_with_hooks(model, tokens, [(n, first_only) for n in names])
    if torch.equal(plain, edited):
        raise UnsupportedModelError(
            f"model {info.name!r} ({type(model).__name__}, transformer-lens "
            f"{tl_major_version()}.x): edits to hook_pattern do not reach its output, so an "
            f"attention-pattern intervention would silently do nothing"
        )
