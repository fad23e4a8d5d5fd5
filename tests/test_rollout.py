"""attention_rollout and oversquashing_bound against full-matrix float64 products."""

import pytest
import torch

from oversquash_lens import (
    InvalidArgumentError,
    InvalidPatternError,
    InvalidTokensError,
    _tl,
    attention_rollout,
    attention_rollout_from_model,
    oversquashing_bound,
)
from oversquash_lens.flow import _streaming

from .conftest import assert_unchanged, state_snapshot


def _random_patterns(layers=4, heads=3, n=9, *, seed=0, dtype=torch.float64, sparse=False):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(layers, heads, n, n, generator=g, dtype=torch.float64)
    if sparse:  # exact zeros inside the causal part too
        p = p * (torch.rand(p.shape, generator=g, dtype=torch.float64) > 0.5)
        p[..., torch.arange(n), torch.arange(n)] += 1e-3
    p = p.tril()
    return (p / p.sum(-1, keepdim=True)).to(dtype)


def _reference_rollout(p, target, residual=0.5):
    """Full n x n products R_l = A_l ... A_1 in float64; row ``target`` of each."""
    p = p.double()
    n = p.shape[-1]
    a = residual * torch.eye(n, dtype=torch.float64) + (1 - residual) * p.mean(1)
    a = a / a.sum(-1, keepdim=True)
    prod = torch.eye(n, dtype=torch.float64)
    rows = []
    for layer in range(p.shape[0]):
        prod = a[layer] @ prod
        rows.append(prod[target])
    return torch.stack(rows)


def _reference_bound(p, target, beta):
    p = p.double()
    layers, n = p.shape[0], p.shape[-1]
    beta = torch.as_tensor(beta, dtype=torch.float64)
    beta = beta[:, None] if beta.ndim == 1 else beta
    beta = beta.expand(layers, n)
    prod = torch.eye(n, dtype=torch.float64)
    rows = []
    for layer in range(layers):
        bar = p[layer].mean(0) / beta[layer][None, :] + torch.eye(n, dtype=torch.float64)
        prod = bar @ prod
        rows.append(prod[target])
    return torch.stack(rows)


@pytest.mark.parametrize("residual", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("target", [-1, 0, 4])
def test_rollout_equals_full_matrix_product(residual, target):
    p = _random_patterns(sparse=residual == 0.0)
    ref = _reference_rollout(p, target, residual)
    got = attention_rollout(p, target=target, residual=residual)
    assert got.shape == (4, 9) and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    got32 = attention_rollout(p.float(), target=target, residual=residual)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(4, dtype=torch.float64))
    assert float(got[:, target % 9 + 1 :].abs().sum()) == 0.0  # nothing after the target


def test_rollout_large_and_blocked(monkeypatch):
    """Many query blocks and the triangular column-block products (n > 2 * _TRIL_BLOCK)."""
    monkeypatch.setattr(_streaming, "_BLOCK_BYTES", 800_000)  # 4 query blocks per layer
    p = _random_patterns(layers=3, heads=2, n=600, seed=3, dtype=torch.float32)
    for target in (-1, 550):
        ref = _reference_rollout(p, target)
        got = attention_rollout(p, target=target)
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(got.sum(-1).double(), torch.ones(3, dtype=torch.float64))
        ph = attention_rollout(p, target=target, per_head=True)
        torch.testing.assert_close(
            ph[:, 1].double(), _reference_rollout(p[:, 1:2], target), rtol=0, atol=1e-5
        )


def test_identity_attention_gives_identity():
    eye = torch.eye(7).expand(3, 2, 7, 7)
    for residual in (0.0, 0.5, 0.9):
        for target in (-1, 2):
            got = attention_rollout(eye, target=target, residual=residual)
            expected = torch.zeros(3, 7)
            expected[:, target % 7] = 1.0
            assert torch.equal(got, expected)


def test_first_token_absorbs_everything_prop_5_2():
    """PAPER §3, Prop 5.2: powers of 1/2 (Lambda + I) put all the mass on the first token."""
    p = _random_patterns(layers=100, heads=2, n=12, seed=1)
    got = attention_rollout(p)
    assert float(got[0, 0]) < 0.2
    assert float(got[-1, 0]) > 0.999


def test_per_head_consistency():
    p = _random_patterns(heads=3)
    per_head = attention_rollout(p, per_head=True, target=5)
    assert per_head.shape == (4, 3, 9)
    for h in range(3):
        alone = attention_rollout(p[:, h : h + 1], target=5)
        torch.testing.assert_close(per_head[:, h], alone, rtol=0, atol=1e-12)
        torch.testing.assert_close(per_head[:, h], _reference_rollout(p[:, h : h + 1], 5))
    same = p[:, :1].expand(4, 3, 9, 9)  # identical heads: per-head == averaged
    torch.testing.assert_close(
        attention_rollout(same, per_head=True)[:, 2], attention_rollout(same), rtol=0, atol=1e-12
    )


