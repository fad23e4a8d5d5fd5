import pytest
import torch

from oversquash_lens import (
    InvalidTokensError,
    OversquashError,
    _tl,
    capture_residuals,
    eager_attention,
)

from .conftest import assert_unchanged, state_snapshot


def _tokens(model, batch=3, pos=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, model.cfg.d_vocab, (batch, pos), generator=g)


def test_capture_equals_run_with_cache(arch_model):
    toks = _tokens(arch_model)
    n = arch_model.cfg.n_layers
    names = [_tl.resid_name(layer) for layer in range(n + 1)]
    _, cache = arch_model.run_with_cache(toks, names_filter=lambda name: name in names)
    ref = torch.stack([cache[name] for name in names], dim=1)
    with eager_attention():  # transformer-lens' own attention: bitwise run_with_cache
        got = capture_residuals(arch_model, toks)
    assert got.states.shape == (3, n + 1, 9, arch_model.cfg.d_model)
    assert torch.equal(got.states, ref)
    fast = capture_residuals(arch_model, toks)  # fused attention where the bridge allows it
    torch.testing.assert_close(fast.states, ref, rtol=1e-5, atol=1e-5)
    assert got.positions.tolist() == list(range(9))


def test_positions_and_batching_identical(arch_model):
    toks = _tokens(arch_model, batch=5)
    full = capture_residuals(arch_model, toks).states
    for positions in (-1, [0, 3, -2], slice(2, 7, 2), torch.tensor([4, 1])):
        sub = capture_residuals(arch_model, toks, positions=positions)
        idx = sub.positions
        assert torch.equal(sub.states, full[:, :, idx])
    batched = capture_residuals(arch_model, toks, positions=[1, -1], batch_size=2, progress=False)
    # Each streamed chunk is bitwise what a direct call on that chunk gives ...
    for start in (0, 2, 4):
        direct = capture_residuals(arch_model, toks[start : start + 2]).states
        assert torch.equal(batched.states[start : start + 2], direct[:, :, [1, 8]])
    # ... and matches the one-batch run up to BLAS reduction order (batch-size dependent).
    torch.testing.assert_close(batched.states, full[:, :, [1, 8]], rtol=1e-5, atol=1e-6)


def test_dtype_cast_and_at(llama):
    toks = _tokens(llama)
    s = capture_residuals(llama, toks, positions=[2, 5], dtype="bfloat16")
    assert s.states.dtype == torch.bfloat16
    full = capture_residuals(llama, toks).states
    assert torch.equal(s.at(5), full[:, :, 5].to(torch.bfloat16))
    with pytest.raises(OversquashError, match="position=4"):
        s.at(4)
    assert "ResidualStates" in s._repr_html_()
    assert len(s.to_dataframe()) == 3 * (llama.cfg.n_layers + 1) * 2


def test_hook_exception_leaves_no_trace(arch_model):
    toks = _tokens(arch_model)
    snap = state_snapshot(arch_model)
    arch_model.train()
    snap_train = state_snapshot(arch_model)

    def boom(x, hook):
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        _tl.run_with_hooks(arch_model, toks, [("blocks.1.hook_resid_pre", boom)], freeze=True)
    assert_unchanged(arch_model, snap_train)
    arch_model.eval()
    assert_unchanged(arch_model, snap)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "empty"),
        (torch.zeros(2, 2, 2, dtype=torch.long), "shape"),
        (torch.zeros(4), "dtype"),
        ([0, 1, 9999], "9999"),
        ([-1, 2], "-1"),
        (torch.zeros(1, 129, dtype=torch.long), "n_ctx"),
    ],
)
def test_bad_tokens(llama, bad, match):
    with pytest.raises(OversquashError, match=match):
        capture_residuals(llama, bad)


def test_bad_options(llama):
    with pytest.raises(OversquashError, match="positions=99"):
        capture_residuals(llama, [0, 1, 2], positions=99)
    with pytest.raises(OversquashError, match="batch_size=0"):
        capture_residuals(llama, [0, 1, 2], batch_size=0)
    with pytest.raises(OversquashError, match="dtype='float8'"):
        capture_residuals(llama, [0, 1, 2], dtype="float8")
    with pytest.raises(OversquashError, match="TransformerLens model"):
        capture_residuals(object(), [0, 1, 2])


def test_text_input(llama):
    s = capture_residuals(llama, "the cat sat on the mat", positions=-1)
    assert s.tokens.shape[1] == 7  # BOS + 6 words


def test_text_longer_than_n_ctx_raises_instead_of_truncating(llama):
    """TransformerLens' to_tokens truncates text at n_ctx by default, which would silently
    change the target token; every entry point must refuse it instead."""
    from oversquash_lens import attention_rollout_from_model, token_sensitivity

    n_ctx = llama.cfg.n_ctx
    text = " ".join(["cat"] * n_ctx)  # BOS + n_ctx words
    for call in (
        lambda: capture_residuals(llama, text, positions=-1),
        lambda: capture_residuals(llama, [text, "the cat"], positions=-1),
        lambda: token_sensitivity(llama, text, method="estimate", n_probes=1),
        lambda: attention_rollout_from_model(llama, text),
    ):
        with pytest.raises(InvalidTokensError, match=rf"{n_ctx + 1} positions, .*n_ctx={n_ctx}"):
            call()
    fits = capture_residuals(llama, " ".join(["cat"] * (n_ctx - 1)), positions=-1)
    assert fits.tokens.shape[1] == n_ctx


def test_ragged_text_batches_are_refused(llama):
    """A right-padded batch would put a pad token at position -1 of the shorter text."""
    with pytest.raises(InvalidTokensError, match="different token lengths"):
        capture_residuals(llama, ["1 1 1 1 1", "1 1"], positions=-1)
    same = capture_residuals(llama, ["1 1", "2 2"], positions=-1)  # equal lengths still work
    assert same.states.shape[0] == 2


def test_internal_capture_copies_views_and_keeps_built_tensors(llama):
    """``_tl.capture`` never keeps memory the model may reuse: a transform returning the
    activation or a view of it is copied, a tensor the transform built is kept as is (no second
    copy, what lets information_flow pack patterns without doubling them)."""
    from oversquash_lens import _tl, eager_attention

    toks = torch.arange(3, 11)[None]
    seen: dict[str, tuple[int, int]] = {}
    view, built = _tl.resid_name(1), _tl.resid_name(2)

    def transform(name, x):
        out = x[0] if name == view else x[0] * 2.0
        seen[name] = (x.untyped_storage().data_ptr(), out.untyped_storage().data_ptr())
        return out

    with eager_attention():  # bitwise comparable with run_with_cache below
        store = _tl.capture(llama, toks, [view, built], transform=transform)
    activation, kept_view = seen[view]
    assert kept_view == activation  # the transform did return a view...
    assert store[view].untyped_storage().data_ptr() != activation  # ...which was copied
    assert store[built].untyped_storage().data_ptr() == seen[built][1]  # kept, not copied
    _, cache = llama.run_with_cache(toks)
    torch.testing.assert_close(store[view], cache[view][0], rtol=0, atol=0)
    torch.testing.assert_close(store[built], 2.0 * cache[built][0], rtol=0, atol=0)
