"""Learned attention sinks (issue 17): a tiny random GPT-OSS TransformerBridge, whose
``hook_pattern`` rows sum to less than 1 (a per-head sink logit joins the softmax and its column
is dropped), read consistently by every entry point: pattern scores, the head classifier and its
report, rollout, rollout factors and the Theorem 5.1 bound (docs/science.md, "Learned attention
sinks"). References: the sink's softmax probability by hand from q, k and the sink logit; an
explicit (n + 1)-node rollout with the sink as an absorbing node; brute-force loops."""

import contextlib
import io
import math
import tempfile

import pytest
import torch

from oversquash_lens import InvalidArgumentError, InvalidPatternError, _tl
from oversquash_lens.flow import attention_rollout, oversquashing_bound
from oversquash_lens.flow.rollout import attention_rollout_from_model, rollout_matrices
from oversquash_lens.heads import classify_heads, pattern_scores
from oversquash_lens.models.tiny import tiny_tokenizer

from .conftest import without_runtime_type_checks

SINK_LOGIT = 3.0
N = 24
TOKENS = torch.tensor([[0] + [4 + (7 * i) % 16 for i in range(N - 1)]])


def _gpt_oss_bridge(sink_logit=SINK_LOGIT, seed=0):
    """A 2-layer GPT-OSS bridge (hidden 64, 4 query / 2 KV heads, 4 experts, random weights,
    every sink logit ``sink_logit``), booted offline like ``models.tiny.tiny_model``: HF files
    with the tiny tokenizer in a temporary folder, ``TransformerBridge.boot_transformers``."""
    import transformers as tf

    cfg = tf.GptOssConfig(
        vocab_size=64,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=128,
        sliding_window=128,  # layer 0 is a sliding-window layer; wider than the prompts
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = tf.GptOssForCausalLM(cfg)
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.sinks.fill_(sink_logit)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
        hf.save_pretrained(tmp)
        tiny_tokenizer().save_pretrained(tmp)
        model = _tl.bridge_class().boot_transformers(tmp)
    model.eval()
    return model


@pytest.fixture(scope="module")
def oss():
    return _gpt_oss_bridge()


@pytest.fixture(scope="module")
def run(oss):
    """``(cache, patterns [layer, head, q, k] float64)`` of TOKENS."""
    with torch.no_grad():
        _, cache = oss.run_with_cache(TOKENS)
    pats = torch.stack([cache[f"blocks.{b}.attn.hook_pattern"][0] for b in range(2)]).double()
    return cache, pats


def _hand_sink_probability(oss, cache, block):
    """softmax([q·k/√d (causal), sink logit])[sink] per head and query, from hook_rot_q /
    hook_rot_k and the attention module's ``sinks`` parameter, in float64."""
    q = cache[f"blocks.{block}.attn.hook_rot_q"][0].double()  # [pos, head, d]
    k = cache[f"blocks.{block}.attn.hook_rot_k"][0].double()  # [pos, kv_head, d]
    sinks = oss.blocks[block].attn.original_component.sinks.detach().double()
    n_heads, n_kv, d = q.shape[1], k.shape[1], q.shape[2]
    out = torch.zeros(n_heads, N, dtype=torch.float64)
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)  # repeat_kv: consecutive query heads share a KV head
        for i in range(N):
            logits = [float(q[i, h] @ k[j, kv]) / math.sqrt(d) for j in range(i + 1)]
            logits.append(float(sinks[h]))
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            out[h, i] = weights[-1] / sum(weights)
    return out


# --------------------------------------------------------------------------- the model
def test_gpt_oss_rows_sum_below_one_by_the_sink_probability(oss, run):
    cache, pats = run
    sums = pats.sum(-1)
    assert 0.0 < float(sums.min()) and float(sums.max()) < 0.6  # sink logit +3: a big sink
    for block in range(2):
        hand = _hand_sink_probability(oss, cache, block)
        torch.testing.assert_close(1.0 - sums[block], hand, atol=2e-6, rtol=0)


# --------------------------------------------------------------------------- head scores
def _brute(p, window):
    """learned_sink_mass, first_mass and the sink-inclusive entropy of one [q, k] pattern."""
    qs = range(1, min(N, window))
    sink = [1.0 - float(p[t].sum()) for t in range(N)]
    ent = []
    for i in range(1, N):
        terms = [x for x in p[i, : i + 1].tolist() if x > 0] + [sink[i]]
        ent.append(-sum(x * math.log(x) for x in terms))
    return (
        sum(sink[t] for t in qs) / len(qs),
        sum(float(p[t, 0]) for t in qs) / len(qs),
        sum(ent) / len(ent),
    )


