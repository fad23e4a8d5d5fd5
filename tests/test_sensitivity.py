"""token_sensitivity against autograd.functional.jacobian and float64 finite differences."""

import copy
import io
from contextlib import redirect_stdout

import pytest
import torch

from oversquash_lens import (
    InvalidArgumentError,
    InvalidTokensError,
    Sensitivity,
    _tl,
    testing,
    token_sensitivity,
)
from oversquash_lens.flow import sensitivity

from .conftest import assert_unchanged, state_snapshot

TOKENS = torch.tensor([[0, 5, 9, 7, 8, 11, 4]])


def _run_from_h0(model, toks, x, layers):
    """Target-free helper: residual after each block in ``layers`` when h^(0) := x."""
    store = {}

    def keep(layer):
        def hook(a, hook):
            store[layer] = a

        return hook

    hooks = [(_tl.resid_name(0), lambda a, hook: x)]
    hooks += [(_tl.resid_name(layer), keep(layer)) for layer in layers]
    with model.hooks(fwd_hooks=hooks):
        model(toks.expand(x.shape[0], -1))
    return store


def _snapshot(model):
    """state_snapshot after one forward: TL 4 bridges install their own permanent capture hooks
    on the first forward pass of a fresh model, which is not a leak of ours."""
    with torch.no_grad():
        model(TOKENS)
    return state_snapshot(model)


def _h0(model, toks):
    name = _tl.resid_name(0)
    return _tl.capture(model, toks, [name])[name]


def _jacobian_reference(model, toks, target):
    """‖∂h_t^(l)/∂h_i^(0)‖_F from torch.autograd.functional.jacobian on the full sequence."""
    layers = range(1, model.cfg.n_layers + 1)

    def f(x):
        store = _run_from_h0(model, toks, x, layers)
        return torch.stack([store[layer][0, target] for layer in layers])

    jac = torch.autograd.functional.jacobian(f, _h0(model, toks), vectorize=True)  # [L,d,1,pos,d]
    return jac[:, :, 0].square().sum((1, 3)).sqrt()


def _finite_difference_reference(model, toks, target, eps=1e-5):
    """Central differences in float64, all 2 * pos * d perturbations in one batched forward."""
    h0 = _h0(model, toks)[0]
    n, d = h0.shape
    layers = range(1, model.cfg.n_layers + 1)
    bumps = torch.eye(n * d, dtype=h0.dtype).view(n * d, n, d) * eps
    x = torch.cat([h0 + bumps, h0 - bumps])
    with torch.no_grad():
        store = _run_from_h0(model, toks, x, layers)
    out = []
    for layer in layers:
        y = store[layer][:, target]  # [2 n d, d_out]
        jac = (y[: n * d] - y[n * d :]) / (2 * eps)  # [(pos, d_in), d_out]
        out.append(jac.view(n, d, -1).square().sum((1, 2)).sqrt())
    return torch.stack(out)


@pytest.mark.parametrize("target", [-1, 3])
def test_exact_equals_autograd_jacobian(arch_model, target):
    ref = _jacobian_reference(arch_model, TOKENS, target % 7)
    snap = _snapshot(arch_model)
    got = token_sensitivity(arch_model, TOKENS, target=target)
    assert_unchanged(arch_model, snap)
    assert isinstance(got, Sensitivity) and got.method == "exact" and got.n_probes is None
    assert got.values.shape == (arch_model.cfg.n_layers, 7)
    torch.testing.assert_close(got.values, ref, rtol=1e-4, atol=0)
    assert float(got.values[:, target % 7 + 1 :].abs().sum()) == 0.0
    assert got.target == target % 7


# Llama/Gemma are left out: Hugging Face's RMSNorm and rotary code run in float32 even in a
# float64 model, so their finite differences carry float32 noise (exact still matches jacobian).
@pytest.mark.parametrize("arch", ["gpt2", "neox", "native"])
def test_exact_equals_float64_finite_differences(arch):
    fresh = testing.tiny_native_model() if arch == "native" else testing.tiny_model(arch)
    with redirect_stdout(io.StringIO()):  # TL prints "Changing model dtype"
        model64 = fresh.to(torch.float64)
    toks = TOKENS[:, :5]
    got = token_sensitivity(model64, toks)
    assert got.values.dtype == torch.float64
    ref = _finite_difference_reference(model64, toks, 4)
    torch.testing.assert_close(got.values, ref, rtol=1e-6, atol=0)


