"""Hook names: the one place that spells TransformerLens hook points."""


def resid_name(layer: int) -> str:
    """Hook for residual layer ``layer`` in 0..n_layers (0 = input of block 0)."""
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def resid_pre_name(block: int) -> str:
    return f"blocks.{block}.hook_resid_pre"


def pattern_name(block: int) -> str:
    """``[batch, head, query_pos, key_pos]`` post-softmax attention of block ``block``."""
    return f"blocks.{block}.attn.hook_pattern"


def z_name(block: int) -> str:
    """``[batch, pos, head, d_head]`` per-head attention outputs before W_O."""
    return f"blocks.{block}.attn.hook_z"


def attn_out_name(block: int) -> str:
    return f"blocks.{block}.hook_attn_out"


def v_name(block: int) -> str:
    """``[batch, pos, kv_head, d_head]`` value vectors (one per K/V head when grouped)."""
    return f"blocks.{block}.attn.hook_v"


def mlp_out_name(block: int) -> str:
    """``[batch, pos, d_model]`` what the MLP of ``block`` adds to the residual (after any
    post-MLP norm, e.g. Gemma 2/3's ``ln2_post``)."""
    return f"blocks.{block}.hook_mlp_out"


def post_attn_norm_names(block: int) -> tuple[str, str, str]:
    """``(input, per-position divisor, output)`` hooks of the norm some blocks apply to the
    attention output before adding it (Gemma 2/3 ``ln1_post``); absent on most models."""
    base = f"blocks.{block}.ln1_post"
    return f"{base}.hook_in", f"{base}.hook_scale", f"{base}.hook_out"


def resid_mid_name(block: int) -> str:
    """``[batch, pos, d_model]`` residual between attention and MLP (sequential blocks only)."""
    return f"blocks.{block}.hook_resid_mid"


def norm_scale_name(path: str) -> str:
    """``[batch, pos, 1]`` per-position divisor of the norm module at ``path`` (``"ln_final"``,
    ``"blocks.3.ln1"``): the std (LayerNorm) or RMS (RMSNorm) of its input, eps included."""
    return f"{path}.hook_scale"


def ln1_path(block: int) -> str:
    return f"blocks.{block}.ln1"


def ln1_post_path(block: int) -> str:
    return f"blocks.{block}.ln1_post"


FINAL_NORM = "ln_final"