@pytest.mark.parametrize("window", [64, 5])
def test_pattern_scores_report_the_learned_sink_apart(oss, run, window):
    cache, pats = run
    scores = pattern_scores(cache, sink_window=window)  # auto: the cache's model has sinks
    assert set(scores) >= {"learned_sink_mass", "first_mass", "entropy"}
    for layer in range(2):
        for head in range(4):
            sink, first, ent = _brute(pats[layer, head], window)
            got = {k: float(v[layer, head]) for k, v in scores.items()}
            assert got["learned_sink_mass"] == pytest.approx(sink, abs=1e-5)
            assert got["first_mass"] == pytest.approx(first, abs=1e-5)
            assert got["entropy"] == pytest.approx(ent, abs=1e-4)
    explicit = pattern_scores(pats, sink_window=window, learned_sinks="keep")
    for name, value in scores.items():
        torch.testing.assert_close(value, explicit[name], atol=1e-5, rtol=0)


def test_renormalize_scores_the_rows_without_the_sink(run):
    cache, pats = run
    renorm = pattern_scores(cache, learned_sinks="renormalize")
    hat = pats / pats.sum(-1, keepdim=True)
    plain = pattern_scores(hat)  # row-stochastic: no keyword needed
    for name in ("diag_mass", "prev_mass", "first_mass", "entropy", "diag_min", "prev_min"):
        torch.testing.assert_close(renorm[name], plain[name], atol=1e-5, rtol=0)
    kept = pattern_scores(cache)
    torch.testing.assert_close(renorm["learned_sink_mass"], kept["learned_sink_mass"])
    assert float(plain["learned_sink_mass"].abs().max()) == 0.0
    assert bool((renorm["first_mass"] > kept["first_mass"]).all())


def test_a_tensor_without_the_keyword_gets_an_accurate_error(run):
    _, pats = run
    for call in (pattern_scores, attention_rollout, oversquashing_bound, rollout_matrices):
        with pytest.raises(InvalidPatternError) as info:
            call(pats)
        text = str(info.value)
        assert "< 1: this looks like attention with a learned sink" in text, call
        assert "learned_sinks='keep'" in text and "learned_sinks='renormalize'" in text
        assert "pass post-softmax attention" not in text
    with pytest.raises(InvalidArgumentError, match="learned_sinks='yes'"):
        pattern_scores(pats, learned_sinks="yes")
    with without_runtime_type_checks(), pytest.raises(InvalidArgumentError, match="=True"):
        attention_rollout(pats, learned_sinks=True)


def test_classify_heads_and_its_report_agree_with_pattern_scores(oss, run):
    cache, _ = run
    report = classify_heads(oss, TOKENS, ablation=False, progress=False)
    assert report.learned_sinks == "keep"
    scores = pattern_scores(cache)
    for name, value in scores.items():
        torch.testing.assert_close(getattr(report, name), value, atol=1e-5, rtol=0)
    frame = report.to_dataframe()
    assert "learned_sink_mass" in frame and "is_learned_sink" in frame
    assert float(frame["learned_sink_mass"].min()) > 0.5  # most attention goes to the sink
    assert float(frame["first_mass"].max()) < 0.1  # ... and none of it is counted as first
    assert not frame["is_sink_gu"].any()
    rates = report.sink_rates().set_index(["layers", "definition"])["rate"]
    assert rates["all", "learned gu (0.3)"] == 1.0 and rates["all", "gu (0.3)"] == 0.0
    assert "learned attention sinks" in report._repr_html_()
    relabelled = report.relabel(sink_threshold=0.5)
    assert relabelled.to_dataframe()["is_learned_sink"].all()
    torch.testing.assert_close(relabelled.learned_sink_mass, report.learned_sink_mass)

    renorm = classify_heads(
        oss, TOKENS, ablation=False, progress=False, learned_sinks="renormalize"
    )
    assert renorm.learned_sinks == "renormalize"
    for name, value in pattern_scores(cache, learned_sinks="renormalize").items():
        torch.testing.assert_close(getattr(renorm, name), value, atol=1e-5, rtol=0)