def test_chunking_does_not_change_the_result(llama):
    full = token_sensitivity(llama, TOKENS).values
    for chunk in (5, 50):
        got = token_sensitivity(llama, TOKENS, chunk_size=chunk).values
        torch.testing.assert_close(got, full, rtol=1e-5, atol=0)


def test_estimator_error_and_reproducibility(arch_model):
    exact = token_sensitivity(arch_model, TOKENS).values
    rng = torch.random.get_rng_state()
    est = token_sensitivity(arch_model, TOKENS, method="estimate", n_probes=64, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng), "the global RNG was used"
    assert est.method == "estimate" and est.n_probes == 64
    rel = ((est.values - exact).abs() / exact).flatten()
    # Gaussian probes: relative std of the squared norm <= sqrt(2 / 64); of the norm about half.
    assert float(rel.median()) < 0.1, float(rel.median())
    assert float(rel.max()) < 0.5
    again = token_sensitivity(arch_model, TOKENS, method="estimate", n_probes=64, seed=3)
    assert torch.equal(again.values, est.values)
    other = token_sensitivity(arch_model, TOKENS, method="estimate", n_probes=64, seed=4)
    assert not torch.equal(other.values, est.values)


def test_model_state_restored_in_every_mode(gpt2):
    gpt2.train()
    try:
        snap = _snapshot(gpt2)
        with torch.no_grad():  # the call must still be able to differentiate
            got = token_sensitivity(gpt2, TOKENS, method="estimate", n_probes=4)
        assert bool((got.values[:, :7] > 0).all())
        assert_unchanged(gpt2, snap)
        assert all(p.grad is None for p in gpt2.parameters())
    finally:
        gpt2.eval()


def test_no_autograd_graph_left_on_the_model(llama):
    token_sensitivity(llama, TOKENS, method="estimate", n_probes=2)
    for name, module in llama.named_modules():
        for key, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                assert value.grad_fn is None, f"{name}.{key} still holds an autograd graph"
    copy.deepcopy(llama)  # fails on non-leaf tensors


def test_model_unchanged_when_forward_raises(arch_model):
    snap = _snapshot(arch_model)

    def boom(module, args, output):
        raise RuntimeError("injected in forward")

    handle = arch_model.blocks[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="injected in forward"):
            token_sensitivity(arch_model, TOKENS)
    finally:
        handle.remove()
    assert_unchanged(arch_model, snap)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_model_unchanged_when_backward_raises(llama, monkeypatch, checkpoint):
    snap = _snapshot(llama)

    def boom(*args, **kwargs):
        raise RuntimeError("injected in backward")

    monkeypatch.setattr(sensitivity.torch.autograd, "grad", boom)
    with pytest.raises(RuntimeError, match="injected in backward"):
        token_sensitivity(llama, TOKENS, method="estimate", n_probes=2, checkpoint=checkpoint)
    monkeypatch.undo()
    assert_unchanged(llama, snap)
    assert all("forward" not in b.__dict__ for b in llama.blocks)  # checkpointing undone


def test_result_views(llama):
    sens = token_sensitivity(llama, "the cat sat on the mat", target=4)
    frame = sens.to_dataframe()
    assert list(frame.columns) == ["layer", "pos", "token", "value", "normalised"]
    assert len(frame) == 2 * 7 and frame["layer"].tolist()[:7] == [1] * 7
    assert frame["token"].tolist()[:3] == ["<bos>", "the", "cat"]
    sums = frame.groupby("layer")["normalised"].sum()
    assert sums.tolist() == pytest.approx([1.0, 1.0])
    torch.testing.assert_close(
        torch.tensor(frame["value"].to_numpy(), dtype=torch.float32), sens.values.flatten()
    )
    assert "Sensitivity" in sens._repr_html_()
    fig = sens.plot()
    assert len(fig.data) == 2 and fig.layout.yaxis.type == "log"


