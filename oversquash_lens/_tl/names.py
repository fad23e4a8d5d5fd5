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
