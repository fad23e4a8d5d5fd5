"""classify_heads on planted heads (RoPE + GQA Llama), the NoPE counter-example of Round and
Round, and every score against an independent reference (brute-force loops, one-head-at-a-time
ablations, single-head forward passes, full d_model × d_model eigenvalues)."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from oversquash_lens import (
    InvalidArgumentError,
    InvalidPatternError,
    InvalidTokensError,
    _tl,
    testing,
)
from oversquash_lens.heads import (
    LABELS,
    HeadReport,
    HeadThresholds,
    classify_heads,
    label_heads,
    pattern_scores,
)
from oversquash_lens.planted import PLANTED, nope_qk_model, planted_heads_model

from .conftest import assert_unchanged, state_snapshot

H = 10  # query heads per layer of planted_heads_model()

TOKENS = torch.tensor([[0, 5, 9, 7, 8, 11, 4, 9], [0, 6, 6, 6, 12, 13, 14, 15]])


def _snapshot(model):
    """state_snapshot after one forward (TL 4 bridges add permanent hooks on their first run)."""
    with torch.no_grad():
        model(TOKENS[:1])
    return state_snapshot(model)


def _random_prompts(n_seq=3, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(4, 64, (n_seq, n - 1), generator=g)
    return torch.cat([torch.zeros(n_seq, 1, dtype=torch.long), body], dim=1)


@pytest.fixture(scope="module")
def planted():
    return planted_heads_model()


def test_planted_heads_get_their_labels_and_no_other_head_does(planted):
    snap = _snapshot(planted)
    report = classify_heads(planted, _random_prompts(), progress=False)
    assert_unchanged(planted, snap)
    expected = [[PLANTED.get(h, "mixing") for h in range(H)], ["mixing"] * H]
    assert [list(row) for row in report.labels] == expected
    frame = report.to_dataframe().set_index(["block", "head"])
    for head, column in [(0, "diag_min"), (2, "first_mass"), (4, "prev_min"), (6, "diag_min")]:
        assert frame.loc[(0, head), column] > 0.999
    assert frame.loc[(0, 8), "is_diagonal"] and frame.loc[(0, 4), "is_previous"]
    assert frame.loc[(0, 0), "write_ratio"] == 0  # W_O = 0: nothing written, nothing to ablate
    assert frame.loc[(0, 0), ["delta_loss_zero", "delta_loss_mean"]].abs().max() == 0
    assert frame.loc[(0, 6), "ov_copying"] == pytest.approx(-1, abs=1e-5)
    assert frame.loc[(0, 8), "ov_copying"] == pytest.approx(1, abs=1e-5)
    assert frame.loc[(0, 6), "write_ratio"] > 0.1 and frame.loc[(0, 8), "write_ratio"] > 0.1
    assert report.counts().to_dict() == {
        "diagonal-noop": 1,
        "diagonal-eraser": 1,
        "diagonal": 1,
        "bos-sink": 1,
        "previous-token": 1,
        "mixing": 15,
    }
    assert sorted(zip(report.flagged["head"], report.flagged["label"])) == sorted(PLANTED.items())


def test_rope_diagonal_head_survives_repeated_tokens(planted):
    """RoPE separates identical keys by position: [bos, x, x, ...] stays diagonal."""
    report = classify_heads(planted, [[0] + [7] * 20], ablation=False, progress=False)
    assert report.labels[0][0] == "diagonal-noop" and report.labels[0][8] == "diagonal"
    assert report.diag_min[0, 0] > 0.999
    assert torch.isnan(report.delta_loss_zero).all() and torch.isnan(report.delta_loss_mean).all()


def test_nope_cannot_make_a_diagonal_head():
    """Round and Round: without positions, q = k cannot single out the current token. Identical
    tokens have identical keys, so [bos, x, x] splits query 2 evenly between keys 1 and 2
    (α_22 = α_21 ≤ 1/2); a constant q = k gives exactly uniform rows α_ij = 1/(i+1)."""
    token = nope_qk_model("token")
    pattern = _tl.attention_patterns(token, torch.tensor([[0, 7, 7]]))[0, 0, 0]
    assert pattern[1, 1] > 0.99  # the same edit is diagonal where tokens differ ...
    assert pattern[2, 1] == pytest.approx(pattern[2, 2].item(), abs=1e-6)  # ... not on a repeat
    repeats = [[0, 7, 7], [0, 5, 9, 5, 9, 11, 11, 11, 12, 13, 14, 15, 15, 16, 17]]
    report = classify_heads(token, repeats, progress=False)
    assert report.diag_min[0, 0] <= 0.5 + 1e-6
    assert not report.to_dataframe().loc[0, "is_diagonal"]  # Def 5.1 fails: never diagonal
    assert not report.relabel(strict=True).labels[0][0].startswith("diagonal")
    # The default, mean-based and chance-relative label still flags the head: it puts most of
    # its mass on same-token keys, which is what a researcher should look at (science.md §4).
    assert report.to_dataframe().loc[0, "diag_excess"] > 0.5

    constant = nope_qk_model("constant")
    long = _random_prompts(2, 24)
    pattern = _tl.attention_patterns(constant, long)[0, 0, 0]
    uniform = torch.tril(torch.ones(24, 24)) / torch.arange(1, 25)[:, None]
    torch.testing.assert_close(pattern, uniform, atol=1e-5, rtol=0)
    report = classify_heads(constant, long, ablation=False, progress=False)
    assert report.labels[0][0] == "mixing"
    expected = sum(1 / (i + 1) for i in range(1, 24)) / 23
    assert report.diag_mass[0, 0].item() == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------- references
def _brute_force_stats(p, window):
    """Python loops over one [query, key] pattern."""
    n = p.shape[0]
    diag = [p[i, i].item() for i in range(1, n)]
    prev = [p[i, i - 1].item() for i in range(2, n)]  # query 1's previous token is the first
    first = [p[t, 0].item() for t in range(1, min(n, window))]
    ent = [-sum(x * math.log(x) for x in p[i, : i + 1].tolist() if x > 0) for i in range(1, n)]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return [mean(diag), min(diag), mean(prev), min(prev), mean(first), mean(ent)]


def _random_patterns(batch, layers, heads, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, layers, heads, n, n, generator=g, dtype=torch.float64) * 3
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    return logits.masked_fill(~causal, -torch.inf).softmax(-1)


@pytest.mark.parametrize("window", [64, 4])
def test_pattern_scores_match_brute_force(window):
    pats = _random_patterns(3, 2, 3, 7)
    scores = pattern_scores(pats, sink_window=window)
    names = ["diag_mass", "diag_min", "prev_mass", "prev_min", "first_mass", "entropy"]
    for layer in range(2):
        for head in range(3):
            per_seq = [_brute_force_stats(pats[b, layer, head], window) for b in range(3)]
            for i, name in enumerate(names):
                values = [s[i] for s in per_seq]
                want = min(values) if name.endswith("_min") else sum(values) / 3
                assert scores[name][layer, head].item() == pytest.approx(want, abs=1e-6), name
    one = pattern_scores(pats[1], sink_window=window)  # [layer, head, q, k]: one sequence
    assert one["entropy"][1, 2].item() == pytest.approx(_brute_force_stats(pats[1, 1, 2], 64)[5])


def test_pattern_scores_from_a_cache_equal_model_scores(llama):
    _, cache = llama.run_with_cache(TOKENS, names_filter=lambda n: n.endswith("hook_pattern"))
    before = {k: v.clone() for k, v in cache.items()}
    from_cache = pattern_scores(cache)
    assert all(torch.equal(cache[k], v) for k, v in before.items())  # cache not mutated
    from_tensor = pattern_scores(_tl.attention_patterns(llama, TOKENS))
    report = classify_heads(llama, TOKENS, ablation=False, progress=False)
    for name, value in from_cache.items():
        torch.testing.assert_close(value, from_tensor[name])
        torch.testing.assert_close(value, getattr(report, name), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.transpose(-1, -2), "not causal"),
        (lambda p: p * 0.5, "do not sum to 1"),
        (lambda p: p[..., :3], "query == key"),
        (lambda p: p[..., :1, :1], "query == key >= 2"),
        (lambda p: p.masked_fill(p > 0.9, float("nan")), "NaN"),
        (lambda p: p.long(), "floating point"),
    ],
)
def test_pattern_scores_reject_bad_patterns(edit, message):
    with pytest.raises(InvalidPatternError, match=message):
        pattern_scores(edit(_random_patterns(1, 2, 2, 5)))


def _loss(logits, toks):
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), toks[:, 1:], reduction="none"
    )
    return ce.mean(1)


def test_ablation_matches_one_head_at_a_time(arch_model):
    """Batched ablations (replicated batch, start at the head's layer; chunks of 2 copies of a
    2-sequence batch and of 4 copies of a 1-sequence batch) equal full forward passes that
    ablate one head at a time, on prompts of two lengths (mean over both)."""
    _check_ablation(arch_model)


def test_ablation_on_bloom_where_start_at_layer_is_not_exact():
    """transformer-lens 4.3's Bloom bridge loses its ALiBi bias when a forward pass starts
    mid-model; classify_heads must detect that and still match full one-head ablations."""
    bloom = testing.tiny_model("bloom", d_model=32, n_layers=3, n_heads=4, seed=0)
    with torch.no_grad():  # larger weights, so attention (and ALiBi) matter for the loss
        for p in bloom.original_model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    _check_ablation(bloom)


def _check_ablation(arch_model):
    seqs = [TOKENS[0], TOKENS[1], TOKENS[0, :5]]
    report = classify_heads(arch_model, seqs, batch_size=4, progress=False)
    info = _tl.model_info(arch_model)
    zs = [
        _tl.capture(arch_model, s[None], [_tl.z_name(b) for b in range(info.n_layers)])
        for s in seqs
    ]
    clean = torch.stack([_loss(_tl.run_with_hooks(arch_model, s[None], []), s[None]) for s in seqs])
    checked = [(0, 1), (info.n_layers - 1, 0), (info.n_layers - 1, info.n_heads - 1)]
    for layer, head in checked:  # first chunk of layer 0, first and last chunk of the last layer
        name = _tl.z_name(layer)
        mean = torch.cat([z[name][0, 1:] for z in zs]).mean(0)  # [head, d_head]
        for mode, value in (("zero", torch.zeros_like(mean[head])), ("mean", mean[head])):

            def hook(z, hook, head=head, value=value):
                z = z.clone()
                z[:, 1:, head] = value
                return z

            ablated = torch.stack(
                [
                    _loss(_tl.run_with_hooks(arch_model, s[None], [(name, hook)]), s[None])
                    for s in seqs
                ]
            )
            want = (ablated - clean).mean().item()
            got = getattr(report, f"delta_loss_{mode}")[layer, head].item()
            assert got == pytest.approx(want, abs=2e-5), (layer, head, mode)
    assert report.clean_loss == pytest.approx(clean.mean().item(), abs=1e-5)
    assert report.n_sequences == 3 and report.n_tokens == 8 + 8 + 5


def test_write_ratio_matches_single_head_forward(arch_model):
    """‖head output‖ from a forward pass where every other head's z is zeroed (attn_out minus
    the all-heads-zeroed attn_out, which is the output bias), over ‖resid_pre‖."""
    info = _tl.model_info(arch_model)
    report = classify_heads(arch_model, TOKENS, ablation=False, progress=False)

    def capture_with(layer, heads):
        """attn_out and resid_pre of ``layer`` with every head but ``heads`` zeroed."""
        names = [_tl.attn_out_name(layer), _tl.resid_pre_name(layer)]
        keep = torch.zeros(info.n_heads, 1)
        keep[heads] = 1
        store = {}
        hooks = [(_tl.z_name(layer), lambda z, hook: z * keep.to(z.dtype))]
        hooks += [(n, lambda x, hook, n=n: store.__setitem__(n, x.clone())) for n in names]
        _tl.run_with_hooks(arch_model, TOKENS, hooks)
        return store[names[0]], store[names[1]]

    for layer in range(info.n_layers):
        bias, _ = capture_with(layer, [])
        for head in range(info.n_heads):
            out, resid = capture_with(layer, [head])
            ratio = ((out - bias).norm(dim=-1) / resid.norm(dim=-1))[:, 1:].mean()
            assert report.write_ratio[layer, head].item() == pytest.approx(ratio.item(), rel=1e-4)


def _hf_attention(model, layer):
    hf = model.original_model
    return (hf.model if hasattr(hf, "model") else hf).layers[layer]


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_ov_scores_match_full_matrix_from_hf_weights(arch):
    """Eigenvalues of the d_model × d_model OV circuit diag(g)·W_V·W_O built straight from the
    Hugging Face weights (K/V heads repeated by hand; Gemma's norm scales by 1 + weight)."""
    model = testing.tiny_model(arch, n_heads=4, n_kv_heads=2, seed=3)
    with torch.no_grad():  # give the norm a non-trivial scale to fold
        _hf_attention(model, 0).input_layernorm.weight.uniform_(0.5, 1.5)
    report = classify_heads(model, TOKENS, ablation=False, progress=False)
    assert report.norm_folded
    layer = _hf_attention(model, 0)
    g = layer.input_layernorm.weight.detach().double() + (1.0 if arch == "gemma" else 0.0)
    wv = layer.self_attn.v_proj.weight.detach().double()  # [kv * d_head, d_model]
    wo = layer.self_attn.o_proj.weight.detach().double()  # [d_model, heads * d_head]
    dh = model.cfg.d_head
    for head in range(4):
        kv = head // 2
        full = (g[:, None] * wv[kv * dh : (kv + 1) * dh].T) @ wo[:, head * dh : (head + 1) * dh].T
        lam = torch.linalg.eigvals(full)
        want = (lam.real.sum() / lam.abs().sum()).item()
        neg = ((lam.abs() * (lam.real < 0)).sum() / lam.abs().sum()).item()
        assert report.ov_copying[0, head].item() == pytest.approx(want, abs=1e-4)
        assert report.ov_neg_fraction[0, head].item() == pytest.approx(neg, abs=1e-4)
    unfolded = classify_heads(model, TOKENS, ablation=False, fold_norm=False, progress=False)
    assert not unfolded.norm_folded and not torch.equal(unfolded.ov_copying, report.ov_copying)


# --------------------------------------------------------------------------- API
def test_runs_on_every_architecture_and_leaves_the_model_alone(arch_model):
    snap = _snapshot(arch_model)
    report = classify_heads(arch_model, TOKENS, progress=True)
    assert_unchanged(arch_model, snap)
    info = _tl.model_info(arch_model)
    frame = report.to_dataframe()
    assert len(frame) == info.n_layers * info.n_heads
    assert set(frame["label"]) <= set(LABELS)
    assert frame[["diag_mass", "first_mass", "write_ratio", "delta_loss_zero"]].notna().all().all()
    assert report.counts().sum() == len(frame) and list(report.counts().index) == list(LABELS)
    assert "HeadReport" in report._repr_html_()
    assert type(report.plot()).__name__ == "Figure"
    assert type(report.plot("diag_mass")).__name__ == "Figure"
    assert isinstance(report.flagged, pd.DataFrame)


def test_relabel_and_sink_thresholds(planted):
    report = classify_heads(planted, _random_prompts(2), ablation=False, progress=False)
    assert isinstance(report, HeadReport)
    everything_sinks = report.relabel(sink_threshold=0.05)  # Gu 0.3 vs a looser cut
    assert everything_sinks.counts()["bos-sink"] > report.counts()["bos-sink"] == 1
    assert report.relabel(sink_threshold=0.8).labels[0][2] == "bos-sink"  # Barbero's 0.8
    strict = report.relabel(strict=True)
    assert strict.labels == report.labels  # planted heads pass Def 5.1 at every query
    with pytest.raises(InvalidArgumentError, match="unknown threshold"):
        report.relabel(epsilon=0.2)
    with pytest.raises(InvalidArgumentError, match="score='nope'"):
        report.plot("nope")


NOOP = "diag_mass=0.95 write_ratio=0.01 delta_loss_zero=0.001 delta_loss_mean=0"


@pytest.mark.parametrize(
    ("spec", "strict", "label"),
    [
        (NOOP, False, "diagonal-noop"),
        (NOOP + " delta_loss_zero=0.5", False, "diagonal"),  # ablating it matters: no no-op
        (NOOP + " delta_loss_zero=nan delta_loss_mean=nan", False, "diagonal-noop"),  # skipped
        (NOOP + " ov_copying=-0.9", False, "diagonal-noop"),  # no-op before eraser
        ("diag_mass=0.95 ov_copying=-0.9", False, "diagonal-eraser"),
        ("diag_mass=0.95 ov_copying=-0.4", False, "diagonal"),
        ("diag_mass=0.95 diag_min=0.5", True, "mixing"),  # Def 5.1 fails at one query
        ("diag_mass=0.95 diag_min=0.5 first_mass=0.4", True, "bos-sink"),
        ("diag_mass=0.95 first_mass=0.4", False, "diagonal"),  # diagonal before sink
        ("first_mass=0.4 prev_mass=0.95", False, "bos-sink"),  # sink before previous-token
        ("prev_mass=0.95", False, "previous-token"),
        ("prev_mass=0.95 prev_min=0.2", True, "mixing"),
        ("ov_copying=-1.0", False, "mixing"),  # erasing OV alone is no label
    ],
)
def test_label_rules_and_precedence(spec, strict, label):
    scores = dict(diag_mass=0.2, diag_min=0.1, prev_mass=0.2, prev_min=0.1, first_mass=0.1)
    scores |= dict(write_ratio=0.5, delta_loss_zero=0.1, delta_loss_mean=0.1, ov_copying=0.0)
    scores |= dict(item.split("=") for item in spec.split())
    grid = SimpleNamespace(**{k: torch.tensor([[float(v)]]) for k, v in scores.items()})
    # The absolute rules (Def 5.1 with ε = 0.1, Gu's sink cut 0.3), asked for explicitly.
    thresholds = HeadThresholds(strict=strict, eps=0.1, sink_threshold=0.3)
    assert label_heads(grid, thresholds) == ((label,),)


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        ("diag_mass=0.6", "diagonal"),  # (0.6 − 0.2)/(1 − 0.2) = 0.5: halfway above chance
        ("diag_mass=0.59", "mixing"),
        ("diag_mass=0.6 ov_copying=-0.9", "diagonal-eraser"),
        ("prev_mass=0.6", "previous-token"),
        ("first_mass=0.79", "mixing"),  # Barbero's ε = 0.8 is the default sink cut
        ("first_mass=0.81", "bos-sink"),
        ("first_mass=0.81 prev_mass=0.7", "bos-sink"),  # sink before previous-token
    ],
)
def test_default_labels_are_relative_to_chance(spec, label):
    scores = dict(diag_mass=0.2, diag_min=0.1, prev_mass=0.2, prev_min=0.1, first_mass=0.1)
    scores |= dict(write_ratio=0.5, delta_loss_zero=0.1, delta_loss_mean=0.1, ov_copying=0.0)
    scores |= dict(item.split("=") for item in spec.split())
    grid = {k: torch.tensor([[float(v)]]) for k, v in scores.items()}
    grid = SimpleNamespace(**grid, chance={"diag": 0.2, "prev": 0.2, "first": 0.2})
    assert label_heads(grid, HeadThresholds()) == ((label,),)


