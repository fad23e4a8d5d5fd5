"""Sliding windows, scalable softmax and 8-bit formats (docs/science.md, "Windowed attention
and scalable softmax"), each against an independent reference: Hugging Face's own sliding-window
attention and an explicit additive −inf mask, SSMax as a query rescaling inside Hugging Face's
attention, brute-force path enumeration, and fp8 rounding built from the format definition."""

import contextlib
import functools
import io
import itertools
import math
import warnings
from fractions import Fraction

import pytest
import torch

from oversquash_lens import (
    OversquashError,
    _tl,
    attention_rollout_from_model,
    collapse_curve,
    path_counts,
    scalable_softmax,
    sliding_window,
    task_accuracy,
    testing,
    token_sensitivity,
)
from oversquash_lens import glasses as G
from oversquash_lens.collapse import resolution
from oversquash_lens.collapse import synthetic as syn
from oversquash_lens.glasses import window as window_module

from .conftest import assert_unchanged, state_snapshot

READ_ONLY_PATTERNS = _tl.tl_major_version() < 4
FP8 = ("float8_e4m3fn", "float8_e5m2")


def _warm(model):
    """One forward pass: TL 4 bridges register their own hooks lazily on the first one."""
    _tl.run_with_hooks(model, torch.tensor([[1, 2, 3]]), [])


def _masked_softmax(scores, window, q_len=None):
    """Reference: softmax of the scores with everything outside i − w < j ≤ i set to −inf."""
    k_len = scores.shape[-1]
    q_len = q_len or scores.shape[-2]
    i = torch.arange(k_len - q_len, k_len)[:, None]
    j = torch.arange(k_len)[None]
    allowed = (j <= i) & (j > i - window)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)


# --------------------------------------------------------------------------- pattern maths
def test_window_pattern_is_masked_softmax():
    gen = torch.Generator().manual_seed(0)
    n = 11
    scores = 3 * torch.randn(2, 3, n, n, generator=gen, dtype=torch.float64)
    causal = _masked_softmax(scores, n)
    for w in (1, 2, 3, 5, n, n + 4):
        got = G.window_pattern(causal, w)
        torch.testing.assert_close(got, _masked_softmax(scores, w), rtol=1e-12, atol=1e-14)
    assert torch.equal(
        G.window_pattern(causal, 1), torch.eye(n, dtype=torch.float64).expand_as(causal)
    )
    # cached generation: 3 queries (the last 3 positions) over 11 keys
    tail = causal[..., -3:, :]
    torch.testing.assert_close(
        G.window_pattern(tail, 4),
        _masked_softmax(scores[..., -3:, :], 4, q_len=3),
        rtol=1e-12,
        atol=1e-14,
    )
    f32 = G.window_pattern(causal.float(), 3)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.sum(-1), torch.ones(2, 3, n))


def test_window_pattern_keeps_a_learned_sink():
    gen = torch.Generator().manual_seed(1)
    n, w = 9, 3
    scores = torch.randn(4, n, n, generator=gen, dtype=torch.float64)
    sink = torch.full((4, n, 1), 1.5, dtype=torch.float64)
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
    full = torch.softmax(torch.cat([scores.masked_fill(~mask, -math.inf), sink], -1), -1)[..., :-1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    allowed = (j <= i) & (j > i - w)
    ref = torch.softmax(torch.cat([scores.masked_fill(~allowed, -math.inf), sink], -1), -1)[
        ..., :-1
    ]
    torch.testing.assert_close(G.window_pattern(full, w, sink=True), ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        G.ssmax_pattern(full, 0.5, sink=True), _ssmax_ref(scores, 0.5, sink=1.5)
    )


def test_window_pattern_underflow_is_reported():
    pattern = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.warns(RuntimeWarning, match="1 attention row"):
        got = G.window_pattern(pattern, 2)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0.5, 0.5]]))


def _ssmax_ref(scores, s, window=None, sink=None):
    """softmax((s · ln m_i) · z) over the allowed keys, m_i = keys query i may see."""
    n = scores.shape[-1]
    w = window or n
    m = torch.arange(1, n + 1, dtype=torch.float64).clamp(max=w)
    beta = (s * m.log())[:, None]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    z = (beta * scores).masked_fill(~((j <= i) & (j > i - w)), -math.inf)
    if sink is None:
        return torch.softmax(z, -1)
    col = beta.expand(*scores.shape[:-1], 1) * sink
    return torch.softmax(torch.cat([z, col], -1), -1)[..., :-1]


