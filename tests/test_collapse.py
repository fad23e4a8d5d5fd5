"""collapse_curve against independent references, and the collapse behaviours of
docs/science.md §2."""

import contextlib
import io
import tempfile

import pandas as pd
import pytest
import torch

from oversquash_lens import (
    CollapseCurve,
    InvalidTokensError,
    OversquashError,
    _tl,
    adaptive_temperature,
    collapse_curve,
    eager_attention,
    tasks,
    testing,
)

from .conftest import assert_unchanged, state_snapshot

_MODELS: dict[str, torch.nn.Module] = {}


def long_llama():
    """Random Llama (RoPE, no recency mechanism) with a 1024-token context."""
    if "llama" not in _MODELS:
        _MODELS["llama"] = testing.tiny_model("llama", n_ctx=1024)
    return _MODELS["llama"]


def windowed():
    """Random Mistral with sliding-window attention (window 8, 2 layers): a model whose last
    token only sees the last 16 positions, the recency that trained models' local heads give.
    initializer_range=0.2 makes attention write O(1) changes into the residual stream."""
    if "mistral" not in _MODELS:
        import transformers as tf

        cfg = tf.MistralConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
            sliding_window=8, initializer_range=0.2, bos_token_id=0, eos_token_id=1,
            pad_token_id=3,
        )  # fmt: skip
        folder = tempfile.mkdtemp(prefix="oversquash_mistral_")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            tf.MistralForCausalLM(cfg).save_pretrained(folder)
        testing.tiny_tokenizer().save_pretrained(folder)
        with contextlib.redirect_stderr(io.StringIO()):
            model = _tl.bridge_class().boot_transformers(folder)
        _MODELS["mistral"] = model.eval()
    return _MODELS["mistral"]


def _snapshot(model):
    """state_snapshot after one forward (TL 4 bridges wire their own hooks on first use)."""
    _tl.run_with_hooks(model, torch.tensor([[0, 1]]), [])
    return state_snapshot(model)


def _last_states(model, tokens):
    """Independent reference: run_with_cache on one sequence, residuals at the last token."""
    n = model.cfg.n_layers
    names = [_tl.resid_name(layer) for layer in range(n + 1)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name in names)
    return torch.stack([cache[name][0, -1] for name in names])


def _rows(curve, precision="float32", mode="rounded", layer=None):
    f = curve.to_dataframe()
    layer = curve.n_layers if layer is None else layer
    sel = f[(f.precision == precision) & (f["mode"] == mode) & (f.layer == layer)]
    return sel.sort_values("length")


def test_matches_run_with_cache_reference(arch_model):
    lengths = [1, 3, 8]
    snap = _snapshot(arch_model)
    with eager_attention():  # the reference runs transformer-lens' eager attention too
        exact = collapse_curve(arch_model, lengths, share_prefix=False, run_in_dtype=False)
        shared = collapse_curve(arch_model, lengths, run_in_dtype=False)
    assert_unchanged(arch_model, snap)
    f_exact, f_shared = exact.to_dataframe(), shared.to_dataframe()
    for n in lengths:
        pair = tasks.repeated_pair(arch_model, n)
        a, b = _last_states(arch_model, pair.base), _last_states(arch_model, pair.extended)
        for precision, dtype in [("float32", torch.float32), ("bfloat16", torch.bfloat16)]:
            ar, br = a.to(dtype).double(), b.to(dtype).double()
            d = (ar - br).abs()
            ref = pd.DataFrame(
                {
                    "l1": d.sum(-1),
                    "linf": d.amax(-1),
                    "rel_l2": d.norm(dim=-1) / torch.maximum(ar.norm(dim=-1), br.norm(dim=-1)),
                    "identical": (a.to(dtype) == b.to(dtype)).all(-1),
                }
            )
            for frame, rtol in [(f_exact, 0.0), (f_shared, 1e-4)]:
                got = frame[(frame.length == n) & (frame.precision == precision)]
                got = got.sort_values("layer")
                for col in ("l1", "linf", "rel_l2"):
                    torch.testing.assert_close(
                        torch.tensor(got[col].to_numpy()), torch.tensor(ref[col].to_numpy()),
                        rtol=rtol, atol=1e-6 if rtol else 0.0,
                    )  # fmt: skip
            got = f_exact[(f_exact.length == n) & (f_exact.precision == precision)]
            assert got.sort_values("layer")["identical"].tolist() == ref["identical"].tolist()
    assert set(f_exact["mode"]) == {"rounded"}
    assert exact.native == () and set(exact.unavailable) == {"float32", "bfloat16", "float16"}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_native_dtype_equals_a_freshly_cast_model(arch):
    model = testing.tiny_model(arch)
    snap = _snapshot(model)
    prec = ("bfloat16", "float16")
    curve = collapse_curve(model, [2, 5], share_prefix=False, precisions=prec, run_in_dtype=True)
    assert_unchanged(model, snap)
    assert _tl.model_dtype(model) == torch.float32
    assert curve.native == ("bfloat16", "float16") and curve.unavailable == {}
    for precision, dtype in [("bfloat16", torch.bfloat16), ("float16", torch.float16)]:
        fresh = testing.tiny_model(arch).to(dtype)  # same seed: same weights, truly cast
        for n in (2, 5):
            pair = tasks.repeated_pair(fresh, n)
            a, b = _last_states(fresh, pair.base), _last_states(fresh, pair.extended)
            got = curve.to_dataframe()
            got = got[(got.length == n) & (got.precision == precision) & (got["mode"] == "native")]
            ref_l1 = (a.double() - b.double()).abs().sum(-1)
            assert got.sort_values("layer")["l1"].tolist() == ref_l1.tolist()
    default = collapse_curve(model, [2], precisions=prec)  # CPU: fp16 is emulated, opt-in
    assert default.native == ("bfloat16",) and "float16" in default.unavailable


