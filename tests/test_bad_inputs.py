"""Bad inputs, class by class: each is refused with the package's own error (not a bare
RuntimeError/MemoryError/TypeError/OverflowError, and not silently accepted), before any large
allocation, with a message that names the offending value."""

import importlib
import math
import re
import time

import numpy as np
import pytest
import torch

from oversquash_lens import _validate, path_counts, tasks, viz
from oversquash_lens.collapse.capture import capture_residuals
from oversquash_lens.errors import (
    InvalidArgumentError,
    InvalidPatternError,
    OversquashError,
)
from oversquash_lens.flow.attention_flow import attention_flow
from oversquash_lens.flow.sensitivity import token_sensitivity
from oversquash_lens.glasses import ssmax, temperature, window

from .conftest import without_runtime_type_checks

composition = importlib.import_module("oversquash_lens.circuits.composition")


@pytest.fixture(autouse=True)
def _as_users_call():
    """Wrong-typed arguments must reach the package's validation (not the test-suite hook)."""
    with without_runtime_type_checks():
        yield


def refused(match, error=InvalidArgumentError, *, seconds=5.0):
    """``pytest.raises`` of ``error`` whose message contains ``match`` (literally), raised
    within ``seconds`` (refused before any work, not after allocating)."""

    class _Timed:
        def __enter__(self):
            self.start = time.perf_counter()
            self.raises = pytest.raises(error, match=re.escape(match))
            return self.raises.__enter__()

        def __exit__(self, *exc):
            out = self.raises.__exit__(*exc)
            assert time.perf_counter() - self.start < seconds, "refused only after real work"
            return out

    return _Timed()


# --------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((10**9, 3), {}, "n_tokens=1000000000"),
        ((10**9, 3), {"log": True}, "n_tokens=1000000000"),
        ((10**9, 3), {"window": 4}, "n_tokens=1000000000"),
        ((10, 10**9), {"residual_edges": True, "log": True}, "n_layers=1000000000"),
        ((10**7, 100), {}, "n_tokens=10000000, n_layers=100"),  # GiBs of exact integers
        ((10**7, 1000), {"residual_edges": True, "log": True}, "n_layers=1000"),  # minutes
    ],
)
def test_path_counts_refuses_huge_sizes_before_any_work(args, kwargs, match):
    with refused(match):
        path_counts(*args, **kwargs)


def test_path_counts_still_takes_large_log_inputs_and_numpy_ints():
    assert path_counts(10**6, 2000, log=True).shape == (10**6,)
    assert path_counts(np.int64(5), np.int64(3)) == [15, 10, 6, 3, 1]
    assert path_counts(10**5, 10**4, window=3)[-1] == 1


@pytest.mark.parametrize(
    "build",
    [
        lambda m: tasks.repeated_pair(m, 10**9),
        lambda m: tasks.alternating_pair(m, 10**9),
        lambda m: tasks.copy_pair(m, 10**9),
        lambda m: tasks.copy_pair(m, 10**9, which="first"),
        lambda m: tasks.counting_prompt(m, 10**9),
        lambda m: tasks.counting_prompt(m, 10**9, kind="bernoulli"),
        lambda m: tasks.copying_prompt(m, 10**9),
        lambda m: tasks.task_pair(m, "count-ones", 10**9),
        lambda m: tasks.task_pair(m, "repeat-sep", 10**9),
        lambda m: tasks.task_prompt(m, "count-word", 10**9),
    ],
)
def test_task_builders_refuse_huge_lengths(llama, build):
    with refused("n=1000000000"):
        build(llama)


def test_task_builder_sizes_without_a_model_and_repeat(llama):
    with refused("n=1000000000"):
        tasks.repeated_pair(None, 10**9, item=5)
    with refused("n=3: 1000000003 items"):  # the repeated final items count too
        tasks.copying_prompt(llama, 3, remedy="repeat-final", repeat=10**9)
    # a prompt longer than n_ctx may still be built (callers check it against n_ctx)
    assert len(tasks.repeated_pair(llama, 200).base) > llama.cfg.n_ctx


