"""Synthetic reproductions of docs/science.md §2 against closed forms and brute-force references."""

import math
from fractions import Fraction

import pytest
import torch

from oversquash_lens import OversquashError, synthetic


def _round_bf16(x: Fraction) -> Fraction:
    """Exact round-to-nearest-even of a positive rational to 8 significant bits (bf16)."""
    e = math.floor(math.log2(x))
    if Fraction(2) ** e > x:
        e -= 1
    if Fraction(2) ** (e + 1) <= x:
        e += 1
    ulp = Fraction(2) ** (e - 7)
    q, r = divmod(x, ulp)
    if r > ulp / 2 or (r == ulp / 2 and q % 2 == 1):
        q += 1
    return q * ulp


def test_equal_logit_collision_first_190_and_bands():
    assert synthetic.bf16_collision_n() == 190
    ref = [_round_bf16(Fraction(1, n)) == _round_bf16(Fraction(1, n + 1)) for n in range(1, 1025)]
    assert ref.index(True) + 1 == 190
    got = synthetic._collides(1024, torch.bfloat16).tolist()
    assert got == ref  # torch's float64 -> bf16 cast is a single RNE step here
    frac = synthetic.softmax_collisions()["fraction"].tolist()
    exact = [sum(ref[lo - 1 : hi - 1]) / (hi - lo) for lo, hi in synthetic_bands()]
    assert frac == pytest.approx(exact)
    assert frac == pytest.approx([0.0, 0.17, 0.5, 0.75], abs=0.01)  # docs/science.md §2


def synthetic_bands():
    return [(1, 128), (128, 256), (256, 512), (512, 1024)]


def test_float16_collides_later():
    assert synthetic.bf16_collision_n(dtype="float16") > 1000
    with pytest.raises(OversquashError, match="max_n=10"):
        synthetic.bf16_collision_n(max_n=10)
    with pytest.raises(OversquashError, match=r"\(5, 5\)"):
        synthetic.softmax_collisions([(5, 5)])


def _tv_closed_form(n: int, k: int = 200, noise: float = 0.1) -> float:
    """First-order E Σ|p − p'|: a mass fraction f = k/n is tilted by δ ~ U[0, noise]."""
    f, mean = k / n, noise / 2
    shift = f * mean  # the mean log-tilt, which softmax removes
    e_abs = (shift**2 + (noise - shift) ** 2) / (2 * noise)  # E|δ − shift|
    return f * e_abs + (1 - f) * shift


def test_softmax_tv_matches_paper_and_closed_form():
    ns = [500, 1000, 2000]
    gaps = synthetic.softmax_tv_gap(ns)
    assert gaps.tolist() == pytest.approx([0.026, 0.017, 0.009], abs=0.0015)  # Fig 9
    assert gaps.tolist() == pytest.approx([_tv_closed_form(n) for n in ns], rel=0.06)
    half = synthetic.softmax_tv_gap(ns, half=True)
    torch.testing.assert_close(half, gaps / 2)
    grid = list(range(1500, 3501, 100))
    cross = synthetic.crossing(grid, synthetic.softmax_tv_gap(grid))
    assert 2200 <= cross <= 2800  # paper: ≈2500


