"""Property tests (hypothesis) for path counts, attention rollout and the collapse metrics.

Each property is checked on inputs hypothesis draws (sizes, targets, seeds of random
row-stochastic causal patterns), against closed forms or independent brute-force references.
"""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oversquash_lens import attention_rollout, oversquashing_bound, path_counts
from oversquash_lens.collapse.curve import _metrics

SETTINGS = settings(max_examples=60, deadline=None)
ROLLOUT_SETTINGS = settings(max_examples=40, deadline=None)  # model-free but ~0.1 s each


# --------------------------------------------------------------------------- path counts
@st.composite
def path_args(draw, max_n: int = 40, max_layers: int = 12):
    n = draw(st.integers(1, max_n))
    layers = draw(st.integers(0, max_layers))
    target = draw(st.integers(-n, n - 1))
    return n, layers, target


def _matrix_power_row(n: int, layers: int, t: int, *, residual: bool) -> list[int]:
    """Row ``t`` of ``M^L`` (or ``(M + I)^L``), ``M = tril(ones)``, in exact Python ints."""
    step = [[(1 if k <= q else 0) + (1 if residual and k == q else 0) for k in range(n)]
            for q in range(n)]  # fmt: skip
    row = [1 if k == t else 0 for k in range(n)]
    for _ in range(layers):
        row = [sum(row[q] * step[q][k] for q in range(n)) for k in range(n)]
    return row


@SETTINGS
@given(path_args(), st.booleans())
def test_paths_positive_up_to_target_and_zero_after(args, residual):
    n, layers, target = args
    t = target % n
    counts = path_counts(n, layers, target=target, residual_edges=residual)
    assert len(counts) == n and all(isinstance(c, int) for c in counts)
    assert all(c == 0 for c in counts[t + 1 :])
    if layers == 0:  # the identity: one path, from the target to itself
        assert counts[: t + 1] == [0] * t + [1]
    else:
        assert all(c > 0 for c in counts[: t + 1])


@SETTINGS
@given(path_args())
def test_plain_paths_non_increasing_toward_target_with_hockey_stick_total(args):
    n, layers, target = args
    t = target % n
    counts = path_counts(n, layers, target=target)
    if layers >= 1:  # (L = 0 is the one-hot identity, checked above)
        assert all(a >= b for a, b in zip(counts[:t], counts[1 : t + 1]))
        # Σ_d C(d + L − 1, L − 1) over d = 0..t is C(t + L, L) (hockey stick)
        assert sum(counts) == math.comb(t + layers, layers)


@SETTINGS
@given(path_args(), st.booleans())
def test_log_mode_consistent_with_exact(args, residual):
    n, layers, target = args
    exact = path_counts(n, layers, target=target, residual_edges=residual)
    logs = path_counts(n, layers, target=target, residual_edges=residual, log=True)
    assert logs.dtype == torch.float64 and logs.shape == (n,)
    for c, lg in zip(exact, logs.tolist()):
        if c == 0:
            assert lg == -math.inf
        else:
            assert math.isclose(lg, math.log(c), rel_tol=1e-10, abs_tol=1e-10)


@SETTINGS
@given(path_args())
def test_residual_variant_dominates_plain(args):
    n, layers, target = args
    plain = path_counts(n, layers, target=target)
    res = path_counts(n, layers, target=target, residual_edges=True)
    assert all(r >= p for r, p in zip(res, plain))
    assert res[target % n] == 2**layers


@settings(max_examples=40, deadline=None)
@given(path_args(max_n=10, max_layers=5), st.booleans())
def test_paths_equal_brute_force_matrix_power(args, residual):
    n, layers, target = args
    expected = _matrix_power_row(n, layers, target % n, residual=residual)
    assert path_counts(n, layers, target=target, residual_edges=residual) == expected


@SETTINGS
@given(path_args(), st.booleans())
def test_paths_depend_only_on_the_target_position(args, residual):
    n, layers, target = args
    t = target % n
    prefix = path_counts(t + 1, layers, residual_edges=residual)
    assert path_counts(n, layers, target=t, residual_edges=residual) == prefix + [0] * (n - t - 1)


# --------------------------------------------------------------------------- rollout
@st.composite
def causal_patterns(draw, max_layers: int = 4, max_heads: int = 3, max_n: int = 12):
    """Random row-stochastic causal ``[layer, head, query, key]`` float64 patterns, with exact
    zeros inside the causal part when ``sparse``."""
    layers = draw(st.integers(1, max_layers))
    heads = draw(st.integers(1, max_heads))
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    sparse = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(layers, heads, n, n, generator=g, dtype=torch.float64)
    if sparse:
        p = p * (torch.rand(p.shape, generator=g, dtype=torch.float64) < 0.4)
        p[..., torch.arange(n), torch.arange(n)] += 1e-3  # every row keeps some mass
    p = p.tril()
    return p / p.sum(-1, keepdim=True)


def _reference_rollout(p: torch.Tensor, t: int, residual: float) -> torch.Tensor:
    """Full ``n × n`` float64 products ``A_ℓ ⋯ A_1``, row ``t`` after each layer."""
    n = p.shape[-1]
    a = residual * torch.eye(n, dtype=torch.float64) + (1 - residual) * p.mean(1)
    a = a / a.sum(-1, keepdim=True)
    prod, rows = torch.eye(n, dtype=torch.float64), []
    for layer in range(p.shape[0]):
        prod = a[layer] @ prod
        rows.append(prod[t])
    return torch.stack(rows)


residuals = st.floats(0.0, 1.0, allow_nan=False)