def test_composition_refuses_huge_baselines(llama):
    with refused("baseline_samples=1000000000"):
        composition.composition(llama, "K", baseline_samples=10**9)
    with refused("n_samples=1000000000"):
        composition.random_composition_baseline(64, 8, n_samples=10**9)
    with refused("d_model=1000000000"):
        composition.random_composition_baseline(10**9, 64)


def test_token_sensitivity_refuses_huge_probe_counts(llama):
    with refused("n_probes=1000000000"):
        token_sensitivity(llama, "1 1 1", method="estimate", n_probes=10**9)
    got = token_sensitivity(llama, "1 1 1", method="estimate", n_probes=np.int64(4))
    assert got.n_probes == 4


# --------------------------------------------------------------------------- numbers / NaN
LOGITS = torch.randn(2, 5)
PATTERN = torch.rand(3, 3).tril()
PATTERN = PATTERN / PATTERN.sum(-1, keepdim=True)  # causal, rows summing to 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: temperature.adaptive_temperature(m, threshold=math.nan), "threshold=nan"),
        (lambda m: temperature.adaptive_temperature(m, threshold="a"), "threshold='a'"),
        (lambda m: temperature.adaptive_temperature(m, coefficients=[math.inf]), "inf"),
        (lambda m: temperature.adaptive_beta(LOGITS, threshold=math.nan), "threshold=nan"),
        (lambda m: temperature.adaptive_softmax(LOGITS, threshold=math.inf), "threshold=inf"),
        (lambda m: temperature.adaptive_pattern(PATTERN, threshold="a"), "threshold='a'"),
        (lambda m: temperature.adaptive_pattern(PATTERN, coefficients=[math.inf]), "inf"),
        (lambda m: temperature.adaptive_softmax(LOGITS, coefficients="ab"), "coefficients='ab'"),
        (lambda m: ssmax.scalable_softmax(m, s=math.nan), "s=nan"),
        (lambda m: ssmax.ssmax_pattern(PATTERN, math.inf), "s=inf"),
        (lambda m: ssmax.ssmax_beta(3, 3, math.nan), "s=nan"),
        (lambda m: ssmax.ssmax_pattern(PATTERN, 0.4, sink="no"), "sink='no'"),
        (lambda m: window.window_pattern(PATTERN, 2, sink="no"), "sink='no'"),
        (lambda m: window.sliding_window(m, 2.5), "window=2.5"),
        (lambda m: window.sliding_window(m, math.inf), "window=inf"),
    ],
)
def test_glasses_refuse_nan_inf_and_wrong_types(llama, call, match):
    with refused(match):
        ctx = call(llama)
        if hasattr(ctx, "__enter__"):
            with ctx:
                pass


def test_huge_windows_mean_no_window(llama):
    """A window wider than the sequence changes nothing; 10**30 was an OverflowError."""
    toks = llama.to_tokens("1 1 1 1")
    plain = llama(toks)
    with window.sliding_window(llama, 10**30):
        torch.testing.assert_close(llama(toks), plain)
    assert bool(window.window_mask(3, 3, 10**30).equal(torch.ones(3, 3).tril().bool()))
    torch.testing.assert_close(window.window_pattern(PATTERN, 10**30), PATTERN)
    torch.testing.assert_close(
        ssmax.ssmax_beta(3, 3, 0.4, window=10**30), ssmax.ssmax_beta(3, 3, 0.4)
    )


# --------------------------------------------------------------------------- types / options
def test_progress_must_be_a_bool(llama):
    with refused("progress='no'"):
        token_sensitivity(llama, "1 1 1", progress="no")
    with refused("progress='no'"):
        _validate.progress_flag("no", True)