def test_bad_inputs(llama):
    with pytest.raises(InvalidTokensError, match="2 sequences"):
        token_sensitivity(llama, torch.tensor([[0, 5], [0, 6]]))
    with pytest.raises(InvalidArgumentError, match="method='bogus'"):
        token_sensitivity(llama, TOKENS, method="bogus")
    with pytest.raises(InvalidArgumentError, match="n_probes=0"):
        token_sensitivity(llama, TOKENS, method="estimate", n_probes=0)
    with pytest.raises(InvalidArgumentError, match="chunk_size=0"):
        token_sensitivity(llama, TOKENS, chunk_size=0)
    with pytest.raises(InvalidArgumentError, match="target=7"):
        token_sensitivity(llama, TOKENS, target=7)
    with pytest.raises(InvalidTokensError, match="9999"):
        token_sensitivity(llama, [0, 9999])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma"])
def test_checkpointed_blocks_give_the_same_values(arch):
    """Per-block activation checkpointing (recompute in backward) changes memory, not values:
    against the plain graph and against autograd's full Jacobian."""
    from .conftest import build

    model = build(arch)
    snap = _snapshot(model)
    plain = token_sensitivity(model, TOKENS, checkpoint=False)
    ckpt = token_sensitivity(model, TOKENS, checkpoint=True)
    est = token_sensitivity(model, TOKENS, method="estimate", n_probes=4, checkpoint=True)
    est_plain = token_sensitivity(model, TOKENS, method="estimate", n_probes=4, checkpoint=False)
    assert_unchanged(model, snap)
    assert all("forward" not in b.__dict__ for b in model.blocks)
    torch.testing.assert_close(ckpt.values, plain.values, rtol=1e-6, atol=0)
    torch.testing.assert_close(est.values, est_plain.values, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        ckpt.values, _jacobian_reference(model, TOKENS, 6), rtol=1e-4, atol=0
    )


def test_checkpointed_run_keeps_glasses_in_the_recomputation(llama):
    """A checkpointed block recomputes inside the backward pass: the glasses must still be on
    then, so the windowed Jacobian equals the one without checkpointing."""
    import functools

    from oversquash_lens.glasses import sliding_window

    window = functools.partial(sliding_window, window=2)
    plain = token_sensitivity(llama, TOKENS, intervention=window, checkpoint=False)
    ckpt = token_sensitivity(llama, TOKENS, intervention=window, checkpoint=True)
    torch.testing.assert_close(ckpt.values, plain.values, rtol=1e-6, atol=0)
    # window 2 through 2 layers: position 6 cannot see positions 0..3 (zero up to the
    # rounding of the renormalised softmax's gradient)
    assert float(ckpt.values[:, :4].abs().max()) <= 1e-6 * float(ckpt.values.abs().max())


def test_layers_subset(llama):
    full = token_sensitivity(llama, TOKENS)
    last = token_sensitivity(llama, TOKENS, layers=-1)
    assert torch.isnan(last.values[0]).all()
    torch.testing.assert_close(last.values[1], full.values[1], rtol=1e-6, atol=0)
    both = token_sensitivity(llama, TOKENS, layers=[1, 2])
    torch.testing.assert_close(both.values, full.values, rtol=1e-6, atol=0)
    frame = last.to_dataframe()
    assert set(frame["layer"]) == {2}  # unmeasured layers are not rows
    assert "layers [2] of 2" in last._repr_html_()
    for bad in (0, 3, -3, "1", [1.0], [[1]], [], {1: 2}):
        with pytest.raises(InvalidArgumentError, match="layers"):
            token_sensitivity(llama, TOKENS, layers=bad)
    from .conftest import without_runtime_type_checks

    with without_runtime_type_checks(), pytest.raises(InvalidArgumentError, match="checkpoint"):
        token_sensitivity(llama, TOKENS, checkpoint="no")


def test_sensitivity_through_adaptive_temperature_is_finite_and_matches_autograd(llama):
    """Masked (zero) attention entries must not turn the backward pass into NaN: the
    Jacobian through adaptive temperature against autograd's full Jacobian of the glassed
    model."""
    from oversquash_lens import adaptive_temperature

    got = token_sensitivity(llama, TOKENS, intervention=adaptive_temperature)
    assert bool(torch.isfinite(got.values).all())
    with adaptive_temperature(llama):
        ref = _jacobian_reference(llama, TOKENS, 6)
    assert bool(torch.isfinite(ref).all())
    torch.testing.assert_close(got.values, ref, rtol=1e-4, atol=0)