def test_random_llama_repeats_collapse_alternating_does_not():
    model = long_llama()
    lengths = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    rep = _rows(collapse_curve(model, lengths, precisions="float32"))
    gaps = rep["rel_l2"].to_numpy()
    assert (gaps[1:] < gaps[:-1]).all(), gaps  # falls with n at every step
    assert gaps[-1] < 1e-3 * gaps[0]
    curve = collapse_curve(model, [2, 8, 32, 128, 512], task="alternating", run_in_dtype=False)
    for precision in curve.precisions:
        assert curve.crossing_length(precision) is None
    assert (_rows(curve)["rel_l2"] > 0.3).all()  # Prop B.4: no collapse
    # without a recency mechanism a comma every 3rd item only slows the decay (~1/n)
    sep = _rows(collapse_curve(model, [8, 64, 512], task="repeat-sep", precisions="float32"))
    assert (sep["rel_l2"].to_numpy() > rep.set_index("length").loc[[8, 64, 512], "rel_l2"]).all()


def test_separators_keep_the_gap_with_a_sliding_window():
    model = windowed()
    lengths = [2, 4, 8, 16, 32, 64, 128, 300]
    rep = collapse_curve(model, lengths)
    sep = collapse_curve(model, lengths, task="repeat-sep", run_in_dtype=False)
    alt = collapse_curve(model, lengths, task="alternating", run_in_dtype=False)
    r, s, a = _rows(rep), _rows(sep), _rows(alt)
    late = r["length"] >= 16  # beyond the receptive field (2 layers x window 8)
    assert (r.loc[late, "rel_l2"] < 1e-5).all()  # same window content: collapsed to fp32 noise
    assert (r.loc[~late, "rel_l2"] > 1e-2).all()
    assert rep.crossing_length("bfloat16", criterion="collapsed") == 16
    assert rep.crossing_length("bfloat16", mode="native", criterion="collapsed") == 16
    assert (s.loc[s["length"] >= 16, "rel_linf"] > 2.0**-7).all()  # commas: no fall to zero
    assert (a["rel_l2"] > 0.3).all()
    for precision in ("float32", "bfloat16", "float16"):
        assert sep.crossing_length(precision) is None
        assert alt.crossing_length(precision) is None


def _curve(flags, identical=None):
    n = len(flags)
    frame = pd.DataFrame(
        {
            "length": [2**i for i in range(n)], "layer": 1, "precision": "bfloat16",
            "mode": "rounded", "l1": 0.0, "linf": 0.0, "rel_l2": 0.0, "rel_linf": 0.0,
            "identical": identical or [False] * n, "collapsed": flags,
            "identical_fraction": [1.0 if x else 0.5 for x in (identical or [False] * n)],
        }
    )  # fmt: skip
    return CollapseCurve(frame, "repeat", tuple(frame.length), ("bfloat16",), "float32", 1)


def test_crossing_length_definition():
    res = {"criterion": "collapsed"}  # the resolution-based, secondary notion
    assert _curve([False, True, False, True, True]).crossing_length("bf16", **res) == 8
    assert _curve([True, True, True]).crossing_length("bfloat16", layer=1, **res) == 1
    assert _curve([True, True, False]).crossing_length("bfloat16", **res) is None
    c = _curve([True, True, True], identical=[False, True, True])
    assert c.crossing_length("bfloat16") == 2  # the headline: bit-identical
    assert c.crossing_length("bfloat16", criterion="identical") == 2
    assert _curve([True, True, True]).crossing_length("bfloat16") is None  # never identical
    table = c.crossings()
    assert table.loc[0, "identical"] == 2 and table.loc[0, "collapsed"] == 1
    assert not table.loc[0, "at_grid_end"] and "bit-identical from n = 2" in table.loc[0, "reading"]
    end = _curve([False, False, True]).crossings()  # below resolution only at the last n
    assert end.loc[0, "at_grid_end"] and "only at the last n" in end.loc[0, "reading"]
    with pytest.raises(OversquashError, match="'float16' was not measured"):
        c.crossing_length("float16")
    with pytest.raises(OversquashError, match="mode='native'"):
        c.crossing_length("bfloat16", mode="native")
    with pytest.raises(OversquashError, match="layer=5"):
        c.crossing_length("bfloat16", layer=5)
    with pytest.raises(OversquashError, match="criterion='x'"):
        c.crossing_length("bfloat16", criterion="x")