def test_capture_residuals_progress_must_be_a_bool(llama):
    with pytest.raises(InvalidArgumentError, match="progress='no'"):
        capture_residuals(llama, "1 1 1", progress="no")


def test_seeds_and_answers_must_have_their_types(llama):
    with refused("seed='3'"):
        composition.composition(llama, "K", seed="3", baseline_samples=2)
    with refused("seed=1.5"):
        composition.composition(llama, "K", seed=1.5, baseline_samples=2)
    with refused("seed=1.5"):
        tasks.counting_prompt(llama, 3, kind="bernoulli", seed=1.5)
    with refused("text=5"):
        tasks.read_answer(5)
    with refused("text=None"):
        tasks.read_answer(None)
    assert tasks.read_answer(" 12.") == "12"


# --------------------------------------------------------------------------- positions
@pytest.mark.parametrize(
    "positions",
    [torch.tensor([[0, 1], [2, 3]]), np.array([[0, 1]]), torch.zeros(1, 1, 2, dtype=torch.long)],
)
def test_multi_dimensional_positions_are_refused(llama, positions):
    with refused("positions has shape"):
        capture_residuals(llama, "1 1 1 1", positions=positions)


def test_one_dimensional_numpy_positions_and_lengths_are_accepted(llama):
    a = capture_residuals(llama, "1 1 1 1", positions=np.array([0, 2]))
    b = capture_residuals(llama, "1 1 1 1", positions=torch.tensor([0, 2]))
    assert a.positions.tolist() == b.positions.tolist() == [0, 2]
    assert capture_residuals(llama, "1 1", positions=np.int64(-1)).positions.tolist() == [2]
    assert _validate.int_list(np.array([2, 4])) == [2, 4]
    assert _validate.block_indices(np.array([0, -1]), 2) == [0, 1]
    with refused("lengths has shape (1, 2)"):
        _validate.int_list(np.array([[1, 2]]))
    with refused("layers has shape (1, 2)"):
        _validate.block_indices(np.array([[0, 1]]), 2)
    with refused("positions=0.5"):
        _validate.resolve_positions(np.array([0.5]), 4)


# --------------------------------------------------------------------------- tasks
@pytest.mark.parametrize(
    "build, match",
    [
        (lambda m: tasks.repeated_pair(m, 3, item="zebra"), "item='zebra'"),
        (lambda m: tasks.copy_pair(m, 3, item="x", other="y"), "'x'"),
        (lambda m: tasks.alternating_pair(m, 4, items=("x", "0")), "item='x'"),
        (lambda m: tasks.copying_prompt(m, 3, other="q"), "'q'"),
        (lambda m: tasks.repeated_pair(m, 3, sep=";"), "sep=';'"),
        (lambda m: tasks.repeated_pair(m, 3, filler="zz"), "filler='zz'"),
        (lambda m: tasks.task_prompt(m, "count-ones", 3, remedy="interleave", filler="qq"), "qq"),
        (lambda m: tasks.task_pair(m, "repeat", 3, item="zebra"), "item='zebra'"),
    ],
)
def test_items_that_encode_to_unk_are_refused(llama, build, match):
    with refused(match) as info:
        build(llama)
    assert "unknown token '<unk>'" in str(info.value)


def test_task_options_are_checked(llama):
    with refused("word='zebra'"):
        tasks.counting_prompt(llama, 3, kind="word", word="zebra")
    with refused("template=5"):
        tasks.counting_prompt(llama, 3, template=5)
    with refused("items='ab'"):
        tasks.alternating_pair(llama, 4, items="ab")
    # the sum's built-in "+" is not in the tiny vocabulary: it frames items and stays allowed
    assert tasks.task_prompt(llama, "sum-ones", 3).answer == "3"


