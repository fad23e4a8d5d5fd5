"""path_counts against brute-force path enumeration, integer matrix powers and closed forms."""

import itertools
import math

import pytest
import torch

from oversquash_lens import OversquashError, path_counts


def _matrix_powers(n: int, max_layers: int, residual: bool) -> list[torch.Tensor]:
    """[M^0, M^1, ...] with M = tril(ones) (+ I), exact int64 (small enough here)."""
    step = torch.tril(torch.ones(n, n, dtype=torch.int64))
    if residual:
        step = step + torch.eye(n, dtype=torch.int64)
    out = [torch.eye(n, dtype=torch.int64)]
    for _ in range(max_layers):
        out.append(step @ out[-1])
    return out


def _enumerate(n: int, layers: int, source: int, target: int, residual: bool) -> int:
    """Walk every chain source = k_0 <= k_1 <= ... <= k_L = target; a stay has 2 edges when
    the residual is a separate edge."""
    if layers == 0:
        return int(source == target)
    total = 0
    for middle in itertools.product(range(n), repeat=layers - 1):
        chain = (source, *middle, target)
        if all(a <= b for a, b in zip(chain, chain[1:])):
            stays = sum(a == b for a, b in zip(chain, chain[1:]))
            total += 2**stays if residual else 1
    return total


def _closed_form(d: int, layers: int, residual: bool) -> int:
    if d < 0:
        return 0
    if not residual:
        return int(d == 0) if layers == 0 else math.comb(d + layers - 1, layers - 1)
    if d == 0:
        return 2**layers
    return sum(
        math.comb(layers, k) * 2 ** (layers - k) * math.comb(d - 1, k - 1)
        for k in range(1, min(layers, d) + 1)
    )


def test_paper_numbers():
    # PAPER §3 (1-based first token i = 1, target = last)
    assert path_counts(5, 3)[0] == 15
    assert path_counts(12, 5)[0] == 1365
    assert path_counts(5, 5)[0] == 70
    assert path_counts(5, 3) == [15, 10, 6, 3, 1]
    for n, layers in [(5, 3), (12, 5), (40, 6)]:
        counts = path_counts(n, layers)
        assert counts[-1] == 1
        assert counts[0] == math.comb(n + layers - 2, layers - 1)
        assert path_counts(n, layers, residual_edges=True)[-1] == 2**layers


@pytest.mark.parametrize("residual", [False, True])
def test_equals_matrix_powers_everywhere(residual):
    """Every n <= 40, L <= 6 and every target (also as a negative index)."""
    for n in range(1, 41):
        powers = _matrix_powers(n, 6, residual)
        for layers, power in enumerate(powers):
            for t in range(n):
                expected = power[t].tolist()
                got = path_counts(n, layers, target=t, residual_edges=residual)
                assert got == expected, (n, layers, t)
                assert all(type(v) is int for v in got)
            assert path_counts(n, layers, target=-1, residual_edges=residual) == power[-1].tolist()
            assert path_counts(n, layers, target=-n, residual_edges=residual) == power[0].tolist()


@pytest.mark.parametrize("residual", [False, True])
def test_equals_brute_force_enumeration(residual):
    for n in range(1, 7):
        for layers in range(0, 5):
            for t in range(n):
                expected = [_enumerate(n, layers, i, t, residual) for i in range(n)]
                assert path_counts(n, layers, target=t, residual_edges=residual) == expected


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("n, layers, target", [(300, 1, -1), (300, 7, 150), (257, 50, -1)])
def test_equals_closed_form(residual, n, layers, target):
    t = target % n
    got = path_counts(n, layers, target=target, residual_edges=residual)
    assert got == [_closed_form(t - i, layers, residual) for i in range(n)]


def _check_log(n: int, layers: int, target: int, residual: bool) -> None:
    exact = path_counts(n, layers, target=target, residual_edges=residual)
    logs = path_counts(n, layers, target=target, residual_edges=residual, log=True)
    assert logs.dtype == torch.float64 and logs.shape == (n,)
    expected = torch.tensor([math.log(c) if c else -math.inf for c in exact], dtype=torch.float64)
    assert torch.equal(torch.isinf(logs), torch.isinf(expected))
    finite = torch.isfinite(expected)
    err = (logs[finite] - expected[finite]).abs() / expected[finite].abs().clamp(min=1.0)
    assert float(err.max()) <= 1e-9, (n, layers, target, residual, float(err.max()))


@pytest.mark.parametrize("residual", [False, True])
def test_log_mode_matches_exact(residual):
    for n, layers, target in [(1, 0, 0), (6, 0, 2), (40, 6, 17), (500, 3, -1), (2000, 64, 1500)]:
        _check_log(n, layers, target, residual)


@pytest.mark.parametrize("residual", [False, True])
def test_big_case_exact_and_log(residual):
    n, layers = 100_000, 200
    counts = path_counts(n, layers, residual_edges=residual)
    assert len(counts) == n
    for i in (0, 1, 7, 50_000, n - 3, n - 2, n - 1):
        assert counts[i] == _closed_form(n - 1 - i, layers, residual)
    assert counts[0].bit_length() > 2000  # far beyond int64 / float64
    _check_log(n, layers, -1, residual)


def test_log_huge_values_stay_finite():
    logs = path_counts(10**6, 2000, log=True)
    assert bool(torch.isfinite(logs).all())
    # log C(n + L - 2, L - 1) for the first token
    expected = math.lgamma(10**6 + 1999) - math.lgamma(2000) - math.lgamma(10**6)
    assert math.isclose(float(logs[0]), expected, rel_tol=1e-12)
    res = path_counts(3000, 1000, residual_edges=True, log=True)
    assert bool(torch.isfinite(res).all()) and float(res[-1]) == pytest.approx(1000 * math.log(2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_tokens": 0, "n_layers": 2}, "n_tokens=0"),
        ({"n_tokens": True, "n_layers": 2}, "n_tokens=True"),
        ({"n_tokens": 5, "n_layers": -1}, "n_layers=-1"),
        ({"n_tokens": 5, "n_layers": 2, "target": 5}, "target=5"),
        ({"n_tokens": 5, "n_layers": 2, "target": -6}, "target=-6"),
        ({"n_tokens": 5, "n_layers": False}, "n_layers=False"),
    ],
)
def test_bad_arguments(kwargs, match):
    # (wrongly *typed* arguments are already refused by the runtime type checker in tests)
    n = kwargs.pop("n_tokens")
    layers = kwargs.pop("n_layers")
    with pytest.raises(OversquashError, match=match):
        path_counts(n, layers, **kwargs)
