"""Tiny random-weight models built offline, for tests, benchmarks and tutorials.

``tiny_model("llama")`` saves a small Hugging Face config with random weights and a word-level
tokenizer to a temporary folder and boots it with ``TransformerBridge.boot_transformers`` — the
same path a real model takes — in well under a second, with no download.
"""

import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ARCHITECTURES",
    "EXTRA_ARCHITECTURES",
    "tiny_model",
    "tiny_native_model",
    "tiny_hooked_model",
    "tiny_tokenizer",
    "save_tiny_model",
    "TINY_SYMBOLS",
]

ARCHITECTURES = ("gpt2", "neox", "llama", "gemma")
#: Also buildable, not in the default test matrix: Bloom (ALiBi, no position embeddings) and
#: Gemma 3 (local layers with a sliding window of ``sliding_window`` = 4 tokens by default,
#: every third layer global).
EXTRA_ARCHITECTURES = ("bloom", "gemma3")

_WORDS = (
    "0 1 2 3 4 5 6 7 8 9 , . ? : the a cat sat on mat what is last first digit item in this "
    "sequence count how many ones are there answer word sentence dog ran and"
).split()


def _symbol_ids() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for word in ("<bos>", "<eos>", "<unk>", "<pad>", *_WORDS):
        vocab.setdefault(word, len(vocab))
    return {w: i for w, i in vocab.items() if w.isdigit() or w in (",", ".")}


#: Ids of the digits, "," and "." in :func:`tiny_tokenizer` (digits 4..13, "," 14, "." 15):
#: the ``symbols`` the tiny tokenizer-less models (:func:`tiny_native_model`) carry.
TINY_SYMBOLS: dict[str, int] = _symbol_ids()


def tiny_tokenizer() -> Any:
    """A whitespace word-level fast tokenizer over digits and a few words (BOS id 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "<unk>": 2, "<pad>": 3}
    for word in _WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def _hf_model(
    arch: str,
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int | None,
    n_ctx: int,
    d_vocab: int,
    **overrides: Any,
) -> Any:
    import transformers as tf

    common: dict[str, Any] = {
        "vocab_size": d_vocab,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 3,
    }
    cfg: Any
    cls: Any
    if arch == "gpt2":
        cfg = tf.GPT2Config(
            n_positions=n_ctx,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
        cls = tf.GPT2LMHeadModel
    elif arch == "neox":
        cfg = tf.GPTNeoXConfig(
            max_position_embeddings=n_ctx,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=4 * d_model,
            **common,
        )
        cls = tf.GPTNeoXForCausalLM
    elif arch == "llama":
        cfg = tf.LlamaConfig(
            max_position_embeddings=n_ctx,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads or max(1, n_heads // 2),
            intermediate_size=2 * d_model,
            **common,
        )
        cls = tf.LlamaForCausalLM
    elif arch in ("gemma", "gemma3"):
        shape: dict[str, Any] = dict(
            max_position_embeddings=n_ctx,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads or 1,
            head_dim=d_model // n_heads,
            intermediate_size=2 * d_model,
            **common,
        )
        if arch == "gemma":
            cfg, cls = tf.GemmaConfig(**shape), tf.GemmaForCausalLM
        else:  # local layers with a sliding window, every third layer global
            layer_types = [
                "full_attention" if (i + 1) % 3 == 0 else "sliding_attention"
                for i in range(n_layers)
            ]
            window = overrides.pop("sliding_window", 4)
            cfg = tf.Gemma3TextConfig(**shape, sliding_window=window, layer_types=layer_types)
            cls = tf.Gemma3ForCausalLM
    elif arch == "bloom":
        cfg = tf.BloomConfig(hidden_size=d_model, n_layer=n_layers, n_head=n_heads, **common)
        cls = tf.BloomForCausalLM
    else:
        raise ValueError(f"arch={arch!r} is not one of {ARCHITECTURES + EXTRA_ARCHITECTURES}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cls(cfg)


def save_tiny_model(
    arch: str,
    folder: str | Path | None = None,
    *,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    n_ctx: int = 128,
    d_vocab: int = 64,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Save a random HF model of ``arch`` plus the tiny tokenizer to ``folder``; return it."""
    folder = Path(folder or tempfile.mkdtemp(prefix=f"oversquash_tiny_{arch}_"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _hf_model(
            arch,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            n_ctx=n_ctx,
            d_vocab=d_vocab,
            **overrides,
        )
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_model(arch: str = "llama", **kwargs: Any) -> Any:
    """A tiny random TransformerBridge of ``arch`` in {gpt2, neox, llama, gemma}, booted offline."""
    import contextlib
    import io

    from .._tl import bridge_class

    if kwargs.get("folder") is not None:  # the caller keeps the folder
        folder = save_tiny_model(arch, **kwargs)
        with contextlib.redirect_stderr(io.StringIO()):
            model = bridge_class().boot_transformers(str(folder))
    else:  # booted from a temporary folder that is removed again (weights are in memory)
        with tempfile.TemporaryDirectory(prefix=f"oversquash_tiny_{arch}_") as tmp:
            folder = save_tiny_model(arch, tmp, **kwargs)
            with contextlib.redirect_stderr(io.StringIO()):
                model = bridge_class().boot_transformers(str(folder))
    model.eval()
    return model


def tiny_native_model(
    *,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_ctx: int = 128,
    d_vocab: int = 64,
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """A tiny random TL-native TransformerBridge (``boot_native``), no Hugging Face files."""
    from transformer_lens import TransformerBridgeConfig

    from .._tl import bridge_class

    cfg = TransformerBridgeConfig(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_layers=n_layers,
        n_ctx=n_ctx,
        n_heads=n_heads,
        d_vocab=d_vocab,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        **overrides,
    )
    model = bridge_class().boot_native(cfg)
    model.eval()
    # No tokenizer: the task builders read the symbol ids from here (docs/science.md §6).
    model.oversquash_symbols = dict(TINY_SYMBOLS)
    return model


def tiny_hooked_model(
    *,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_ctx: int = 128,
    d_vocab: int = 64,
    positional_embedding_type: str = "standard",
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """A tiny random legacy ``HookedTransformer`` (TL 2.x/3.x only) with the tiny tokenizer.

    Raises ImportError on transformer-lens 4, which removed ``HookedTransformer``.
    """
    import importlib
    import warnings

    tl: Any = importlib.import_module("transformer_lens")  # TL 2.x/3.x names (gone in TL 4)
    if not hasattr(tl, "HookedTransformer"):
        raise ImportError("transformer-lens 4 has no HookedTransformer; use tiny_model()")
    HookedTransformer, HookedTransformerConfig = tl.HookedTransformer, tl.HookedTransformerConfig
    cfg = HookedTransformerConfig(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_layers=n_layers,
        n_ctx=n_ctx,
        n_heads=n_heads,
        d_vocab=d_vocab,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        positional_embedding_type=positional_embedding_type,
        **overrides,
    )
    from transformers import AutoTokenizer

    # TL needs a tokenizer that was loaded from disk (it reads init_kwargs["name_or_path"]).
    # TL reloads it from that folder (get_tokenizer_with_bos), so build the model inside.
    with tempfile.TemporaryDirectory(prefix="oversquash_tiny_tok_") as folder:
        tiny_tokenizer().save_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model