# --------------------------------------------------------------------------- views
TOKS = ["a", "b"]
EYE = torch.eye(2).expand(1, 2, 2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: viz.colored_tokens(TOKS, [math.nan, 1.0]), "values[0]=nan"),
        (lambda: viz.colored_tokens(TOKS, [math.inf, 1.0]), "values[0]=inf"),
        (lambda: viz.colored_tokens(TOKS, ["x", "y"]), "values[0]='x'"),
        (lambda: viz.colored_tokens(TOKS, "ab"), "values='ab'"),
        (lambda: viz.colored_tokens(TOKS, [[1.0, 2.0], [3.0, 4.0]]), "values[0]=[1.0, 2.0]"),
        (lambda: viz.colored_tokens(TOKS, torch.ones(2, 3)), "values has shape (2, 3)"),
        (lambda: viz.colored_tokens(TOKS, torch.tensor(1.0)), "values=tensor(1.)"),
        (lambda: viz.colored_tokens("ab", [1.0, 2.0]), "tokens='ab'"),
        (lambda: viz.colored_tokens([1, 2], [1.0, 2.0]), "tokens[0]=1"),
        (lambda: viz.colored_tokens(torch.tensor([1, 2]), [1.0, 2.0]), "tokens=tensor"),
        (lambda: viz.colored_tokens(None, [1.0, 2.0]), "tokens=None"),
        (lambda: viz.colored_tokens(TOKS, [1.0, 2.0], title=5), "title=5"),
        (lambda: viz.colored_tokens_multi(TOKS, [1.0, 2.0]), "measures=[1.0, 2.0]"),
        (lambda: viz.colored_tokens_multi(TOKS, {"x": ["p", "q"]}), "measures['x'][0]='p'"),
        (lambda: viz.colored_tokens_multi(TOKS, {"x": np.ones((2, 2))}), "has shape (2, 2)"),
        (lambda: viz.colored_tokens_multi("ab", {"x": [1.0, 2.0]}), "tokens='ab'"),
        (lambda: viz.colored_tokens_multi(TOKS, {"x": [1.0, 2.0]}, log="x"), "log='x'"),
        (lambda: viz.colored_tokens_multi(TOKS, {"x": [1.0, 2.0]}, log=5), "log=5"),
        (lambda: viz.colored_tokens_multi(TOKS, {5: [1.0, 2.0]}), "measure names[0]=5"),
        (lambda: viz.colored_tokens_multi(TOKS, {"x": [1.0, 2.0]}, scale=1), "scale=1"),
        (lambda: viz.attention_heads("abc", TOKS), "attention='abc'"),
        (lambda: viz.attention_heads(EYE, TOKS, max_tokens=0), "max_tokens=0"),
        (lambda: viz.attention_heads(EYE, TOKS, max_tokens=-1), "max_tokens=-1"),
        (lambda: viz.attention_heads(EYE, TOKS, max_tokens="a"), "max_tokens='a'"),
        (lambda: viz.attention_heads(EYE, TOKS, max_tokens=1.5), "max_tokens=1.5"),
        (lambda: viz.attention_heads(EYE, TOKS, head_names="a"), "head_names='a'"),
        (lambda: viz.attention_heads(EYE, "ab"), "tokens='ab'"),
        (lambda: viz.attention_heads(torch.full((1, 2, 2), math.nan), TOKS), "contains nan"),
        (lambda: viz.attention_heads(torch.ones(1, 2, 2, dtype=torch.long), TOKS), "int64"),
        (lambda: viz.html_document(5), "items=5"),
        (lambda: viz.html_document("abc"), "items='abc'"),
        (lambda: viz.html_document([], title=5), "title=5"),
        (lambda: viz.save_html("<p>x</p>", 5), "path=5"),
    ],
)
def test_views_refuse_bad_values_tokens_and_options(call, match):
    with refused(match):
        call()