def _brute_toy(q, k, v, positional, slope, pe_scale):
    """One query, explicit loops; RoPE as complex rotation, PE table from its definition."""
    n, d = k.shape
    half = d // 2

    def rope(x, pos):
        z = torch.complex(x[:half], x[half:])
        rot = torch.tensor(
            [complex(math.cos(pos * 10000 ** (-j / half)), math.sin(pos * 10000 ** (-j / half)))
             for j in range(half)],
            dtype=torch.complex128,
        )  # fmt: skip
        zz = z * rot
        return torch.cat([zz.real, zz.imag])

    def pe(pos):
        return torch.tensor(
            [math.sin(pos / 10000 ** (2 * (j // 2) / d)) if j % 2 == 0
             else math.cos(pos / 10000 ** (2 * (j // 2) / d)) for j in range(d)],
            dtype=torch.float64,
        )  # fmt: skip

    qq = q.clone()
    if positional == "rope":
        qq = rope(q, n - 1)
    if positional == "sinusoidal":
        qq = q + pe_scale * pe(n - 1)
    logits = []
    for j in range(n):
        kk = k[j]
        if positional == "rope":
            kk = rope(k[j], j)
        if positional == "sinusoidal":
            kk = k[j] + pe_scale * pe(j)
        s = float(qq @ kk) / math.sqrt(d)
        if positional == "alibi":
            s -= slope * (n - 1 - j)
        logits.append(s)
    w = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
    return (w[:, None] * v).sum(0)


@pytest.mark.parametrize("positional", synthetic.POSITIONAL)
def test_toy_layer_matches_brute_force(positional):
    d, n = 8, 6
    kw = dict(alibi_slope=0.3, pe_scale=0.7)
    gap = synthetic.toy_collapse_gap([n], positional=positional, d=d, n_seeds=3, seed=4, **kw)
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(3, n, d, generator=gen, dtype=torch.float64)
    k = torch.randn(3, n, d, generator=gen, dtype=torch.float64)
    v = torch.randn(3, n, d, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    ref = []
    for s in range(3):
        ke, ve = torch.cat([k[s], k[s, -1:]]), torch.cat([v[s], v[s, -1:]])
        y = _brute_toy(q[s, -1], k[s], v[s], positional, 0.3, 0.7)
        y_star = _brute_toy(q[s, -1], ke, ve, positional, 0.3, 0.7)
        ref.append((y - y_star).abs().sum())
    assert gap.item() == pytest.approx(torch.stack(ref).mean().item(), rel=1e-10)


def test_toy_nope_crosses_bf16_line_near_1000():
    grid = list(range(500, 2001, 100))
    gaps = synthetic.toy_collapse_gap(grid, positional="none")
    cross = synthetic.crossing(grid, gaps)
    assert 700 <= cross <= 1400  # Fig 10: ≈1000
    # ~1/n decay: least-squares slope of log gap vs log n
    x = torch.log(torch.tensor(grid, dtype=torch.float64))
    slope = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), gaps.log()[:, None])
    assert -1.4 <= slope.solution[0, 0].item() <= -0.8


def test_toy_positional_encodings_as_measured():
    """With q, k ~ N(0, I) the positional schemes keep the gap above 2^-7 up to n = 2048
    (RoPE ~ 1/sqrt(n), ALiBi slope 2^-8 plateaus); when positional modulation of the
    logits is weak they cross near n ≈ 1000 like the paper's Fig 10."""
    grid = [256, 512, 768, 1024, 1536, 2048]
    for positional in ("sinusoidal", "rope", "alibi"):
        gaps = synthetic.toy_collapse_gap([1024, 2048], positional=positional, n_seeds=8)
        assert (gaps > 2 * 2.0**-7).all(), positional
    weak = {
        "rope": dict(qk_std=0.25),
        "alibi": dict(alibi_slope=2.0**-12),
        "sinusoidal": dict(pe_scale=0.05),
    }
    for positional, kw in weak.items():
        gaps = synthetic.toy_collapse_gap(grid, positional=positional, n_seeds=16, **kw)
        assert synthetic.crossing(grid, gaps) in (768, 1024, 1536), positional


def test_toy_errors():
    with pytest.raises(OversquashError, match="'nope'"):
        synthetic.toy_collapse_gap([8], positional="nope")
    with pytest.raises(OversquashError, match="empty"):
        synthetic.toy_collapse_gap([])
    with pytest.raises(OversquashError, match="0"):
        synthetic.toy_collapse_gap([0])
    with pytest.raises(OversquashError, match="2 lengths but 1"):
        synthetic.crossing([1, 2], torch.tensor([0.1]))
    with pytest.raises(OversquashError, match="100"):
        synthetic.softmax_tv_gap([100])