def test_ssmax_pattern_is_scaled_softmax():
    gen = torch.Generator().manual_seed(2)
    n = 13
    scores = 2 * torch.randn(3, n, n, generator=gen, dtype=torch.float64)
    causal = _masked_softmax(scores, n)
    for s in (0.1, 0.43, 1.0, 3.0):
        got = G.ssmax_pattern(causal, s)
        torch.testing.assert_close(got, _ssmax_ref(scores, s), rtol=1e-10, atol=1e-12)
        assert torch.equal(got[..., 0, :], causal[..., 0, :])  # m = 1: the single key keeps 1
        assert (got[..., ~torch.tril(torch.ones(n, n, dtype=torch.bool))] == 0).all()
    # s = 1/ln m0 leaves the query that sees m0 keys unchanged
    s = G.ssmax_s(7)
    torch.testing.assert_close(G.ssmax_pattern(causal, s)[..., 6, :], causal[..., 6, :])
    # window and SSMax commute once m = min(i + 1, w)
    w = 4
    a = G.ssmax_pattern(G.window_pattern(causal, w), 0.7, window=w)
    b = G.window_pattern(G.ssmax_pattern(causal, 0.7, window=w), w)
    ref = _ssmax_ref(scores, 0.7, window=w)
    torch.testing.assert_close(a, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b, ref, rtol=1e-10, atol=1e-12)
    # gradients stay finite through masked zeros
    p = causal.clone().requires_grad_(True)
    G.ssmax_pattern(p, 0.5).square().sum().backward()
    assert torch.isfinite(p.grad).all()


# --------------------------------------------------------------------------- on models
@pytest.fixture(scope="module")
def llama_pair():
    """A tiny 3-layer HF Llama and the bridge booted from the same folder."""
    import transformers as tf

    folder = testing.save_tiny_model("llama", n_layers=3, seed=3)
    with contextlib.redirect_stderr(io.StringIO()):
        bridge = _tl.bridge_class().boot_transformers(str(folder))
        hf = tf.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    return bridge.eval(), hf.eval()


def _mistral_like(hf, window):
    """Hugging Face's own sliding-window attention: Mistral = Llama + ``sliding_window``."""
    import transformers as tf

    keys = tf.MistralConfig().to_dict()
    cfg = tf.MistralConfig(**{k: v for k, v in hf.config.to_dict().items() if k in keys})
    cfg.sliding_window = window
    cfg._attn_implementation = "eager"
    with contextlib.redirect_stderr(io.StringIO()):
        model = tf.MistralForCausalLM(cfg).eval()
    model.load_state_dict(hf.state_dict(), strict=True)
    return model