def test_views_still_accept_arrays_and_non_finite_multi_measures():
    assert viz.colored_tokens(TOKS, np.array([1, 2]))._repr_html_()
    assert viz.colored_tokens(TOKS, torch.tensor([1.0, 2.0], dtype=torch.bfloat16))._repr_html_()
    multi = viz.colored_tokens_multi(TOKS, {"logs": [-math.inf, 0.0]}, log=False)
    assert multi._repr_html_()  # log path counts of unreachable tokens: mapped to 0
    view = viz.attention_heads(torch.eye(3).expand(1, 3, 3), ["a", "b", "c"], max_tokens=1)
    assert "last 1 tokens" in view.title  # max_tokens=-1 used to drop the first token instead


# --------------------------------------------------------------------------- per-head weights
def _uniform(n=4, layers=2, heads=2):
    base = torch.tril(torch.ones(n, n))
    return (base / base.sum(-1, keepdim=True)).expand(layers, heads, n, n).clone()


def _cancelling_negatives():
    """Head 0 has −0.15 at [3, 1] and head 1 at [3, 0]; their mean is a valid pattern."""
    p, d = _uniform(), torch.zeros(4, 4)
    d[3, 0], d[3, 1] = 0.4, -0.4
    p[:, 0] += d
    p[:, 1] -= d
    return p


def _unequal_rows():
    p = torch.eye(4).expand(2, 2, 4, 4).clone()
    p[:, 0] *= 1.5
    p[:, 1] *= 0.5
    return p


def _cancelling_upper():
    p = torch.eye(4).expand(2, 2, 4, 4).clone()
    p[:, 0, 0, :2] = torch.tensor([0.7, 0.3])
    p[:, 1, 0, :2] = torch.tensor([1.3, -0.3])
    return p


@pytest.mark.parametrize(
    "patterns, match",
    [
        (_cancelling_negatives(), "negative weight -0.15 at layer 0, head 0, query 3, key 1"),
        (_unequal_rows(), "layer 0, head 0, query 0 sums to 1.5"),
        (_cancelling_upper(), "layer 0, head 1, query 0, key 1"),
    ],
)
def test_attention_flow_checks_every_head_not_only_their_mean(patterns, match):
    assert bool(patterns.mean(1).min() >= 0)  # the mean alone is a valid pattern
    with refused(match, InvalidPatternError):
        attention_flow(patterns)


def test_attention_flow_nan_in_one_head_names_it():
    p = torch.eye(4).expand(2, 2, 4, 4).clone()
    p[1, 1, 2, 0] = math.nan
    with refused("nan at layer 1, head 1, query 2, key 0", InvalidPatternError):
        attention_flow(p)
    assert attention_flow(_uniform()).shape == (4,)  # valid per-head patterns still pass


def test_rollout_checks_every_head():
    from oversquash_lens import attention_rollout

    with pytest.raises(OversquashError, match="head 0"):
        attention_rollout(_cancelling_negatives())


def test_numpy_bools_are_flags_and_huge_sample_counts_are_refused(llama):
    import numpy as np

    from oversquash_lens import _validate, task_accuracy

    assert _validate.flag(np.True_, "progress") is True
    assert _validate.flag(np.bool_(False), "progress") is False
    with refused("n_samples=1000000000"):
        task_accuracy(llama, "count-bernoulli", [2], n_samples=10**9)


def test_a_model_without_weights_is_refused(llama):
    """A model whose weights are all ``meta`` tensors (shapes, no values) is refused by name
    before any forward, instead of PyTorch's "Cannot copy out of meta tensor"."""
    import copy

    import oversquash_lens as osl
    from oversquash_lens import UnsupportedModelError

    empty = copy.deepcopy(llama).to("meta")
    toks = torch.arange(3, 11)[None]
    for run in (
        lambda: osl.information_flow(empty, toks),
        lambda: osl.capture_residuals(empty, toks),
        lambda: osl.token_sensitivity(empty, toks),
    ):
        with pytest.raises(UnsupportedModelError, match="meta device"):
            run()
    osl.capture_residuals(llama, toks)  # the original still runs