def test_chance_levels_match_uniform_attention():
    """The chance levels are the scores of exactly uniform causal attention (brute force)."""
    from oversquash_lens.heads import scores as hs

    for n in (3, 7, 24, 80):
        uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
        got = pattern_scores(uniform[None, None])
        chance = hs.chance_levels([n])
        assert got["diag_mass"].item() == pytest.approx(chance["diag"], abs=1e-6)
        assert got["prev_mass"].item() == pytest.approx(chance["prev"], abs=1e-6)
        assert got["first_mass"].item() == pytest.approx(chance["first"], abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(tokens=[[0]]), InvalidTokensError, "1 position"),
        (dict(tokens=[[0, 99]]), InvalidTokensError, "token id 99"),
        (dict(tokens=["the cat", ""]), InvalidTokensError, "tokens=''"),
        (dict(eps=1.5), InvalidArgumentError, "eps=1.5"),
        (dict(sink_threshold=0.0), InvalidArgumentError, "sink_threshold=0.0"),
        (dict(write_threshold=-1.0), InvalidArgumentError, "write_threshold=-1.0"),
        (dict(sink_window=1), InvalidArgumentError, "sink_window=1"),
        (dict(batch_size=0), InvalidArgumentError, "batch_size=0"),
    ],
)
def test_bad_input_names_the_value(llama, kwargs, error, message):
    kwargs = {"tokens": TOKENS, **kwargs}
    with pytest.raises(error, match=message):
        classify_heads(llama, kwargs.pop("tokens"), progress=False, **kwargs)


def test_texts_of_different_lengths_run_unpadded(llama):
    texts = ["the cat sat on the mat", "1 2 3", "what is the last digit"]
    report = classify_heads(llama, texts, progress=False)
    lengths = [llama.to_tokens(t).shape[1] for t in texts]
    assert report.n_sequences == 3 and report.n_tokens == sum(lengths)
    alone = [classify_heads(llama, t, ablation=False, progress=False) for t in texts]
    want = torch.stack([r.diag_mass for r in alone]).mean(0)
    torch.testing.assert_close(report.diag_mass, want)
    torch.testing.assert_close(report.diag_min, torch.stack([r.diag_min for r in alone]).amin(0))