@ROLLOUT_SETTINGS
@given(causal_patterns(), residuals, st.data())
def test_rollout_is_a_distribution_over_sources_up_to_target(p, residual, data):
    n = p.shape[-1]
    target = data.draw(st.integers(-n, n - 1))
    t = target % n
    out = attention_rollout(p, target=target, residual=residual)
    assert out.shape == (p.shape[0], n) and out.dtype == torch.float64
    assert bool((out >= 0).all())
    assert bool((out[:, t + 1 :] == 0).all())
    torch.testing.assert_close(out.sum(-1), torch.ones(p.shape[0], dtype=torch.float64))
    torch.testing.assert_close(out, _reference_rollout(p, t, residual), rtol=1e-10, atol=1e-12)


@ROLLOUT_SETTINGS
@given(causal_patterns(), residuals, st.data())
def test_rollout_per_head_rows_sum_to_one(p, residual, data):
    n = p.shape[-1]
    target = data.draw(st.integers(0, n - 1))
    out = attention_rollout(p, target=target, residual=residual, per_head=True)
    assert out.shape == (p.shape[0], p.shape[1], n)
    assert bool((out >= 0).all()) and bool((out[..., target + 1 :] == 0).all())
    ones = torch.ones(p.shape[0], p.shape[1], dtype=torch.float64)
    torch.testing.assert_close(out.sum(-1), ones)


@ROLLOUT_SETTINGS
@given(
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(1, 16),
    residuals,
    st.data(),
)
def test_identity_attention_rolls_out_to_one_hot(layers, heads, n, residual, data):
    target = data.draw(st.integers(-n, n - 1))
    eye = torch.eye(n, dtype=torch.float64).expand(layers, heads, n, n)
    out = attention_rollout(eye, target=target, residual=residual)
    expected = torch.zeros(layers, n, dtype=torch.float64)
    expected[:, target % n] = 1.0
    assert bool((out[expected == 0] == 0).all())  # exactly zero off the target
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)  # 1 up to the head mean


@ROLLOUT_SETTINGS
@given(causal_patterns(), st.data())
def test_bound_with_beta_one_is_rollout_scaled_by_two_to_the_depth(p, data):
    n = p.shape[-1]
    target = data.draw(st.integers(0, n - 1))
    bound = oversquashing_bound(p, target=target, beta=1.0)
    rollout = attention_rollout(p, target=target, residual=0.5)
    scale = 2.0 ** torch.arange(1, p.shape[0] + 1, dtype=torch.float64)[:, None]
    torch.testing.assert_close(bound, scale * rollout, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- collapse metrics
@st.composite
def state_stacks(draw, count: int = 2):
    """``count`` random ``[rows, d_model]`` float32 stacks sharing one shape (values of very
    different magnitudes, exact duplicates possible)."""
    rows = draw(st.integers(1, 4))
    d = draw(st.integers(1, 16))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    g = torch.Generator().manual_seed(seed)
    stacks = [scale * torch.randn(rows, d, generator=g) for _ in range(count)]
    if count > 1 and draw(st.booleans()):  # some rows identical in two stacks
        stacks[1][0] = stacks[0][0]
    return stacks


@SETTINGS
@given(state_stacks())
def test_metrics_are_symmetric(stacks):
    a, b = stacks
    ab, ba = _metrics(a, b), _metrics(b, a)
    assert ab.keys() == ba.keys()
    for key in ab:
        assert torch.equal(ab[key], ba[key]), key


@SETTINGS
@given(state_stacks(count=1))
def test_identical_states_have_zero_gap(stacks):
    (a,) = stacks
    m = _metrics(a, a.clone())
    for key in ("l1", "linf", "rel_l2", "rel_linf"):
        assert bool((m[key] == 0).all()), key
    assert bool(m["identical"].all())


@SETTINGS
@given(state_stacks(count=3))
def test_metrics_triangle_and_norm_sanity(stacks):
    a, b, c = stacks
    ab, bc, ac = _metrics(a, b), _metrics(b, c), _metrics(a, c)
    for key in ("l1", "linf"):  # true metrics: the triangle inequality holds
        assert bool((ac[key] <= (ab[key] + bc[key]) * (1 + 1e-12)).all()), key
    d = a.shape[-1]
    assert bool((ab["linf"] <= ab["l1"] * (1 + 1e-12)).all())
    assert bool((ab["l1"] <= d * ab["linf"] * (1 + 1e-12)).all())
    for key in ("rel_l2", "rel_linf"):  # ‖a − b‖ ≤ ‖a‖ + ‖b‖ ≤ 2 max(‖a‖, ‖b‖)
        assert bool(((ab[key] >= 0) & (ab[key] <= 2 + 1e-12)).all()), key
    assert torch.equal(ab["identical"], ab["l1"] == 0)
    diff = (a.double() - b.double()).abs()
    torch.testing.assert_close(ab["l1"], diff.sum(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(ab["linf"], diff.amax(-1), rtol=0, atol=0)


@SETTINGS
@given(state_stacks(), st.sampled_from([0.25, 2.0, 1024.0]))
def test_relative_metrics_are_scale_invariant(stacks, factor):
    a, b = stacks
    plain, scaled = _metrics(a, b), _metrics(a * factor, b * factor)  # powers of 2: exact
    for key in ("rel_l2", "rel_linf"):
        torch.testing.assert_close(scaled[key], plain[key], rtol=1e-12, atol=0)
    torch.testing.assert_close(scaled["l1"], plain["l1"] * factor, rtol=1e-12, atol=0)