def test_errors_name_the_bad_value(llama):
    snap = _snapshot(llama)
    with pytest.raises(OversquashError, match=r"task='nope' is not one of \['repeat'"):
        collapse_curve(llama, [4], task="nope")
    with pytest.raises(OversquashError, match="precision='float8'"):
        collapse_curve(llama, [4], precisions=("float32", "float8"))
    with pytest.raises(InvalidTokensError, match=r"n=200 .* n_ctx=128"):
        collapse_curve(llama, [4, 200])
    with pytest.raises(OversquashError, match="empty"):
        collapse_curve(llama, [])
    for bad in (0, -3):
        with pytest.raises(OversquashError, match=str(bad)):
            collapse_curve(llama, [4, bad])
    with pytest.raises(OversquashError, match="batch_size=0"):
        collapse_curve(llama, [4], batch_size=0)
    assert_unchanged(llama, snap)


def test_numpy_length_grids_are_accepted(llama):
    """A numpy log grid (np.int64 items) is the natural way to build PAPER's length grid."""
    import numpy as np

    grid = np.unique(np.geomspace(4, 32, 4).astype(int))
    curve = collapse_curve(llama, grid, precisions=("float32",))
    assert curve.lengths == tuple(int(n) for n in grid)
    assert all(type(n) is int for n in curve.lengths)
    same = collapse_curve(llama, [int(n) for n in grid], precisions=("float32",))
    pd.testing.assert_frame_equal(curve.to_dataframe(), same.to_dataframe())


def test_frame_plot_html_and_batching(llama):
    curve = collapse_curve(llama, [2, 6, 20], task="alternating", batch_size=1, progress=False)
    df = curve.to_dataframe()
    assert list(df.columns) == [
        "length", "layer", "precision", "mode", "l1", "linf", "rel_l2", "rel_linf",
        "identical", "identical_fraction", "collapsed",
    ]  # fmt: skip
    # lengths x layers x (3 rounded + native float32 and bfloat16; float16 is opt-in on CPU)
    assert len(df) == 3 * (llama.cfg.n_layers + 1) * 5
    batched = collapse_curve(llama, [2, 6, 20], task="alternating", batch_size=16).to_dataframe()
    torch.testing.assert_close(
        torch.tensor(batched["l1"].to_numpy()), torch.tensor(df["l1"].to_numpy()),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    fig = curve.plot()
    assert len(fig.data) == 5 and fig.layout.xaxis.type == "log"  # one trace per (precision, mode)
    html = curve._repr_html_()
    assert "CollapseCurve" in html and "crossing length" in html.lower()
    with pytest.raises(OversquashError, match="metric='l2'"):
        curve.plot(metric="l2")


def test_intervention_and_tokenizer_free_model():
    model = long_llama()
    snap = _snapshot(model)
    plain = collapse_curve(model, [4, 32], precisions="float32", run_in_dtype=False)
    glassy = collapse_curve(
        model, [4, 32], precisions="float32", run_in_dtype=False,
        intervention=adaptive_temperature,
    )  # fmt: skip
    assert_unchanged(model, snap)
    assert glassy.intervention == "adaptive_temperature"
    assert not (plain.to_dataframe()["l1"] == glassy.to_dataframe()["l1"]).all()
    native = build_native()
    curve = collapse_curve(native, [3, 9], task_options={"item": 7, "bos": 0})
    assert curve.lengths == (3, 9) and len(curve.to_dataframe()) > 0


def build_native():
    if "native" not in _MODELS:
        _MODELS["native"] = testing.tiny_native_model()
    return _MODELS["native"]


def test_interrupted_sweep_keeps_the_lengths_measured(monkeypatch):
    """A KeyboardInterrupt during a long sweep returns the pairs measured so far, marked
    incomplete, with a SweepInterrupted warning; before any pair, it propagates."""
    from oversquash_lens import _sweep
    from oversquash_lens.collapse import curve as curve_module

    model = testing.tiny_model("llama")
    full = collapse_curve(model, [2, 5, 9], precisions="float32", share_prefix=False)
    real, calls = curve_module._tl.capture, []

    def stop_after(k):
        def capture(*args, **kwargs):
            calls.append(1)
            if len(calls) > k:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        return capture

    # runs go longest first, one per sequence (batch_size=1): 2 runs = the n=9 pair only
    monkeypatch.setattr(curve_module._tl, "capture", stop_after(2))
    with pytest.warns(_sweep.SweepInterrupted, match="1 of 3"):
        part = collapse_curve(
            model, [2, 5, 9], precisions="float32", share_prefix=False, batch_size=1
        )
    assert part.complete is False and full.complete is True
    assert part.lengths == (9,)
    got = part.to_dataframe()
    want = full.to_dataframe().query("length == 9").reset_index(drop=True)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)
    calls.clear()
    monkeypatch.setattr(curve_module._tl, "capture", stop_after(0))
    with pytest.raises(KeyboardInterrupt):
        collapse_curve(model, [2, 5], precisions="float32", batch_size=1)