def test_input_layouts_agree():
    p = _random_patterns()
    base = attention_rollout(p)
    torch.testing.assert_close(attention_rollout(p.mean(1)), base, rtol=0, atol=1e-12)
    torch.testing.assert_close(attention_rollout(p[None]), base, rtol=0, atol=0)
    assert attention_rollout(p.to(torch.bfloat16)).dtype == torch.float32


def test_cache_and_model_entry_points(arch_model):
    toks = torch.tensor([[0, 5, 9, 7, 8, 11, 4, 6]])
    _, cache = arch_model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    before = {k: v.clone() for k, v in cache.items()}
    patterns = torch.stack([cache[_tl.pattern_name(b)][0] for b in range(arch_model.cfg.n_layers)])
    ref = _reference_rollout(patterns, -1)
    from_cache = attention_rollout(cache)
    torch.testing.assert_close(from_cache.double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(from_cache, attention_rollout(patterns), rtol=0, atol=0)
    assert set(cache.keys()) == set(before)
    for key, value in before.items():
        assert torch.equal(cache[key], value), f"cache entry {key} was mutated"
    snap = state_snapshot(arch_model)
    from_model = attention_rollout_from_model(arch_model, toks, target=3, per_head=True)
    assert_unchanged(arch_model, snap)
    torch.testing.assert_close(from_model, attention_rollout(patterns, target=3, per_head=True))
    bound = oversquashing_bound(cache, beta=0.7)
    torch.testing.assert_close(bound, _reference_bound(patterns, -1, 0.7), rtol=1e-5, atol=0)


@pytest.mark.parametrize("target", [-1, 3])
def test_bound_equals_path_sum_reference(target):
    p = _random_patterns(seed=5)
    for beta in (1.0, 0.25, [0.5, 1.0, 2.0, 4.0], torch.rand(4, 9, dtype=torch.float64) + 0.1):
        got = oversquashing_bound(p, target=target, beta=beta)
        assert got.dtype == torch.float64 and got.shape == (4, 9)
        torch.testing.assert_close(got, _reference_bound(p, target, beta), rtol=1e-12, atol=0)
    # beta = 1: abar = alpha + I = 2 * (alpha + I) / 2, i.e. 2^l times the 0.5-rollout
    scale = 2.0 ** torch.arange(1, 5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(
        oversquashing_bound(p, target=target), scale * attention_rollout(p, target=target)
    )


def test_bound_of_identity_counts_residual_paths():
    """Identity attention with beta = 1: abar = 2I, so the target gets 2^l, nothing else."""
    got = oversquashing_bound(torch.eye(5).expand(3, 1, 5, 5))
    assert got[:, -1].tolist() == [2.0, 4.0, 8.0]
    assert float(got[:, :-1].abs().sum()) == 0.0


def _broken(kind):
    p = _random_patterns(dtype=torch.float32)
    if kind == "nan":
        p[2, 1, 5, 3] = float("nan")
    elif kind == "inf":
        p[1, 0, 4, 0] = float("inf")
    elif kind == "rows":
        p[3, 2, 6] *= 0.5
    elif kind == "causal":
        p[0, 1, 2, 7] = 0.4
        p[0, 1, 2, :3] *= 0.6
    elif kind == "negative":
        p[1, 0, 3, 0] -= 2.0
        p[1, 0, 3, 1] += 2.0
    return p


@pytest.mark.parametrize(
    "kind, match",
    [
        ("nan", r"nan at layer 2"),
        ("inf", r"inf at layer 1"),
        # every head is checked, so the message names the head (not only their average)
        ("rows", r"layer 3, head 2, query 6 sums to 0\.5"),
        ("causal", r"not causal: layer 0, head 1, query 2 puts 0\.4.* key 7"),
        ("negative", r"negative weight -\d\.\d+ at layer 1, head 0, query 3, key 0"),
    ],
)
def test_invalid_patterns_are_named(kind, match):
    with pytest.raises(InvalidPatternError, match=match):
        attention_rollout(_broken(kind))
    with pytest.raises(InvalidPatternError):
        oversquashing_bound(_broken(kind))


def test_invalid_patterns_per_head():
    with pytest.raises(InvalidPatternError, match=r"layer 3, head 2, query 6 sums to 0\.5"):
        attention_rollout(_broken("rows"), per_head=True)
    with pytest.raises(InvalidPatternError, match=r"layer 0, head 1, query 2 puts 0\.4"):
        attention_rollout(_broken("causal"), per_head=True)


def test_bad_shapes_and_options(gpt2):
    p = _random_patterns()
    with pytest.raises(InvalidPatternError, match=r"\(4, 3, 9, 8\)"):
        attention_rollout(p[..., :8])
    with pytest.raises(InvalidPatternError, match=r"\(9, 9\)"):
        attention_rollout(p[0, 0])
    with pytest.raises(InvalidPatternError, match="dtype torch.int64"):
        attention_rollout(p.long())
    with pytest.raises(InvalidPatternError, match="list"):
        attention_rollout([1, 2])
    with pytest.raises(InvalidArgumentError, match="target=9"):
        attention_rollout(p, target=9)
    with pytest.raises(InvalidArgumentError, match="residual=1.5"):
        attention_rollout(p, residual=1.5)
    with pytest.raises(InvalidArgumentError, match="per_head=True needs per-head"):
        attention_rollout(p.mean(1), per_head=True)
    with pytest.raises(InvalidArgumentError, match="beta must be finite and > 0"):
        oversquashing_bound(p, beta=0.0)
    with pytest.raises(InvalidArgumentError, match=r"beta of shape \(3,\)"):
        oversquashing_bound(p, beta=[1.0, 2.0, 3.0])
    toks = torch.tensor([[0, 5, 9], [0, 6, 7]])
    _, cache = gpt2.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    with pytest.raises(InvalidPatternError, match="2 sequences"):
        attention_rollout(cache)
    with pytest.raises(InvalidTokensError, match="2 sequences"):
        attention_rollout_from_model(gpt2, toks)


@pytest.mark.parametrize("block_bytes", [1, 3 * 40 * 8 * 7])  # 1 query row, then 7 rows a block
def test_blocked_head_sum_and_checks(monkeypatch, block_bytes):
    """The head sum and its validation statistics are taken query block by query block (to
    stay in cache); with many small blocks the results and every error location are the
    same as the reference, wherever in the blocks the bad entry sits."""
    p = _random_patterns(layers=2, heads=3, n=40, seed=5)
    monkeypatch.setattr(_streaming, "_BLOCK_BYTES", block_bytes)
    torch.testing.assert_close(attention_rollout(p), _reference_rollout(p, -1), rtol=0, atol=1e-12)
    for q, k in [(0, 1), (6, 7), (13, 39), (20, 21), (34, 38)]:  # square, rectangle, last block
        bad = p.clone()
        bad[1, 2, q, k] = 0.6
        bad[1, 2, q, : q + 1] *= 0.4 / float(bad[1, 2, q, : q + 1].sum())
        with pytest.raises(InvalidPatternError, match=rf"layer 1, .* query {q} puts .* key {k}"):
            attention_rollout(bad)
    bad = p.clone()
    bad[0, 0, 33, 2] -= 1.0
    bad[0, 0, 33, 3] += 1.0
    with pytest.raises(InvalidPatternError, match=r"negative weight .* query 33, key 2"):
        attention_rollout(bad)
    bad = p.clone()
    bad[0, 1, 27] *= 0.5
    with pytest.raises(InvalidPatternError, match=r"head 1, query 27 sums to 0\.5"):
        attention_rollout(bad)


def test_model_without_attention_is_refused(tmp_path):
    """A state-space model (Mamba) booted as a bridge has no hook_pattern: attention-based
    analyses raise UnsupportedModelError naming the missing hook, not a KeyError."""
    import transformers

    from oversquash_lens import (
        UnsupportedModelError,
        adaptive_temperature,
        classify_heads,
        oversquash_profile,
        testing,
    )

    bridge = _tl.bridge_class()
    tok = testing.tiny_tokenizer()
    cfg = transformers.MambaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, state_size=4, bos_token_id=0
    )
    transformers.MambaForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    try:
        mamba = bridge.boot_transformers(str(tmp_path))
    except Exception as exc:  # noqa: BLE001 - the installed transformer-lens cannot boot Mamba
        pytest.skip(f"this transformer-lens cannot boot a Mamba bridge: {exc}")
    toks = torch.tensor([[0, 5, 6, 7]])
    calls = [
        lambda: attention_rollout_from_model(mamba, toks),
        lambda: classify_heads(mamba, toks, progress=False),
        lambda: oversquash_profile(mamba, toks),
        lambda: adaptive_temperature(mamba).__enter__(),
    ]
    for call in calls:
        with pytest.raises(UnsupportedModelError, match=r"no attention hook 'blocks\.0\.attn"):
            call()


@pytest.mark.parametrize("target", [-1, 3, "all"])
def test_from_model_streams_head_means(arch_model, target):
    """attention_rollout_from_model keeps one validated head mean per layer (never every
    head's pattern) and equals attention_rollout of the full captured patterns."""
    toks = torch.tensor([[0, 5, 9, 7, 8, 11, 4, 6]])
    _, cache = arch_model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    patterns = torch.stack([cache[_tl.pattern_name(b)][0] for b in range(arch_model.cfg.n_layers)])
    snap = state_snapshot(arch_model)
    got = attention_rollout_from_model(arch_model, toks, target=target)
    assert_unchanged(arch_model, snap)
    want = attention_rollout(patterns, target=target)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_from_model_names_the_real_layer_of_a_bad_pattern(llama):
    """An intervention that breaks one head's rows in block 1 (the head mean still sums to 1)
    is refused with the block's real number and the head, also on the streamed path."""

    def break_head(pattern, hook):
        out = pattern.clone()
        out[:, 0, 2, :3] = torch.tensor([1.2, -0.2, 0.0])  # still sums to 1
        return out

    toks = torch.tensor([[0, 5, 9, 7, 8]])
    hooks = [(_tl.pattern_name(1), break_head)]
    with pytest.raises(InvalidPatternError, match="layer 1, head 0, query 2"):
        attention_rollout_from_model(llama, toks, intervention=hooks)
