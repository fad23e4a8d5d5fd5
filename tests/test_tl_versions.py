"""Legacy HookedTransformer (transformer-lens 3.x) and TransformerBridge give the same numbers.

Runs in the transformer-lens 3.9 environment (``.venv-tl3``), where both classes exist: a GPT-2
checkpoint is booted as a Bridge and converted into a HookedTransformer with the same weights.
"""

import warnings

import pytest
import torch

import oversquash_lens as osl
from oversquash_lens import _tl, testing

from .conftest import TL_MAJOR

pytestmark = pytest.mark.skipif(
    TL_MAJOR >= 4, reason="transformer-lens 4 has no HookedTransformer (runs in .venv-tl3)"
)


@pytest.fixture(scope="module")
def twins():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    folder = testing.save_tiny_model("gpt2")
    bridge = _tl.bridge_class().boot_transformers(str(folder))
    bridge.eval()
    hf = GPT2LMHeadModel.from_pretrained(folder)
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        n_layers=c.n_layer,
        n_ctx=c.n_positions,
        d_vocab=c.vocab_size,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = HookedTransformer(cfg)
    hooked.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    hooked.eval()
    return bridge, hooked


TOKENS = torch.randint(4, 64, (2, 11), generator=torch.Generator().manual_seed(1))


def test_residuals_agree(twins):
    bridge, hooked = twins
    a = osl.capture_residuals(bridge, TOKENS).states
    b = osl.capture_residuals(hooked, TOKENS).states
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_patterns_agree(twins):
    bridge, hooked = twins
    a = _tl.attention_patterns(bridge, TOKENS)
    b = _tl.attention_patterns(hooked, TOKENS)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_model_info_both_families(twins):
    bridge, hooked = twins
    ib, ih = _tl.model_info(bridge), _tl.model_info(hooked)
    assert (ib.family, ih.family) == ("bridge", "hooked")
    assert (ib.n_layers, ib.n_heads, ib.d_model) == (ih.n_layers, ih.n_heads, ih.d_model)