def test_a_model_without_sinks_is_unchanged(llama):
    report = classify_heads(llama, TOKENS[:, :10], ablation=False, progress=False)
    assert report.learned_sinks == "none"
    assert float(report.learned_sink_mass.abs().max()) == 0.0
    assert set(report.sink_rates()["definition"]) == {"gu (0.3)", "barbero (0.8)"}
    _, cache = llama.run_with_cache(TOKENS[:, :10])
    assert float(pattern_scores(cache)["learned_sink_mass"].abs().max()) == 0.0


# --------------------------------------------------------------------------- rollout, bound
def _absorbing_rollout(pats, target, residual):
    """Rows of Ã_L ⋯ Ã_1 over n + 1 nodes (the last one the sink): Ã_ij = r·δ_ij + (1−r)·ᾱ_ij
    for tokens, Ã_i,sink = (1−r)·(1 − Σ_j ᾱ_ij), Ã_sink,sink = 1 (ᾱ the head mean)."""
    n = pats.shape[-1]
    out, prod = [], torch.eye(n + 1, dtype=torch.float64)
    for layer in pats:
        a = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        mean = layer.mean(0)
        a[:n, :n] = residual * torch.eye(n, dtype=torch.float64) + (1 - residual) * mean
        a[:n, n] = (1 - residual) * (1 - mean.sum(-1))
        a[n, n] = 1.0
        prod = a @ prod
        out.append(prod[target])
    return torch.stack(out)


@pytest.mark.parametrize("residual", [0.5, 0.0])
def test_rollout_treats_the_sink_as_an_absorbing_node(oss, run, residual):
    cache, pats = run
    ref = _absorbing_rollout(pats, N - 1, residual)
    got = attention_rollout(cache, residual=residual)  # auto: keep
    torch.testing.assert_close(got.double(), ref[:, :N], atol=1e-5, rtol=0)
    absorbed = 1 - got.double().sum(-1)
    torch.testing.assert_close(absorbed, ref[:, N], atol=1e-5, rtol=0)
    assert float(absorbed[-1]) > float(absorbed[0]) > 0.1  # sinks absorb more with depth
    explicit = attention_rollout(pats, residual=residual, learned_sinks="keep")
    torch.testing.assert_close(explicit, ref[:, :N], atol=1e-10, rtol=0)
    from_model = attention_rollout_from_model(oss, TOKENS, residual=residual)
    torch.testing.assert_close(from_model.double(), ref[:, :N], atol=1e-5, rtol=0)
    full = attention_rollout(pats, target="all", residual=residual, learned_sinks="keep")
    for t in (3, N - 1):
        torch.testing.assert_close(full[:, t], _absorbing_rollout(pats, t, residual)[:, :N])
    per_head = attention_rollout(pats, per_head=True, learned_sinks="keep", residual=residual)
    for h in range(4):
        ref_h = _absorbing_rollout(pats[:, h : h + 1], N - 1, residual)[:, :N]
        torch.testing.assert_close(per_head[:, h], ref_h, atol=1e-10, rtol=0)
    mats = rollout_matrices(pats, residual=residual, learned_sinks="keep")
    want = 1 - (1 - residual) * (1 - pats.mean(1).sum(-1))
    torch.testing.assert_close(mats.sum(-1), want, atol=1e-10, rtol=0)


def test_renormalized_rollout_and_bound(run):
    _, pats = run
    hat = pats / pats.sum(-1, keepdim=True)
    renorm = attention_rollout(pats, learned_sinks="renormalize")
    torch.testing.assert_close(renorm, attention_rollout(hat), atol=1e-10, rtol=0)
    torch.testing.assert_close(renorm.sum(-1), torch.ones(2, dtype=torch.float64))
    per_head = attention_rollout(pats, per_head=True, learned_sinks="renormalize")
    torch.testing.assert_close(per_head, attention_rollout(hat, per_head=True), atol=1e-10, rtol=0)
    bound_hat = oversquashing_bound(pats, learned_sinks="renormalize")
    torch.testing.assert_close(bound_hat, oversquashing_bound(hat), atol=1e-10, rtol=0)
    kept = oversquashing_bound(pats, learned_sinks="keep")
    # keep: ᾱ = α + I with the raw (sub-stochastic) α, brute-force over layers
    rows, prod = [], torch.eye(N, dtype=torch.float64)
    for layer in range(2):
        prod = (pats[layer].mean(0) + torch.eye(N, dtype=torch.float64)) @ prod
        rows.append(prod[-1])
    torch.testing.assert_close(kept, torch.stack(rows), atol=1e-10, rtol=0)
    assert bool((kept <= bound_hat + 1e-12).all())  # renormalising can only raise the bound


