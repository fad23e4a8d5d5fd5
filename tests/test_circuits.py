"""The circuits framework: composition scores, OV/QK summaries, path expansion."""

import contextlib
import io
import tempfile

import pandas as pd
import pytest
import torch

import oversquash_lens as osl
from oversquash_lens import _tl, testing
from oversquash_lens.circuits import (
    Composition,
    PathExpansion,
    circuit_summaries,
    composition,
    composition_scores,
    composition_table,
    count_paths,
    path_expansion,
    random_composition_baseline,
)
from oversquash_lens.circuits.summaries import qk_scores
from oversquash_lens.errors import (
    InvalidArgumentError,
    InvalidTokensError,
    OversquashError,
    UnsupportedModelError,
)
from oversquash_lens.heads.scores import ov_scores

from .conftest import assert_unchanged, state_snapshot

TOKENS = torch.tensor([0, 5, 9, 12, 7, 20, 33, 14, 9, 5])


def _snapshot(model):
    """state_snapshot after one forward (TL 4 bridges add permanent hooks on their first run)."""
    with torch.no_grad():
        model(TOKENS[None, :2])
    return state_snapshot(model)


def _perturbed(arch="gpt2", seed=1, **kwargs):
    """A fresh tiny model whose biases and norm weights are random (not 0 / 1)."""
    model = testing.tiny_model(arch, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


# ------------------------------------------------------------------ dense references
def _raw(model, block):
    """W_Q, W_K, W_V (K/V expanded per query head), W_O and γ, read straight from the model."""
    attn, h = model.blocks[block].attn, model.cfg.n_heads
    w = [attn.W_Q, attn.W_K, attn.W_V, attn.W_O]
    w = [x.detach().double() for x in w]
    w[1], w[2] = (x.repeat_interleave(h // x.shape[0], 0) for x in w[1:3])
    gamma = getattr(model.blocks[block].ln1, "w", None)
    if gamma is not None:
        gamma = gamma.detach().double() + float(getattr(model.cfg, "rmsnorm_uses_offset", False))
    return (*w, gamma)


def _dense_scores(model, kind, fold_norm):
    """Composition scores from explicit d_model × d_model matrices, pair by pair."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    ov, qk = {}, {}
    for b in range(n_layers):
        w_q, w_k, w_v, w_o, gamma = _raw(model, b)
        if fold_norm and gamma is not None:
            w_q, w_k, w_v = (gamma[:, None] * x for x in (w_q, w_k, w_v))
        for h in range(n_heads):
            ov[b, h] = w_v[h] @ w_o[h]
            qk[b, h] = w_q[h] @ w_k[h].T
    out = torch.zeros(n_layers, n_heads, n_layers, n_heads, dtype=torch.float64)
    for (b1, h1), left in ov.items():
        for b2, h2 in ov:
            if b1 >= b2:
                continue
            right = {"Q": qk[b2, h2], "K": qk[b2, h2].T, "V": ov[b2, h2]}[kind]
            out[b1, h1, b2, h2] = (left @ right).norm() / (left.norm() * right.norm())
    return out


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_matches_dense_reference(arch_model, kind):
    for fold in (True, False):
        fast = composition_scores(arch_model, kind, fold_norm=fold, dtype=torch.float64)
        dense = _dense_scores(arch_model, kind, fold)
        assert fast.shape == (2, 4, 2, 4) and fast.dtype == torch.float64
        torch.testing.assert_close(fast, dense, rtol=1e-9, atol=1e-12)
        single = composition_scores(arch_model, kind, fold_norm=fold)
        assert single.dtype == torch.float32
        torch.testing.assert_close(single.double(), dense, rtol=1e-5, atol=1e-7)
    assert torch.all(fast[1] == 0) and torch.all(fast[:, :, 0] == 0)  # masked l1 >= l2


def test_composition_folds_norm_scale():
    model = _perturbed("llama")
    for kind in "QKV":
        folded = composition_scores(model, kind, dtype=torch.float64)
        torch.testing.assert_close(folded, _dense_scores(model, kind, True), rtol=1e-9, atol=0)
        unfolded = composition_scores(model, kind, fold_norm=False, dtype=torch.float64)
        assert (folded - unfolded).abs().max() > 1e-3
    assert composition(model, "V").folded and not composition(model, "V", fold_norm=False).folded


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_matches_transformer_lens(arch_model, kind):
    """Both TL 3.9 and TL 4.3 models carry ``all_composition_scores`` (no norm folding)."""
    if not hasattr(arch_model, "all_composition_scores"):
        pytest.skip("this TransformerLens model has no all_composition_scores")
    theirs = arch_model.all_composition_scores(kind)
    theirs = getattr(theirs, "scores", theirs).double()
    ours = composition_scores(arch_model, kind, fold_norm=False)
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.skipif(_tl.tl_major_version() >= 4, reason="HookedTransformer needs TL <= 3")
@pytest.mark.parametrize("rotary", [False, True])
def test_matches_hooked_transformer_all_composition_scores(rotary):
    """tiny_hooked_model applies no weight processing (random init, LN weight 1, bias 0): its
    all_composition_scores is our fold_norm=False. Then with a random LN scale γ, TL on a copy
    whose W_Q/W_K/W_V carry γ (what fold_ln does, minus centring) equals our fold_norm=True."""
    import copy

    kwargs = {"positional_embedding_type": "rotary", "n_key_value_heads": 2} if rotary else {}
    model = testing.tiny_hooked_model(n_layers=3, **kwargs)
    for kind in "QKV":
        theirs = model.all_composition_scores(kind).double()
        assert (composition_scores(model, kind, fold_norm=False) - theirs).abs().max() < 1e-5
        assert (composition_scores(model, kind) - theirs).abs().max() < 1e-5  # γ = 1
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in model.blocks:
            block.ln1.w.copy_(1 + 0.5 * torch.randn(block.ln1.w.shape, generator=gen))
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for block in folded.blocks:
            gamma = block.ln1.w.clone()
            attn = block.attn
            for name in ("W_Q", "_W_K", "_W_V") if rotary else ("W_Q", "W_K", "W_V"):
                getattr(attn, name).mul_(gamma[None, :, None])
            block.ln1.w.fill_(1.0)
    for kind in "QKV":
        theirs = folded.all_composition_scores(kind).double()
        assert (composition_scores(model, kind) - theirs).abs().max() < 1e-5


def test_random_baseline():
    mean, std = random_composition_baseline(64, 8, n_samples=400, seed=0)
    assert (mean, std) == random_composition_baseline(64, 8, n_samples=400, seed=0)
    # rotation invariance: E[score^2] = 1/d exactly, so mean ≈ 1/sqrt(d) from below
    assert abs(mean**2 + std**2 - 1 / 64) < 0.1 / 64
    assert mean < 1 / 8


def test_composition_result(llama):
    comp = composition(llama, "K", baseline_samples=64)
    assert isinstance(comp, Composition) and comp.kind == "K"
    frame = comp.to_dataframe()
    assert len(frame) == 16 and (frame["source_block"] < frame["dest_block"]).all()
    assert frame["score"].is_monotonic_decreasing
    row = frame.iloc[0]
    s = comp.scores[row.source_block, row.source_head, row.dest_block, row.dest_head]
    assert float(s) == pytest.approx(row.score) and row.relative == pytest.approx(
        row.score / comp.baseline
    )
    assert row.source == f"L{row.source_block}H{row.source_head}"
    pd.testing.assert_frame_equal(
        composition_table(llama, "K"), composition(llama, "K").to_dataframe()
    )
    assert "Composition" in comp._repr_html_()
    fig = comp.plot()
    z = torch.tensor(fig.data[0].z)
    assert z.shape == (8, 8) and torch.isnan(z[:4]).sum() == 16 and torch.isnan(z[:, :4]).all()


# ------------------------------------------------------------------ summaries
def test_qk_scores_planted():
    w = torch.randn(3, 32, 8, dtype=torch.float64)
    self_score, eig, norm = qk_scores(w, w)  # W_QK = W W^T: symmetric PSD
    torch.testing.assert_close(self_score, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(eig, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(qk_scores(w, -w)[0], -torch.ones(3, dtype=torch.float64))
    other = torch.randn(3, 32, 8, dtype=torch.float64)
    s, e, n = qk_scores(w, other)
    dense = w @ other.transpose(1, 2)
    trace = dense.diagonal(dim1=1, dim2=2).sum(-1)
    torch.testing.assert_close(s, trace / torch.linalg.matrix_norm(dense, "nuc"))
    torch.testing.assert_close(n, torch.linalg.matrix_norm(dense))
    assert (s.abs() <= e.abs() + 1e-12).all()


def test_circuit_summaries(arch_model):
    table = circuit_summaries(arch_model)
    assert list(table.columns[:3]) == ["block", "head", "name"] and len(table) == 8
    copying, negative, _ = ov_scores(arch_model, 2, fold_norm=True)
    assert torch.allclose(torch.tensor(table["ov_copying"].to_numpy()).float(), copying.flatten())
    assert torch.allclose(
        torch.tensor(table["ov_neg_fraction"].to_numpy()).float(), negative.flatten()
    )
    assert table["qk_self"].between(-1, 1).all() and (table["ov_norm"] > 0).all()


# ------------------------------------------------------------------ path expansion
def _check_exact(model, exp, target_tokens, target, token=7):
    assert exp.vectors.shape == (len(exp.paths), model.cfg.d_model)
    assert len(exp.to_dataframe()) == exp.vectors.shape[0]
    assert exp.reconstruction_error < 1e-4, exp.reconstruction_error
    assert exp.consistency_error < 1e-5
    is_mlp = torch.tensor([k == "mlp" for k in exp.kinds], dtype=torch.bool)
    for kind, grid in exp.by_position.items():
        rows = is_mlp if kind == "mlp" else ~is_mlp
        sums = [exp.vectors[rows & (exp.orders == k)].sum(0) for k in range(len(grid))]
        torch.testing.assert_close(grid.sum(1), torch.stack(sums), rtol=1e-4, atol=1e-5)
    resid = _tl.capture(model, target_tokens[None], [_tl.resid_name(model.cfg.n_layers)])
    measured = next(iter(resid.values()))[0, target]
    torch.testing.assert_close(exp.residual, measured.to(exp.residual.dtype))
    logit = float(_tl.run_with_hooks(model, target_tokens[None], [])[0, target, token])
    parts = exp.logit_breakdown(token)
    assert parts["total"] == pytest.approx(logit, rel=1e-4, abs=1e-5)
    assert parts["model_logit"] == pytest.approx(logit, rel=1e-4, abs=1e-5)
    frame = exp.logit_contributions(token)
    assert frame["logit"].sum() + parts[["higher_order", "attention_bias", "mlp"]].sum() + parts[
        "constant"
    ] == pytest.approx(logit, rel=1e-4, abs=1e-5)
    return exp.reconstruction_error


@pytest.mark.parametrize("target", [-1, 4])
def test_expansion_is_exact(arch_model, target):
    snap = _snapshot(arch_model)
    exp = path_expansion(arch_model, TOKENS, target=target, max_order=2)
    assert isinstance(exp, PathExpansion)
    assert len(exp.paths) == count_paths(2, 4, 2) == 1 + 8 + 16
    assert exp.term_labels[:2] == ("embed", "L0H0") and exp.term_labels[-1] == "L0H3 → L1H3"
    assert set(exp.sources) == {"embed"} and exp.remainder_parts["mlp"].norm() > 0
    _check_exact(arch_model, exp, TOKENS, target % len(TOKENS))
    with_mlp = path_expansion(arch_model, TOKENS, target=target, max_order=2, mlp_order=1)
    assert len(with_mlp.paths) == count_paths(2, 4, 2, 1) == 25 + (1 + 4) + 1
    mlp_terms = ("MLP0", "MLP0 → L1H0", "MLP0 → L1H1", "MLP0 → L1H2", "MLP0 → L1H3", "MLP1")
    assert with_mlp.term_labels[25:] == mlp_terms
    assert with_mlp.remainder_parts["mlp"].abs().max() == 0  # every MLP path listed
    torch.testing.assert_close(with_mlp.vectors[:25], exp.vectors)
    _check_exact(arch_model, with_mlp, TOKENS, target % len(TOKENS))
    assert_unchanged(arch_model, snap)


def _explicit_terms(model, tokens):
    """Direct, single-head and two-head terms of a 2-layer attention-only LayerNorm model,
    written out from hooks and weights, position by position."""
    n_layers = model.cfg.n_layers
    names = [_tl.resid_name(0)] + [_tl.pattern_name(b) for b in range(n_layers)]
    names += [f"blocks.{b}.ln1.hook_scale" for b in range(n_layers)]
    store = {k: v[0].double() for k, v in _tl.capture(model, tokens[None], names).items()}
    x0 = store[_tl.resid_name(0)]
    n = x0.shape[0]

    def head(b, h, x):  # frozen head (b, h) applied to a residual part x [pos, d]
        _, _, w_v, w_o, gamma = _raw(model, b)
        sigma = store[f"blocks.{b}.ln1.hook_scale"][:, 0]
        a = store[_tl.pattern_name(b)][h]
        xn = (x - x.mean(-1, keepdim=True)) / sigma[:, None] * gamma
        out = torch.zeros_like(x)
        for i in range(n):
            for j in range(i + 1):
                out[i] += a[i, j] * (xn[j] @ w_v[h] @ w_o[h])
        return out

    terms = {"embed": x0[-1]}
    singles = {(b, h): head(b, h, x0) for b in range(n_layers) for h in range(4)}
    terms |= {f"L{b}H{h}": y[-1] for (b, h), y in singles.items()}
    for (b1, h1), y in singles.items():
        for b2 in range(b1 + 1, n_layers):
            for h2 in range(4):
                terms[f"L{b1}H{h1} → L{b2}H{h2}"] = head(b2, h2, y)[-1]
    return terms


def test_expansion_terms_match_explicit_formula():
    model = testing.tiny_native_model(attn_only=True, n_layers=2)
    exp = path_expansion(model, TOKENS[:7], max_order=2)
    explicit = _explicit_terms(model, TOKENS[:7])
    assert set(explicit) == set(exp.term_labels)
    for label, vector in zip(exp.term_labels, exp.vectors):
        torch.testing.assert_close(vector.double(), explicit[label], rtol=1e-5, atol=1e-6)


def test_attention_only_remainder_is_zero():
    model = testing.tiny_native_model(attn_only=True, n_layers=3)
    snap = _snapshot(model)
    exp = path_expansion(model, TOKENS, max_order=3)
    assert len(exp.paths) == count_paths(3, 4, 3) == 1 + 12 + 48 + 64
    assert torch.count_nonzero(exp.remainder) == 0
    _check_exact(model, exp, TOKENS, len(TOKENS) - 1)
    lower = path_expansion(model, TOKENS, max_order=1)
    assert lower.remainder_parts["higher_order"].norm() > 0
    assert lower.reconstruction_error < 1e-4
    assert_unchanged(model, snap)


def test_expansion_with_biases_and_norm_weights():
    model = _perturbed("gpt2", n_layers=3)
    exp = path_expansion(model, TOKENS, max_order=2)
    assert exp.remainder_parts["attention_bias"].norm() > 0.1
    _check_exact(model, exp, TOKENS, len(TOKENS) - 1)
    full = path_expansion(model, TOKENS, max_order=3, mlp_order=2)  # every non-bias path
    assert len(full.paths) == count_paths(3, 4, 3, 2) == 125 + (1 + 8 + 16) + (1 + 4) + 1
    assert full.remainder_parts["higher_order"].abs().max() == 0
    assert full.remainder_parts["mlp"].abs().max() == 0
    _check_exact(model, full, TOKENS, len(TOKENS) - 1)


def test_expansion_post_attention_norm():
    """Gemma 3 normalises each attention output (ln1_post) before adding it."""
    import transformers as tf

    if not hasattr(tf, "Gemma3ForCausalLM"):
        pytest.skip("transformers without Gemma 3")
    cfg = tf.Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        intermediate_size=64,
        max_position_embeddings=128,
        sliding_window=4,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = tf.Gemma3ForCausalLM(cfg)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if "norm" in name:
                    p.add_(0.3 * torch.randn(p.shape))
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        testing.tiny_tokenizer().save_pretrained(folder)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                model = _tl.bridge_class().boot_transformers(folder)
        except Exception as exc:  # pragma: no cover - depends on the TL version's adapters
            pytest.skip(f"this TransformerLens cannot boot Gemma 3: {exc}")
    if not _tl.has_post_attn_norm(model, 0):
        pytest.skip("this bridge exposes no ln1_post hooks")
    _check_exact(model, path_expansion(model, TOKENS, max_order=2), TOKENS, len(TOKENS) - 1)


def test_expansion_tables_and_plot(llama):
    exp = path_expansion(llama, TOKENS, max_order=2)
    by_pos = exp.by_source_position(token=7)
    assert len(by_pos) == 3 * len(TOKENS) and {"norm", "resid_share", "logit"} <= set(by_pos)
    assert by_pos[by_pos["order"] == 0]["norm"].iloc[:-1].eq(0).all()  # direct path: own pos
    mixed = path_expansion(llama, TOKENS, max_order=2, mlp_order=1)
    by_pos = mixed.by_source_position(token=7)
    assert set(by_pos["source"]) == {"embed", "mlp"} and len(by_pos) == 5 * len(TOKENS)
    assert list(mixed.by_order()["part"])[3:5] == ["mlp_order_0", "mlp_order_1"]
    mlp_terms = {t for t in mixed.term_labels if t.startswith("MLP")}
    assert set(mixed.by_path(7, source="mlp")["term"]) == mlp_terms
    by_order = exp.by_order(token=7)
    assert list(by_order["part"]) == [
        "order_0",
        "order_1",
        "order_2",
        "higher_order",
        "attention_bias",
        "mlp",
    ]
    assert by_order["resid_share"].sum() == pytest.approx(1.0, abs=1e-4)
    pairs = exp.by_path(7, order=2)
    assert len(pairs) == 16 and pairs["logit"].is_monotonic_decreasing
    logits = _tl.run_with_hooks(llama, TOKENS[None], [])[0, -1]
    diff = exp.logit_breakdown(7, versus=5)
    assert diff["total"] == pytest.approx(float(logits[7] - logits[5]), rel=1e-4, abs=1e-5)
    frame = exp.logit_contributions(7, versus=5).set_index("term")["logit"]
    single = [exp.logit_contributions(t).set_index("term")["logit"] for t in (7, 5)]
    pd.testing.assert_series_equal(frame, (single[0] - single[1])[frame.index], atol=1e-6)
    contributions = exp.logit_contributions("5")  # one-token string through the tokenizer
    assert contributions["logit"].is_monotonic_decreasing
    fig = exp.plot(7, k=5)
    assert len(fig.data[0].y) == 5 and all("→" in y for y in fig.data[0].y)
    assert "PathExpansion" in exp._repr_html_()


# ------------------------------------------------------------------ errors and guarantees
def test_bad_inputs_raise(llama):
    # (non-str kinds and non-bool flags are refused too, but beartype catches them first here)
    for kind in ("X", "", "QK"):
        with pytest.raises(InvalidArgumentError, match=repr(kind)):
            composition_scores(llama, kind)
    with pytest.raises(InvalidArgumentError, match="int64"):
        composition_scores(llama, "Q", dtype=torch.int64)
    with pytest.raises(UnsupportedModelError):
        composition_scores(torch.nn.Linear(2, 2), "Q")
    with pytest.raises(InvalidArgumentError, match="100"):
        path_expansion(llama, TOKENS, target=100)
    with pytest.raises(InvalidArgumentError, match="True"):
        path_expansion(llama, TOKENS, target=True)
    for order in (0, 3, -1):
        with pytest.raises(InvalidArgumentError, match=f"max_order={order}"):
            path_expansion(llama, TOKENS, max_order=order)
    for order in (True, False):
        with pytest.raises(InvalidArgumentError, match=f"max_order={order!r}"):
            path_expansion(llama, TOKENS, max_order=order)
    for order in (-1, 2):
        with pytest.raises(InvalidArgumentError, match=f"mlp_order={order}"):
            path_expansion(llama, TOKENS, mlp_order=order)
    with pytest.raises(InvalidArgumentError, match="max_terms=10"):
        path_expansion(llama, TOKENS, max_terms=10)
    with pytest.raises(InvalidTokensError):
        path_expansion(llama, torch.stack([TOKENS, TOKENS]))
    exp = path_expansion(llama, TOKENS, max_order=1)
    for token in (64, -1, 2.5, True, "5 5"):
        with pytest.raises(InvalidTokensError, match=repr(token) if token != 64 else "64"):
            exp.logit_contributions(token)
    with pytest.raises(InvalidArgumentError, match="order=2"):
        exp.by_path(order=2)
    with pytest.raises(OversquashError):
        random_composition_baseline(0, 8)


def test_model_unchanged_by_every_entry_point(arch_model):
    snap = _snapshot(arch_model)
    composition(arch_model, "Q", baseline_samples=8).plot()
    circuit_summaries(arch_model)
    path_expansion(arch_model, TOKENS, max_order=2).plot(7)
    with pytest.raises(InvalidArgumentError):
        path_expansion(arch_model, TOKENS, max_order=5)
    assert_unchanged(arch_model, snap)


def test_top_level_exports():
    for name in (
        "composition_scores",
        "path_expansion",
        "PathExpansion",
        "Composition",
        "composition",
        "circuit_summaries",
    ):
        assert name in osl.__all__ and getattr(osl, name) is not None


def test_example_script_on_a_tiny_model(tmp_path):
    """examples/circuits_on_smollm2.py in quick mode on a tiny Llama folder (the embedded model
    is what the script is for; the tiny one checks that it runs and that its numbers add up)."""
    import re

    from .test_examples import run_example

    folder = testing.save_tiny_model("llama", tmp_path / "llama")
    prompt = "what is the last digit in this sequence ? 3 8 1 9 4 7 2 6 . answer :"
    out = run_example("circuits_on_smollm2.py", "--model", str(folder), "--prompt", prompt)
    assert "V-composition: 16 pairs" in out and "random baseline" in out
    error = float(re.search(r"reconstruction error ([0-9.e+-]+)", out).group(1))
    assert error < 1e-4
    line = next(x for x in out.splitlines() if x.startswith("logit('6'):"))
    total = float(re.search(r"total ([-+][0-9.]+)", line).group(1))
    model_logit = float(re.search(r"model_logit ([-+][0-9.]+)", line).group(1))
    assert abs(total - model_logit) < 0.011
    assert "heads attending from the target to position 17 (the earlier '6')" in out
