"""Information flow routes, attention flow and the full rollout, against brute-force
references: the parts sum to the residual, importances equal a direct recomputation from the
parts, the route graph equals a naive walk, attention flow equals networkx Edmonds–Karp, and
``attention_rollout(target="all")`` equals the explicit matrix products."""

import re
import tempfile
from collections import defaultdict

import networkx as nx
import pytest
import torch
from networkx.algorithms.flow import edmonds_karp

from oversquash_lens import (
    FlowRoutes,
    InvalidArgumentError,
    InvalidPatternError,
    InvalidTokensError,
    OversquashError,
    UnsupportedModelError,
    _tl,
    attention_flow,
    attention_rollout,
    information_flow,
    oversquash_profile,
    testing,
)
from oversquash_lens.flow import _route_capture as route_capture

from .conftest import assert_unchanged, state_snapshot, without_runtime_type_checks

TOKENS = torch.arange(4, 20)[None]  # 16 positions in the tiny vocabulary
WORST: dict[str, float] = {}


def _warm(model):
    with torch.no_grad():  # TL 4 bridges install their own capture hooks on the first forward
        model(TOKENS)


def _post_norm_model():
    """A tiny Gemma 2 bridge: RMS norms after attention and MLP (``ln1_post``/``ln2_post``),
    with non-trivial norm weights so the post-attention scale is exercised."""
    import transformers

    cfg = transformers.Gemma2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=1, pad_token_id=3,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.Gemma2ForCausalLM(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(0.0, 0.5)
    folder = tempfile.mkdtemp(prefix="oversquash_gemma2_")
    model.save_pretrained(folder)
    testing.tiny_tokenizer().save_pretrained(folder)
    return _tl.bridge_class().boot_transformers(folder)


@pytest.fixture(scope="module")
def gemma2():
    return _post_norm_model()


def _identity_check(model, name):
    routes = information_flow(model, TOKENS)
    n = TOKENS.shape[1]
    worst = 0.0
    for layer in range(routes.n_layers + 1):
        for p in range(n):
            labels, vectors = routes.parts(layer, p)
            assert len(labels) == vectors.shape[0]
            x = routes.resid[layer, p]
            worst = max(worst, float((vectors.sum(0) - x).norm() / x.norm()))
    WORST[name] = worst
    print(f"\n{name}: worst relative error of sum(parts) vs hook_resid_post = {worst:.2e}")
    assert worst <= 1e-4
    assert float(routes.identity_error.max()) <= 1e-4
    return routes


def test_parts_sum_to_the_residual(arch_model):
    """Σ parts == the captured residual for every layer and position, and each head's parts
    summed over sources equal that head's ``hook_z · W_O`` (an independent hook)."""
    routes = _identity_check(arch_model, arch_model.cfg.model_name or "model")
    n_heads = routes.n_heads
    for b in range(routes.n_layers):
        z = _tl.capture(arch_model, TOKENS, [_tl.z_name(b)])[_tl.z_name(b)][0]
        per_head = torch.einsum("phd,hdm->phm", z, _tl.w_o(arch_model, b))
        for p in (0, 7, 15):
            labels, vectors = routes.parts(b + 1, p)
            heads = vectors[1 : 1 + n_heads * (p + 1)].reshape(n_heads, p + 1, -1).sum(1)
            torch.testing.assert_close(heads, per_head[p], rtol=1e-5, atol=1e-6)
            assert labels[0] == "residual" and labels[-1] == f"L{b} mlp"
            assert labels[1] == f"L{b}H0 ← 0" and labels[1 + p] == f"L{b}H0 ← {p}"
    labels, vectors = routes.parts(0, 3)
    assert labels == ["embedding"] and torch.equal(vectors[0], routes.resid[0, 3])


def test_parts_sum_with_a_post_attention_norm(gemma2):
    """Gemma 2/3 normalise the attention output before adding it: the norm's per-position
    scale from the same forward pass keeps the parts linear and summing exactly."""
    assert _tl.has_post_attn_norm(gemma2, 0)
    routes = _identity_check(gemma2, "gemma2 (ln1_post)")
    assert routes.norm_weight is not None and float((routes.norm_weight - 1).abs().max()) > 0.1


def _brute_importance(vectors, x):
    vectors, x = vectors.double(), x.double()
    prox = (x.abs().sum() - (vectors - x).abs().sum(-1)).clamp_min(0)
    return prox / prox.sum()


@pytest.mark.parametrize("by_head", [True, False])
@pytest.mark.parametrize("chunk", [None, 37])
def test_importance_is_normalised_proximity(llama, chunk, by_head):
    """importance() equals max(‖x‖₁ − ‖z − x‖₁, 0)/Σ recomputed from parts() in float64, also
    with tiny chunks (many query and key chunks), and sums to 1 — per head and source, or per
    source with the heads summed."""
    routes = information_flow(llama, TOKENS, all_positions=True, chunk_elements=chunk)
    for layer in range(1, routes.n_layers + 1):
        for p in range(TOKENS.shape[1]):
            labels, vectors = routes.parts(layer, p, by_head=by_head)
            assert labels == routes.part_labels(layer, p, by_head=by_head)
            torch.testing.assert_close(vectors.sum(0), routes.resid[layer, p])
            got = routes.importance(layer, p, by_head=by_head)
            ref = _brute_importance(vectors, routes.resid[layer, p])
            torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
            assert abs(float(got.sum()) - 1) < 1e-5 and float(got.min()) >= 0
            if not by_head:
                assert labels[1] == f"L{layer - 1} attn ← 0"
                assert len(labels) == p + 3 + (routes.b_o is not None)
    assert torch.equal(routes.importance(0, 5), torch.ones(1))


def test_proximity_of_a_hand_made_sum():
    """x = a + b + c with c = −a/2: the part far from x gets proximity 0."""
    a, b = torch.tensor([4.0, 0.0]), torch.tensor([0.0, 2.0])
    c = -a / 2
    x = a + b + c  # [2, 2]: ‖x‖₁ = 4
    got = _brute_importance(torch.stack([a, b, c]), x)
    # prox(a) = 4 - ‖[2, -2]‖₁ = 0; prox(b) = 4 - 2 = 2; prox(c) = 4 - ‖[-4, -2]‖₁ = 0 -> 0
    torch.testing.assert_close(got, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


_LABEL = re.compile(r"L(\d+)(?:H(\d+)| attn) ← (\d+)")


def _brute_walk(routes, tau, by_head=True):
    """Naive route graph: from the target, every part above tau read off the labels."""
    weight = {routes.target: 1.0}
    edges = {}
    for layer in range(routes.n_layers, 0, -1):
        nxt = defaultdict(float)
        for p, w in weight.items():
            labels, vectors = routes.parts(layer, p, by_head=by_head)
            imp = _brute_importance(vectors, routes.resid[layer, p])
            for label, a, vec in zip(labels, imp.tolist(), vectors):
                if a <= tau or label.endswith("attn bias"):
                    continue
                match = _LABEL.fullmatch(label)
                if match:
                    head, src = (int(match[2]) if by_head else "attn"), int(match[3])
                else:
                    head, src = ("residual" if label == "residual" else "mlp"), p
                edges[(layer - 1, head, src, p)] = (a, float(vec.norm()))
                nxt[src] += w * a
        weight = dict(nxt)
    totals = torch.zeros(TOKENS.shape[1], dtype=torch.float64)
    for p, w in weight.items():
        totals[p] = w
    return edges, totals


@pytest.mark.parametrize(("tau", "by_head"), [(0.0, True), (0.01, True), (0.04, True),
                                              (0.0, False), (0.04, False)])  # fmt: skip
@pytest.mark.parametrize("all_positions", [False, True])
def test_route_graph_equals_brute_force(arch_model, tau, all_positions, by_head):
    routes = information_flow(arch_model, TOKENS, all_positions=all_positions)
    edges, totals = _brute_walk(routes, tau, by_head)
    frame = routes.edges(tau, by_head=by_head)
    got = {
        (r.block, r.head, r.source, r.target): (r.importance, r.norm)
        for r in frame.itertuples(index=False)
    }
    assert set(got) == set(edges)
    for key, (imp, norm) in edges.items():
        assert abs(got[key][0] - imp) < 1e-5
        assert abs(got[key][1] - norm) <= 1e-5 * max(1.0, norm)
    assert (frame["layer"] == frame["block"] + 1).all()
    torch.testing.assert_close(
        routes.source_totals(tau, by_head=by_head), totals, rtol=1e-4, atol=1e-6
    )
    graph = routes.graph(tau, by_head=by_head)
    assert isinstance(graph, nx.DiGraph)
    pairs = {((b, s), (b + 1, t)) for b, _, s, t in edges}
    assert set(graph.edges) == pairs
    for (u, v), data in graph.edges.items():
        want = sum(a for (b, _, s, t), (a, _) in edges.items() if (b, s) == u and (b + 1, t) == v)
        assert abs(data["importance"] - want) < 1e-5
    sources = [n for n in graph.nodes if n[0] == 0]
    for node in sources:
        assert abs(graph.nodes[node]["flow"] - float(totals[node[1]])) < 1e-5
    if tau == 0.0:  # every path kept: the totals are everything but the biases' share
        assert float(totals.sum()) <= 1 + 1e-6 and float(totals.sum()) > 0.5


def test_lazy_and_precomputed_nodes_agree(gpt2):
    lazy = information_flow(gpt2, TOKENS, target=11)
    full = information_flow(gpt2, TOKENS, target=11, all_positions=True)
    assert lazy.target == 11
    assert lazy.edges(0.0).equals(full.edges(0.0))
    assert float(lazy.source_totals(0.0)[12:].abs().sum()) == 0.0  # after the target: nothing
    for layer in (1, gpt2.cfg.n_layers):
        torch.testing.assert_close(lazy.importance(layer, 4), full.importance(layer, 4))


def test_source_totals_and_a_lower_start_layer(gpt2):
    routes = information_flow(gpt2, TOKENS)
    one = routes.source_totals(0.0, layer=1)  # one block: a single node's importances
    imp = routes.importance(1, -1)
    labels = routes.part_labels(1, -1)
    want = torch.zeros(TOKENS.shape[1], dtype=torch.float64)
    for label, a in zip(labels, imp.double().tolist()):
        match = _LABEL.fullmatch(label)
        if match:
            want[int(match[3])] += a
        elif label in ("residual", "L0 mlp"):
            want[-1] += a
    torch.testing.assert_close(one, want, rtol=1e-5, atol=1e-7)
    zero = routes.source_totals(0.5, layer=0)
    assert float(zero[-1]) == 1.0 and float(zero.sum()) == 1.0
    assert routes.source_totals(1.0).sum() == 0.0  # nothing is above τ = 1


def test_display_and_plot(llama):
    routes = information_flow(llama, TOKENS)
    assert isinstance(routes, FlowRoutes)
    html = routes._repr_html_()
    assert "FlowRoutes" in html and "<table" in html
    fig = routes.plot(0.01)
    assert type(fig).__name__ == "Figure" and len(fig.data) > 3
    assert "cdn.plot.ly" not in fig.to_html(include_plotlyjs=False)
    frame = routes.to_dataframe()
    assert list(frame.columns) == [
        "block", "layer", "head", "source", "target", "importance", "norm", "flow",
    ]  # fmt: skip


# --------------------------------------------------------------------------- profile
def test_profile_routes_column(gpt2):
    base = oversquash_profile(gpt2, TOKENS, method="exact")
    prof = oversquash_profile(gpt2, TOKENS, method="exact", route_tau=0.01)
    frame, plain = prof.to_dataframe(), base.to_dataframe()
    assert list(frame.columns) == [*plain.columns, "routes"]
    for col in plain.columns:  # existing columns bitwise unchanged
        assert plain[col].equals(frame[col]), col
    want = information_flow(gpt2, TOKENS).source_totals(0.01)
    assert frame["routes"].tolist() == want.tolist()
    corr = prof.correlations()
    assert (
        "routes" in corr.columns
        and corr.loc["rollout", "bound"] == (base.correlations().loc["rollout", "bound"])
    )
    assert prof.to_dataframe(layer=1)["routes"].tolist() == (
        prof.routes.source_totals(0.01, layer=1).tolist()
    )
    with pytest.raises(InvalidArgumentError, match="tau=1.5"):
        oversquash_profile(gpt2, TOKENS, route_tau=1.5)


# --------------------------------------------------------------------------- attention flow
def _patterns(layers=3, heads=2, n=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(layers, heads, n, n, generator=g, dtype=torch.float64).tril()
    return (p / p.sum(-1, keepdim=True)).to(dtype)


def _reference_flow(p, target, residual=0.5):
    """Abnar & Zuidema's construction: networkx Edmonds–Karp on the layered graph whose
    capacities are the rollout matrices (built here independently)."""
    p = p.double()
    layers, n = p.shape[0], p.shape[-1]
    a = residual * torch.eye(n, dtype=torch.float64) + (1 - residual) * p.mean(1)
    a = a / a.sum(-1, keepdim=True)
    graph = nx.DiGraph()
    for layer in range(layers):
        for q in range(n):
            for k in range(n):
                if a[layer, q, k] > 0:
                    graph.add_edge((layer, k), (layer + 1, q), capacity=float(a[layer, q, k]))
    t = target % n
    out = torch.zeros(n, dtype=torch.float64)
    for j in range(t + 1):
        out[j] = nx.maximum_flow_value(graph, (0, j), (layers, t), flow_func=edmonds_karp)
    return out


@pytest.mark.parametrize(("layers", "n", "target", "residual"), [
    (3, 8, -1, 0.5), (2, 6, 3, 0.3), (4, 5, -1, 0.0), (1, 7, -1, 1.0), (3, 12, 9, 0.5),
])  # fmt: skip
def test_attention_flow_equals_edmonds_karp(layers, n, target, residual):
    p = _patterns(layers, 3, n, seed=n + layers)
    got = attention_flow(p, target=target, residual=residual)
    ref = _reference_flow(p, target, residual)
    assert got.shape == (n,) and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert float(got.max()) <= 1 + 1e-9
    torch.testing.assert_close(attention_flow(p.float(), target=target, residual=residual), ref)


def test_attention_flow_accepts_a_cache_and_head_means(llama):
    _, cache = llama.run_with_cache(TOKENS, names_filter=lambda n: n.endswith("hook_pattern"))
    pats = _tl.patterns_from_cache(cache)
    got = attention_flow(cache, target=9)
    torch.testing.assert_close(got, attention_flow(pats, target=9))
    torch.testing.assert_close(got, attention_flow(pats.mean(1), target=9))
    torch.testing.assert_close(got, _reference_flow(pats, 9), rtol=0, atol=1e-6)


def test_attention_flow_refuses_bad_and_large_inputs():
    p = _patterns()
    with pytest.raises(InvalidArgumentError, match="max_size=20"):
        attention_flow(p, max_size=20)  # 8 positions x 3 layers = 24
    assert attention_flow(p, max_size=24).shape == (8,)
    with pytest.raises(InvalidArgumentError, match="target=8"):
        attention_flow(p, target=8)
    with pytest.raises(InvalidArgumentError, match="residual=1.5"):
        attention_flow(p, residual=1.5)
    with pytest.raises(InvalidPatternError, match="neither a tensor"):
        attention_flow([[0.5, 0.5]])
    bad = p.clone()
    bad[0, 0, 2, 5] = 0.3
    with pytest.raises(InvalidPatternError):
        attention_flow(bad)


# --------------------------------------------------------------------------- full rollout
@pytest.mark.parametrize("residual", [0.0, 0.5, 0.9])
def test_rollout_all_equals_matrix_products(residual):
    p = _patterns(4, 3, 9, seed=5)
    full = attention_rollout(p, target="all", residual=residual)
    n = 9
    a = residual * torch.eye(n, dtype=torch.float64) + (1 - residual) * p.mean(1)
    a = a / a.sum(-1, keepdim=True)
    prod = torch.eye(n, dtype=torch.float64)
    for layer in range(4):
        prod = a[layer] @ prod
        torch.testing.assert_close(full[layer], prod, rtol=0, atol=1e-12)
    assert full.shape == (4, 9, 9)
    for t in range(n):  # every row equals the single-row path
        torch.testing.assert_close(full[:, t], attention_rollout(p, target=t, residual=residual))
    heads = attention_rollout(p, target="all", per_head=True)
    assert heads.shape == (4, 3, 9, 9)
    torch.testing.assert_close(heads[:, :, -1], attention_rollout(p, per_head=True))
    f32 = attention_rollout(p.float(), target="all")
    assert f32.dtype == torch.float32
    with pytest.raises(InvalidArgumentError, match="target='last'"):
        attention_rollout(p, target="last")


# --------------------------------------------------------------------------- bad input, state
def test_bad_inputs_name_the_value(gpt2):
    with pytest.raises(InvalidArgumentError, match="target=16"):
        information_flow(gpt2, TOKENS, target=16)
    with pytest.raises(InvalidArgumentError, match="target=-17"):
        information_flow(gpt2, TOKENS, target=-17)
    with pytest.raises(InvalidArgumentError, match="chunk_elements=0"):
        information_flow(gpt2, TOKENS, chunk_elements=0)
    with pytest.raises(InvalidTokensError):
        information_flow(gpt2, torch.rand(5))
    with pytest.raises(UnsupportedModelError):
        information_flow(torch.zeros(3), TOKENS)
    routes = information_flow(gpt2, TOKENS)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidArgumentError, match="tau="):
            routes.edges(bad)
        with pytest.raises(InvalidArgumentError, match="tau="):
            routes.source_totals(bad)
    with pytest.raises(InvalidArgumentError, match="tau=2"):
        routes.graph(2.0)
    with pytest.raises(InvalidArgumentError, match="layer=9"):
        routes.parts(9, 0)
    with pytest.raises(InvalidArgumentError, match="position=16"):
        routes.parts(1, 16)
    with pytest.raises(InvalidArgumentError, match="layer=-4"):
        routes.importance(-4, 0)


#: Calls whose Python types contradict the annotations: under the suite's jaxtyping+beartype
#: instrumentation the type checker refuses them first; without it (what users run) our own
#: validation must name the value (checked in a subprocess).
_MISTYPED = """
import torch
from oversquash_lens import OversquashError, information_flow, testing
model = testing.tiny_model("gpt2")
toks = torch.arange(4, 20)[None]
routes = information_flow(model, toks)
calls = {
    "all_positions='yes'": lambda: information_flow(model, toks, all_positions="yes"),
    "tau='0.1'": lambda: routes.edges("0.1"),
    "tau=True": lambda: routes.source_totals(True),
    "layer='a'": lambda: routes.parts("a", 0),
    "target=1.5": lambda: information_flow(model, toks, target=1.5),
}
for needle, call in calls.items():
    try:
        call()
    except OversquashError as exc:
        assert needle.split("=")[1].strip("'") in str(exc), (needle, str(exc))
    else:
        raise AssertionError(needle + " accepted")
print("ok")
"""


def test_mistyped_options_are_refused(gpt2):
    import subprocess
    import sys

    from jaxtyping import TypeCheckError

    routes = information_flow(gpt2, TOKENS)
    for call in (
        lambda: information_flow(gpt2, TOKENS, all_positions="yes"),
        lambda: routes.edges("0.1"),
        lambda: routes.parts("a", 0),
    ):
        with pytest.raises((OversquashError, TypeCheckError)):
            call()
    done = subprocess.run(
        [sys.executable, "-c", _MISTYPED], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_model_without_attention_is_refused(tmp_path):
    import transformers

    tok = testing.tiny_tokenizer()
    cfg = transformers.MambaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, state_size=4, bos_token_id=0
    )
    transformers.MambaForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    try:
        mamba = _tl.bridge_class().boot_transformers(str(tmp_path))
    except Exception as exc:  # noqa: BLE001 - the installed transformer-lens cannot boot Mamba
        pytest.skip(f"this transformer-lens cannot boot a Mamba bridge: {exc}")
    with pytest.raises(UnsupportedModelError, match=r"no attention hook 'blocks\.0\.attn"):
        information_flow(mamba, torch.tensor([[0, 5, 6, 7]]))


def test_model_unchanged_and_hooks_removed(arch_model, monkeypatch):
    _warm(arch_model)
    snap = state_snapshot(arch_model)
    arch_model.train()  # a train-mode model must come back in train mode
    modes = [m.training for m in arch_model.modules()]
    information_flow(arch_model, TOKENS, all_positions=True)
    assert [m.training for m in arch_model.modules()] == modes
    arch_model.eval()
    assert_unchanged(arch_model, snap)

    def boom(name, x):
        raise RuntimeError("inside a hook")

    monkeypatch.setattr(route_capture, "_keep", boom)
    with pytest.raises(RuntimeError, match="inside a hook"):
        information_flow(arch_model, TOKENS)
    assert_unchanged(arch_model, snap)


def test_a_block_that_is_not_a_sum_is_refused(gpt2, monkeypatch):
    """If the captured parts do not add up (here: MLP outputs doubled after capture), the
    identity check refuses instead of returning wrong routes."""
    real = route_capture._keep

    def doubled(name, x):
        out = real(name, x)
        return out * 2 if name.endswith("hook_mlp_out") else out

    monkeypatch.setattr(route_capture, "_keep", doubled)
    with pytest.raises(UnsupportedModelError, match="not residual \\+ attention \\+ MLP"):
        information_flow(gpt2, TOKENS)


# ------------------------------------------------------------------ packed causal patterns
def test_causal_patterns_read_like_the_dense_tensor():
    """The packed triangles answer every read exactly as the dense causal tensor does."""
    from oversquash_lens.flow._causal import CausalPatterns, pack_causal

    g = torch.Generator().manual_seed(3)
    layers, heads, n = 3, 4, 11
    dense = torch.rand(layers, heads, n, n, generator=g).tril()
    store = CausalPatterns([pack_causal(dense[b]) for b in range(layers)], n)
    assert store.shape == dense.shape and store.dtype == dense.dtype
    assert store.nbytes == layers * heads * n * (n + 1) // 2 * 4
    assert store.dense_nbytes == dense.numel() * 4
    assert torch.equal(store.dense(), dense)
    for b in range(layers):
        assert torch.equal(store.layer(b), dense[b])
        for q in range(n):
            for k in range(n):
                assert store.entry(b, 1, q, k) == float(dense[b, 1, q, k])
    queries = [0, 3, 4, 10]  # rows that end before, inside and after the key range
    for k0, k1 in [(0, n), (2, 6), (5, 11), (10, 11)]:
        got = store.rows(1, torch.tensor(queries), k0, k1)
        assert torch.equal(got, dense[1][:, queries, k0:k1])
    assert "MiB packed" in repr(store)


def test_flow_routes_keep_patterns_packed_and_equal_to_the_cache(llama):
    """``FlowRoutes.patterns`` (dense, built on access) and ``layer_patterns`` equal the
    patterns of ``run_with_cache``; the result holds only the packed triangles until asked."""
    routes = information_flow(llama, TOKENS)
    assert "dense" not in routes._memo
    n = TOKENS.shape[1]
    assert routes.causal_patterns.nbytes == routes.n_layers * routes.n_heads * n * (n + 1) * 2
    _, cache = llama.run_with_cache(TOKENS)
    ref = _tl.patterns_from_cache(cache).float()
    torch.testing.assert_close(routes.layer_patterns(-1), ref[-1], rtol=0, atol=0)
    torch.testing.assert_close(routes.patterns, ref, rtol=0, atol=0)
    assert torch.equal(routes.layer_patterns(0), routes.patterns[0])
    with pytest.raises(InvalidArgumentError, match="layer"):
        routes.layer_patterns(routes.n_layers)


def test_dense_patterns_larger_than_memory_are_refused(llama, monkeypatch):
    """Materialising more than the machine has gives a clear error naming the size and the
    per-layer alternative, instead of a kernel killed by the OOM killer."""
    from oversquash_lens.flow import _causal

    routes = information_flow(llama, TOKENS)
    monkeypatch.setattr(_causal, "available_bytes", lambda: 1000)
    with pytest.raises(InvalidArgumentError, match=r"1,000 bytes available.*layer_patterns"):
        _ = routes.patterns
    assert routes.layer_patterns(1).shape[0] == routes.n_heads  # one layer still reads


def test_causal_pattern_reads_resolve_and_refuse_indices_like_the_dense_tensor(llama):
    """Negative indices read the same weights as the dense tensor; out-of-range, float and
    boolean indices are refused naming the value (never a weight of a neighbouring row)."""
    routes = information_flow(llama, TOKENS)
    cp, dense = routes.causal_patterns, routes.patterns
    n = TOKENS.shape[1]
    assert cp.entry(0, 0, 3, -1) == float(dense[0, 0, 3, -1]) == 0.0  # above the diagonal
    assert cp.entry(-1, -1, -2, -2) == float(dense[-1, -1, -2, -2])
    assert torch.equal(cp.rows(0, [-1, 2, 2], 0, 3), dense[0][:, [-1, 2, 2], 0:3])
    assert torch.equal(cp.rows(-1, torch.tensor([5, 0])), dense[-1][:, [5, 0]])
    assert cp.rows(0, [], 0, 3).shape == (routes.n_heads, 0, 3)
    assert cp.nbytes * 2 == cp.dense_nbytes * (n + 1) // n
    for call, match in [
        (lambda: cp.entry(0, 0, n, 0), "query=16"),
        (lambda: cp.entry(0, routes.n_heads, 0, 0), "head=4"),
        (lambda: cp.rows(0, [0], -2, 2), "k0=-2"),
        (lambda: cp.rows(0, [0], 3, 2), "k1=2"),
        (lambda: cp.rows(0, torch.tensor([True, False])), "dtype torch.bool"),
        (lambda: cp.rows(routes.n_layers, [0]), "layer="),
    ]:
        with pytest.raises(InvalidArgumentError, match=re.escape(match)):
            call()
    with without_runtime_type_checks(), pytest.raises(InvalidArgumentError, match="query=1.5"):
        cp.entry(0, 0, 1.5, 0)  # type: ignore[arg-type]
    with without_runtime_type_checks(), pytest.raises(InvalidArgumentError, match="queries="):
        cp.rows(0, [[0, 1]])


def test_layer_patterns_is_a_copy_and_replace_shares_no_memo(llama):
    """Writing to ``layer_patterns`` never changes ``patterns`` (before or after the dense
    tensor exists); a ``dataclasses.replace`` copy computes its own results."""
    import dataclasses

    routes = information_flow(llama, TOKENS)
    before = routes.patterns.clone()
    routes.layer_patterns(0).zero_()
    assert torch.equal(routes.patterns, before)
    routes.drop_dense_patterns()
    routes.layer_patterns(0).zero_()
    assert torch.equal(routes.patterns, before)
    other = information_flow(llama, torch.arange(20, 36)[None])
    mixed = dataclasses.replace(routes, causal_patterns=other.causal_patterns)
    assert torch.equal(mixed.patterns, other.patterns)
    assert not torch.equal(mixed.patterns, routes.patterns)


def test_attention_after_the_query_is_refused(llama):
    """A hook that gives weight to later keys (non-causal attention) is refused by name, not
    packed away silently."""

    def leak(pattern, hook):
        return torch.full_like(pattern, 1.0 / pattern.shape[-1])  # uniform over all keys

    llama.add_hook(_tl.pattern_name(1), leak)
    try:
        with pytest.raises(UnsupportedModelError, match=r"blocks\.1\..*keys after their query"):
            information_flow(llama, TOKENS)
    finally:
        llama.reset_hooks()