def test_sliding_window_matches_hugging_face_and_masked_scores(llama_pair):
    bridge, hf = llama_pair
    toks = torch.randint(4, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    n = toks.shape[1]
    _warm(bridge)
    snap = state_snapshot(bridge)
    with torch.no_grad():
        plain = bridge(toks)
        assert float((plain - hf(toks).logits).abs().max()) < 1e-5
        worst = 0.0
        for w in (1, 2, 3, 7, n):
            hf_window = _mistral_like(hf, w)(toks).logits
            i, j = torch.arange(n)[:, None], torch.arange(n)[None]
            additive = torch.zeros(n, n).masked_fill(~((j <= i) & (j > i - w)), -math.inf)
            masked = hf(toks, attention_mask=additive.expand(2, 1, n, n)).logits
            with sliding_window(bridge, w) as m:
                assert m is bridge
                got = bridge(toks)
            diff = max(float((got - hf_window).abs().max()), float((got - masked).abs().max()))
            worst = max(worst, diff)
            assert diff < 1e-5, (w, diff)
            if w < n:
                assert float((got - plain).abs().max()) > 1e-3  # the window does something
    print(f"sliding_window vs HF sliding window / additive -inf mask: max |diff| = {worst:.2e}")
    assert_unchanged(bridge, snap)


def test_scalable_softmax_matches_query_rescaling_in_hugging_face(llama_pair):
    """SSMax is 'multiply the query at position i by s·ln m_i': do that in HF's q_proj."""
    bridge, hf = llama_pair
    toks = torch.randint(4, 64, (1, 20), generator=torch.Generator().manual_seed(1))
    n = toks.shape[1]

    def reference(s, window=None):
        m = torch.arange(1, n + 1, dtype=torch.float32).clamp(max=window or n)
        beta = s * m.log()

        def scale(module, args, out):
            return out * beta[None, :, None]

        handles = [layer.self_attn.q_proj.register_forward_hook(scale) for layer in hf.model.layers]
        try:
            if window is None:
                return hf(toks).logits
            i, j = torch.arange(n)[:, None], torch.arange(n)[None]
            additive = torch.zeros(n, n).masked_fill(~((j <= i) & (j > i - window)), -math.inf)
            return hf(toks, attention_mask=additive.expand(1, 1, n, n)).logits
        finally:
            for h in handles:
                h.remove()

    with torch.no_grad():
        for s in (0.2, 0.43, 1.0):
            with scalable_softmax(bridge, s=s):
                got = bridge(toks)
            diff = float((got - reference(s)).abs().max())
            assert diff < 1e-4, (s, diff)
        # nested with a window, in both orders: m = min(i + 1, w)
        ref = reference(0.5, window=5)
        with scalable_softmax(bridge, s=0.5), sliding_window(bridge, 5):
            a = bridge(toks)
        with sliding_window(bridge, 5), scalable_softmax(bridge, s=0.5):
            b = bridge(toks)
        assert float((a - ref).abs().max()) < 1e-4
        assert float((b - ref).abs().max()) < 1e-4
    assert not window_module._OPEN.get(bridge)


def test_glasses_on_every_architecture(arch_model, request):
    if READ_ONLY_PATTERNS and request.node.callspec.params["arch_model"] == "native":
        pytest.skip("read-only hook_pattern (TL 3.9 boot_native): refused, see test_glasses")
    toks = torch.randint(
        4, arch_model.cfg.d_vocab, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    names = [_tl.pattern_name(b) for b in range(arch_model.cfg.n_layers)]
    before = _tl.capture(arch_model, toks, names)
    logits = _tl.run_with_hooks(arch_model, toks, [])
    snap = state_snapshot(arch_model)
    with sliding_window(arch_model, 3):
        inside = _tl.capture(arch_model, toks, names)
        windowed = _tl.run_with_hooks(arch_model, toks, [])
    assert_unchanged(arch_model, snap)
    torch.testing.assert_close(inside[names[0]], G.window_pattern(before[names[0]], 3))
    assert (inside[names[-1]][..., 5, :3] == 0).all()  # query 5 sees keys 3, 4, 5 only
    assert not torch.allclose(windowed, logits, atol=1e-4)
    with sliding_window(arch_model, 12):  # the whole sequence: unchanged
        torch.testing.assert_close(
            _tl.run_with_hooks(arch_model, toks, []), logits, rtol=1e-4, atol=1e-5
        )
    with sliding_window(arch_model, 3, layers=[-1]):
        last_only = _tl.capture(arch_model, toks, names)
    torch.testing.assert_close(last_only[names[0]], before[names[0]])
    with scalable_softmax(arch_model, s=0.8):
        sharpened = _tl.capture(arch_model, toks, names)
    torch.testing.assert_close(sharpened[names[0]], G.ssmax_pattern(before[names[0]], 0.8))
    for ctx in (sliding_window(arch_model, 2), scalable_softmax(arch_model, s=1.0, layers=0)):
        with pytest.raises(RuntimeError, match="boom"), ctx:
            raise RuntimeError("boom")
    assert_unchanged(arch_model, snap)
    assert not window_module._OPEN.get(arch_model)
    torch.testing.assert_close(_tl.run_with_hooks(arch_model, toks, []), logits)


def test_nested_windows_take_the_narrowest(llama):
    toks = torch.randint(4, 64, (1, 10), generator=torch.Generator().manual_seed(4))
    with sliding_window(llama, 3):
        ref = _tl.run_with_hooks(llama, toks, [])
    with sliding_window(llama, 5), sliding_window(llama, 3):
        assert window_module.active_window(llama, 0) == 3
        torch.testing.assert_close(_tl.run_with_hooks(llama, toks, []), ref)
    assert window_module.active_window(llama, 0) is None


def test_window_hides_tokens_out_of_reach_under_rope(llama):
    """PAPER §7: with relative positions and every layer windowed, tokens further back than
    L·(w − 1) cannot change the last token's state."""
    L, w = llama.cfg.n_layers, 3
    gen = torch.Generator().manual_seed(5)
    body = torch.randint(4, 64, (1, 9), generator=gen)
    longer = torch.cat([torch.tensor([[7, 8]]), body], dim=1)
    name = _tl.resid_name(L)
    with sliding_window(llama, w):
        a = _tl.capture(llama, body, [name])[name][0, -1]
        b = _tl.capture(llama, longer, [name])[name][0, -1]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    a0 = _tl.capture(llama, body, [name])[name][0, -1]
    b0 = _tl.capture(llama, longer, [name])[name][0, -1]
    assert not torch.allclose(a0, b0, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"window": 0}, "window=0"),
        ({"window": -2}, "window=-2"),
        ({"window": True}, "window=True"),
        ({"window": 2.5}, "window=2.5"),
        ({"window": 4.0}, "window=4.0"),
        ({"window": "3"}, "window='3'"),
        ({"window": float("nan")}, "window=nan"),
        ({"window": 3, "layers": [7]}, "layers contains 7"),
        ({"window": 3, "layers": [-9]}, "layers contains -9"),
        ({"window": 3, "layers": [True]}, "layers contains True"),
        ({"window": 3, "layers": "0"}, "layers='0'"),
        ({"window": 3, "layers": [0.5]}, "layers contains 0.5"),
    ],
)
def test_sliding_window_bad_inputs(llama, kwargs, needle):
    _warm(llama)
    snap = state_snapshot(llama)
    with pytest.raises(OversquashError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        with sliding_window(llama, **kwargs):
            pass
    assert_unchanged(llama, snap)


@pytest.mark.parametrize("s", [0, -1.0, float("nan"), float("inf"), True, "0.5", None])
def test_scalable_softmax_bad_s(llama, s):
    with pytest.raises(OversquashError, match=r"s="):
        with scalable_softmax(llama, s=s):
            pass
    with pytest.raises(OversquashError, match="layers contains 2"):
        with scalable_softmax(llama, s=0.5, layers=[0, 2]):
            pass
    with pytest.raises(OversquashError, match="m0=1"):
        G.ssmax_s(1)


# --------------------------------------------------------------------------- intervention=
def test_glasses_as_intervention_everywhere(llama):
    win = functools.partial(sliding_window, window=3)
    ssm = functools.partial(scalable_softmax, s=0.6)
    _warm(llama)
    snap = state_snapshot(llama)
    plain = collapse_curve(llama, [4, 16], precisions=("float32",), progress=False)
    windowed = collapse_curve(
        llama, [4, 16], precisions=("float32",), intervention=win, progress=False
    )
    ssmax = collapse_curve(
        llama, [4, 16], precisions=("float32",), intervention=ssm, progress=False
    )
    gaps = [c.frame.query("layer == 2")["l1"].to_numpy() for c in (plain, windowed, ssmax)]
    assert not (gaps[0] == gaps[1]).all() and not (gaps[0] == gaps[2]).all()
    rep = task_accuracy(
        llama, "copy-last", [3, 5], remedies=("none",), intervention=win, progress=False
    )
    assert len(rep.records) == 2
    toks = torch.randint(4, 64, (12,), generator=torch.Generator().manual_seed(6))
    L, w = llama.cfg.n_layers, 3
    sens = token_sensitivity(llama, toks, intervention=win).values
    base = token_sensitivity(llama, toks).values
    assert torch.equal(base, token_sensitivity(llama, toks, intervention=None).values)
    reach = torch.tensor(path_counts(12, L, window=w)) > 0
    assert (sens[-1, ~reach] < 1e-5 * sens[-1, reach].min()).all()
    assert (sens[-1, reach] > 0).all() and (base[-1] > 0).all()
    roll = attention_rollout_from_model(llama, toks, intervention=win)
    assert (roll[-1, ~reach] == 0).all() and (roll[-1, reach] > 0).all()
    torch.testing.assert_close(roll.sum(-1), torch.ones(L, dtype=roll.dtype))
    assert torch.equal(
        attention_rollout_from_model(llama, toks),
        attention_rollout_from_model(llama, toks, intervention=None),
    )
    assert_unchanged(llama, snap)


# --------------------------------------------------------------------------- path counts
def _brute_paths(n, L, w, target, residual):
    """Enumerate every chain i = k_0 ≤ … ≤ k_L = target with steps < w; a zero step counts
    twice with residual edges (attention self-loop + residual)."""
    counts = [0] * n
    for middle in itertools.product(range(target + 1), repeat=max(L - 1, 0)):
        for i in range(target + 1):
            chain = (i, *middle, target) if L else (target,)
            if L == 0 and i != target:
                continue
            steps = [b - a for a, b in zip(chain, chain[1:])]
            if all(0 <= s < w for s in steps):
                counts[i] += 2 ** sum(s == 0 for s in steps) if residual else 1
    return counts


def test_windowed_path_counts_match_brute_force():
    checked = 0
    for n in range(1, 7):
        for L in range(0, 4):
            for w in range(1, 8):
                for target in range(n):
                    for residual in (False, True):
                        got = path_counts(n, L, target=target, residual_edges=residual, window=w)
                        assert got == _brute_paths(n, L, w, target, residual), (
                            n,
                            L,
                            w,
                            target,
                            residual,
                        )
                        checked += 1
    assert checked > 1000


def test_windowed_path_counts_are_banded_matrix_powers():
    n = 30
    for L, w, residual in [
        (5, 4, False),
        (5, 4, True),
        (9, 2, True),
        (3, 17, False),
        (12, 6, True),
    ]:
        i, j = torch.arange(n)[:, None], torch.arange(n)[None]
        band = ((j <= i) & (j > i - w)).long()
        if residual:
            band = band + torch.eye(n, dtype=torch.long)
        mat = [[int(x) for x in row] for row in band.tolist()]
        power = [[int(r == c) for c in range(n)] for r in range(n)]
        for _ in range(L):
            power = [
                [sum(power[r][k] * mat[k][c] for k in range(n)) for c in range(n)] for r in range(n)
            ]
        for target in (n - 1, 17):
            assert (
                path_counts(n, L, target=target, residual_edges=residual, window=w) == power[target]
            )


def test_windowed_path_count_facts():
    n = 60
    for L in (1, 2, 5):
        for w in (1, 2, 3, 8, 30):
            for residual in (False, True):
                counts = path_counts(n, L, residual_edges=residual, window=w)
                t = n - 1
                for i, c in enumerate(counts):  # reach: t - i <= L (w - 1), residual or not
                    assert (c > 0) == (t - i <= L * (w - 1)), (L, w, i)
                assert counts[-1] == (2**L if residual else 1)
    # a window at least as long as the sequence is the causal mask, bit for bit, in both modes
    for residual in (False, True):
        for w in (100, 101, 10**6):
            assert path_counts(100, 7, residual_edges=residual, window=w) == path_counts(
                100, 7, residual_edges=residual
            )
            assert torch.equal(
                path_counts(100, 7, residual_edges=residual, log=True, window=w),
                path_counts(100, 7, residual_edges=residual, log=True),
            )
        assert path_counts(100, 7, residual_edges=residual, window=None) == path_counts(
            100, 7, residual_edges=residual
        )
    # log mode: logs of the exact integers, also where floats overflow
    exact = path_counts(3000, 400, window=50, residual_edges=True)
    logs = path_counts(3000, 400, window=50, residual_edges=True, log=True)
    assert logs.dtype == torch.float64 and max(exact).bit_length() > 1100
    ref = torch.tensor([math.log(c) if c else -math.inf for c in exact], dtype=torch.float64)
    assert torch.equal(logs, ref)
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(OversquashError, match="window="):
            path_counts(10, 2, window=bad)


# --------------------------------------------------------------------------- 8-bit formats
def _format_values(exp_bits, man_bits, bias, finite_only_nan):
    """Every non-negative finite value of a binary float format, with its mantissa field."""
    out = []
    for e in range(2**exp_bits):
        for m in range(2**man_bits):
            if finite_only_nan and e == 2**exp_bits - 1 and m == 2**man_bits - 1:
                continue  # e4m3fn: S.1111.111 is NaN, there is no infinity
            if not finite_only_nan and e == 2**exp_bits - 1:
                continue  # e5m2: IEEE-style inf / NaN
            frac = Fraction(m, 2**man_bits)
            value = (
                frac * Fraction(2) ** (1 - bias)
                if e == 0
                else (1 + frac) * Fraction(2) ** (e - bias)
            )
            out.append((value, m))
    return sorted(out)


FORMATS = {
    "float8_e4m3fn": _format_values(4, 3, 7, True),
    "float8_e5m2": _format_values(5, 2, 15, False),
}


def _round_exact(x: Fraction, values) -> Fraction:
    """Round-to-nearest, ties to an even mantissa field, on exact rationals."""
    best = min(values, key=lambda v: (abs(v[0] - x), v[1] % 2))
    return best[0]


def _first_collision(fmt, limit=2000):
    values = FORMATS[fmt]
    prev = _round_exact(Fraction(1, 1), values)
    for n in range(1, limit):
        nxt = _round_exact(Fraction(1, n + 1), values)
        if prev == nxt:
            return n
        prev = nxt
    return None


def test_fp8_format_tables_match_torch():
    for fmt, values in FORMATS.items():
        dtype = getattr(torch, fmt)
        assert max(v for v, _ in values) == torch.finfo(dtype).max
        assert resolution(fmt) == float(torch.finfo(dtype).eps)
    assert resolution("float8_e4m3fn") == 2.0**-3 and resolution("float8_e5m2") == 2.0**-2


def test_fp8_softmax_collisions_match_brute_force():
    found = {}
    for fmt in FP8:
        found[fmt] = _first_collision(fmt)
        assert syn.bf16_collision_n(dtype=fmt) == found[fmt]
        values = FORMATS[fmt]
        bands = ((1, 16), (16, 64), (64, 256))
        frame = syn.softmax_collisions(bands, dtype=fmt)
        for (lo, hi), frac in zip(bands, frame["fraction"]):
            hits = [
                _round_exact(Fraction(1, n), values) == _round_exact(Fraction(1, n + 1), values)
                for n in range(lo, hi)
            ]
            assert frac == pytest.approx(sum(hits) / len(hits), abs=1e-12)
    assert found == {"float8_e4m3fn": 14, "float8_e5m2": 6}
    assert syn.bf16_collision_n() == 190  # unchanged


def test_collapse_curve_in_fp8(llama):
    precisions = ("float32", "bfloat16", *FP8)
    curve = collapse_curve(
        llama, [2, 8, 32], precisions=precisions, share_prefix=False, progress=False
    )
    assert set(curve.precisions) == {"float32", "bfloat16", *FP8}
    for fmt in FP8:
        assert "storage" in curve.unavailable[fmt] and fmt not in curve.native
        assert curve.crossing_length(fmt) in (None, 2, 8, 32)
        assert curve.crossing_length(fmt, criterion="identical") in (None, 2, 8, 32)
    # the rounded rows are the float32 states rounded by hand (saturating) then compared
    from oversquash_lens.tasks.prompts import task_pair

    pair = task_pair(llama, "repeat", 8)
    name = _tl.resid_name(llama.cfg.n_layers)
    a = _tl.capture(llama, _tl.prepare_tokens(llama, pair.base[None]), [name])[name][0, -1]
    b = _tl.capture(llama, _tl.prepare_tokens(llama, pair.extended[None]), [name])[name][0, -1]
    for fmt in FP8:
        big = torch.finfo(getattr(torch, fmt)).max
        ra = a.clamp(-big, big).to(getattr(torch, fmt)).double()
        rb = b.clamp(-big, big).to(getattr(torch, fmt)).double()
        row = curve.frame.query(
            "length == 8 and layer == @llama.cfg.n_layers and precision == @fmt"
        )
        assert row["l1"].item() == pytest.approx(float((ra - rb).abs().sum()), rel=1e-9, abs=1e-12)
        assert bool(row["identical"].item()) == bool(torch.equal(ra, rb))
    # the coarsest format calls a pair collapsed at least as often as bfloat16
    last = curve.frame.query("layer == @llama.cfg.n_layers")
    assert (
        last.query("precision == 'float8_e5m2'")["collapsed"].sum()
        >= last.query("precision == 'bfloat16'")["collapsed"].sum()
    )
    with pytest.raises(OversquashError, match="float8_e4m3fn"):
        collapse_curve(llama, [4], precisions=("float8_e4m3fn",), run_in_dtype=True)
    fig = curve.plot()
    labels = [a.text for a in fig.layout.annotations]
    assert "float8_e4m3fn eps 2^-3" in labels and "float8_e5m2 eps 2^-2" in labels


def test_fp8_rounding_saturates():
    from oversquash_lens.collapse.curve import _round

    x = torch.tensor([1e6, -1e6, 0.3])
    assert _round(x, torch.float8_e5m2).float().tolist() == [57344.0, -57344.0, 0.3125]
    assert _round(x, torch.float8_e4m3fn).float().tolist() == [448.0, -448.0, 0.3125]
    assert torch.equal(_round(x, torch.bfloat16), x.to(torch.bfloat16))


def test_no_warning_in_ordinary_use(llama):
    toks = torch.randint(4, 64, (1, 16), generator=torch.Generator().manual_seed(7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with sliding_window(llama, 4), scalable_softmax(llama, s=0.5):
            _tl.run_with_hooks(llama, toks, [])