# --------------------------------------------------------------------------- bad rows
def _causal_softmax(layers=2, heads=2, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, heads, n, n, generator=g, dtype=torch.float64)
    return logits.masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)), -torch.inf).softmax(
        -1
    )


@pytest.mark.parametrize("mode", ["auto", "keep", "renormalize"])
def test_rows_above_one_and_negatives_stay_errors(run, mode):
    cache, pats = run
    over = _causal_softmax()
    over[1, 0, 4] *= 1.3
    for call in (pattern_scores, attention_rollout, oversquashing_bound, rollout_matrices):
        with pytest.raises(InvalidPatternError, match=r"query 4 sums to 1\.\d+ > 1") as info:
            call(over, learned_sinks=mode)
        assert "learned sink" not in str(info.value).split("(")[0]
    negative = pats.clone()
    negative[0, 1, 5, 2] -= 0.2
    negative[0, 1, 5, 3] += 0.1
    for call in (pattern_scores, attention_rollout):
        with pytest.raises(InvalidPatternError, match="negative weight"):
            call(negative, learned_sinks="keep" if mode == "auto" else mode)
    sub = pats.clone()
    sub[1, 2, 7] *= 1.2 / float(sub[1, 2, 7].sum())  # one head's row above 1; the mean is not
    assert float(sub[1, :, 7].mean(0).sum()) < 1
    if mode != "auto":
        for call in (pattern_scores, attention_rollout, oversquashing_bound, rollout_matrices):
            with pytest.raises(InvalidPatternError, match=r"head 2, query 7 sums to 1\.2 > 1"):
                call(sub, learned_sinks=mode)


def test_hand_built_sub_stochastic_patterns():
    """Without a model: a known learned-sink share per row, via a plain dict cache (no model,
    so the keyword is needed) and a tensor."""
    p = _causal_softmax()
    keep = torch.linspace(0.2, 0.9, 6, dtype=torch.float64)  # row i keeps keep[i], sink 1 − keep
    sub = p * keep[:, None]
    scores = pattern_scores(sub, learned_sinks="keep", sink_window=4)
    assert float(scores["learned_sink_mass"][0, 0]) == pytest.approx(float(1 - keep[1:4].mean()))
    cache = {f"blocks.{b}.attn.hook_pattern": sub[b][None] for b in range(2)}
    with pytest.raises(InvalidPatternError, match="learned sink"):
        attention_rollout(cache)
    torch.testing.assert_close(
        attention_rollout(cache, learned_sinks="renormalize"), attention_rollout(p)
    )
    empty = sub.clone()
    empty[0, 0, 3] = 0.0  # every bit of the row on the sink
    with pytest.raises(InvalidPatternError, match="cannot renormalise"):
        pattern_scores(empty, learned_sinks="renormalize")
    with pytest.raises(InvalidPatternError, match="cannot renormalise"):
        attention_rollout(empty, learned_sinks="renormalize")
    assert float(pattern_scores(empty, learned_sinks="keep")["learned_sink_mass"].max()) <= 1.0


def test_model_entry_points_read_the_sink_too(oss, run):
    """attention_rollout_from_model (streamed head means), attention_flow on the model's
    cache and oversquash_profile all take the model's learned sinks into account."""
    from oversquash_lens import attention_flow, attention_rollout_from_model, oversquash_profile

    cache, pats = run
    streamed = attention_rollout_from_model(oss, TOKENS)
    reference = attention_rollout(pats, learned_sinks="keep").float()
    torch.testing.assert_close(streamed, reference, rtol=1e-5, atol=1e-6)
    assert float(streamed.sum(-1).max()) < 0.99  # mass went to the sinks, none spread back
    flow = attention_flow(cache, target=5)  # the cache knows its model: "auto" reads it
    torch.testing.assert_close(flow, attention_flow(pats, target=5, learned_sinks="keep"))
    profile = oversquash_profile(oss, TOKENS, method="estimate", n_probes=2)
    torch.testing.assert_close(profile.rollout.double(), reference.double(), rtol=1e-5, atol=1e-6)
