"""Fused attention for residual-only runs (oversquash_lens/_tl/fused.py): it engages only when
nothing that reads attention internals is live, its results equal the eager path's to float
tolerance, and the model is restored exactly (also on exceptions)."""

import pytest
import torch

from oversquash_lens import _tl, capture_residuals, collapse_curve, eager_attention, testing
from oversquash_lens._tl import fused
from oversquash_lens._tl.state import count_hooks
from oversquash_lens.glasses import sliding_window

from .conftest import TL_MAJOR, build

pytestmark = pytest.mark.skipif(TL_MAJOR < 4, reason="fused attention needs a TL 4 bridge")

_G3: dict = {}


def gemma3():
    """Tiny Gemma 3: two local layers (window 4) and one global one."""
    if not _G3:
        _G3["m"] = testing.tiny_model("gemma3", n_layers=3)
    return _G3["m"]


def _models():
    return [build("llama"), build("gemma"), gemma3()]


def _engaged(monkeypatch) -> list[bool]:
    """Record, for each run_with_hooks call, whether fused attention was on."""
    seen: list[bool] = []
    real = fused.fused_attention

    def spy(model, names=()):
        cm = real(model, names)

        class Wrap:
            def __enter__(self):
                on = cm.__enter__()
                seen.append(on)
                return on

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return Wrap()

    monkeypatch.setattr(_tl.run, "fused_attention", spy)
    return seen


@pytest.mark.parametrize("which", [0, 1, 2], ids=["llama", "gemma", "gemma3-window"])
def test_capture_residuals_fused_equals_eager(which, monkeypatch):
    model = _models()[which]
    toks = torch.randint(4, 60, (2, 40), generator=torch.Generator().manual_seed(which))
    seen = _engaged(monkeypatch)
    fast = capture_residuals(model, toks).states
    assert seen == [True]
    monkeypatch.setattr(fused, "ENABLED", False)
    slow = capture_residuals(model, toks).states
    assert seen == [True, False]
    scale = float(slow.abs().max())
    assert float((fast - slow).abs().max()) <= 1e-5 * scale


def test_collapse_curve_fused_equals_eager(monkeypatch):
    model = build("llama")
    seen = _engaged(monkeypatch)
    fast = collapse_curve(model, [4, 9], precisions="float32").to_dataframe()
    assert seen and all(seen)
    monkeypatch.setattr(fused, "ENABLED", False)
    slow = collapse_curve(model, [4, 9], precisions="float32").to_dataframe()
    assert list(fast.columns) == list(slow.columns)
    num = fast.select_dtypes("number").columns
    diff = (fast[num] - slow[num]).abs().max().max()
    assert diff <= 1e-5 * max(1.0, slow[num].abs().max().max())


def test_not_engaged_when_attention_internals_are_hooked(monkeypatch):
    model = build("llama")
    toks = torch.randint(4, 60, (1, 12))
    seen = _engaged(monkeypatch)
    calls = []

    def watch(pattern, hook):
        calls.append(hook.name)

    with model.hooks(fwd_hooks=[(_tl.pattern_name(1), watch)]):
        capture_residuals(model, toks)
    assert seen == [False] and calls  # the user's pattern hook still fired
    assert not fused.fusable(model, [_tl.pattern_name(0)])
    assert not fused.fusable(model, [_tl.z_name(0)])  # hook_z lives inside the bridge too
    assert fused.fusable(model, [_tl.resid_name(0), _tl.resid_name(2)])


def test_glasses_keep_the_eager_path(monkeypatch):
    """A glasses context hooks the pattern: the windowed result must be the eager one."""
    model = build("llama")
    toks = torch.randint(4, 60, (1, 16))
    seen = _engaged(monkeypatch)
    with sliding_window(model, 3):
        del seen[:]  # entering the context probes the model (its own runs)
        windowed = capture_residuals(model, toks, positions=-1).states
    plain = capture_residuals(model, toks, positions=-1).states
    assert seen == [False, True]
    assert float((windowed - plain).abs().max()) > 1e-3  # the window did act


def test_low_precision_and_other_bridges_stay_eager():
    assert not fused.fusable(build("gpt2"))  # joint-QKV bridge: no PositionEmbeddings bridge
    assert not fused.fusable(build("native"))
    model = build("llama")
    with _tl.cast_temporarily(model, torch.bfloat16):
        assert not fused.fusable(model)
    assert fused.fusable(model)


def test_probe_disagreement_disables_fusion(monkeypatch):
    model = testing.tiny_model("llama", seed=3)
    monkeypatch.setattr(fused, "FUSED_TOLERANCE", -1.0)  # nothing can agree
    with fused.fused_attention(model) as on:
        assert on is False
    monkeypatch.setattr(fused, "FUSED_TOLERANCE", 1e-4)
    with fused.fused_attention(model) as on:  # cached verdict: parameters did not change
        assert on is False
    with torch.no_grad():
        next(model.parameters()).add_(0.0)  # bumps the version: verified again
    with fused.fused_attention(model) as on:
        assert on is True


def test_model_restored_also_on_exceptions():
    model = gemma3()
    toks = torch.randint(4, 60, (1, 10))
    with torch.no_grad():
        model(toks)  # warm-up: the bridge adds its own hooks on the first forward
    before = count_hooks(model)
    cfgs = fused._configs(model, fused._bridge_attentions(model) or [])
    impl = [c._attn_implementation for c in cfgs]

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _tl.run_with_hooks(model, toks, [(_tl.resid_name(2), boom)])
    assert [c._attn_implementation for c in cfgs] == impl == ["eager"] * len(cfgs)
    assert all("forward" not in b.attn.__dict__ for b in model.blocks)
    assert count_hooks(model) == before
    with torch.no_grad():
        eager = model(toks)
    fast = _tl.run_with_hooks(model, toks, [])
    assert float((eager - fast).abs().max()) <= 1e-5 * max(1.0, float(eager.abs().max()))


def test_probe_runs_no_user_hook():
    """The one-time agreement probe (random tokens of its own length) must not run the
    user's hooks: a steering hook sized for the user's sequence would crash on it, and a
    recorder would see calls the user never made."""
    model = testing.tiny_model("llama", seed=7)  # fresh: not probed yet
    toks = torch.randint(4, 60, (1, 20))
    vec = torch.randn(1, 20, model.cfg.d_model)
    shapes = []

    def steer(x, hook):
        shapes.append(tuple(x.shape))
        return x + vec

    model.add_hook(_tl.resid_name(1), steer)
    try:
        got = capture_residuals(model, toks).states
        assert shapes == [(1, 20, model.cfg.d_model)]  # once, on the user's tokens
        with eager_attention():
            ref = capture_residuals(model, toks).states
    finally:
        model.reset_hooks()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert float((ref[:, 2] - capture_residuals(model, toks).states[:, 2]).abs().max()) > 0
