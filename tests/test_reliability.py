"""Reliability: bad input is refused with a named OversquashError, and faults leave no trace.

1. A catalogue of bad inputs across the public API. Every case must raise the listed
   :class:`OversquashError` subclass and the message must quote the offending value.
2. Fault injection: an exception raised inside the forward pass (a raising PyTorch hook on a
   random block / attention / MLP module, firing on a random call) during every model-running
   entry point, on every fixture architecture, with the model in train or eval mode and with
   some or all parameters frozen. Afterwards no hook is left, parameters are bitwise equal
   (same dtype), modes and ``requires_grad`` flags are restored, no ``.grad`` and no autograd
   graph is left on the model — and the fault reached the caller (it was not swallowed).
"""

import contextlib
import functools
import io
import math
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import oversquash_lens as osl
from oversquash_lens import _tl, errors, synthetic, testing, viz
from oversquash_lens.glasses import adaptive_temperature
from oversquash_lens.heads import classify_heads, pattern_scores

from .conftest import ARCHS, assert_unchanged, build, state_snapshot

# --------------------------------------------------------------------------- inputs
TOKENS = torch.randint(4, 60, (9,), generator=torch.Generator().manual_seed(0))  # 9 positions


def _causal(layers: int = 2, heads: int = 2, n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(layers, heads, n, n, generator=g)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    return torch.softmax(scores.masked_fill(upper, -math.inf), -1)


def _with_nan() -> torch.Tensor:
    p = _causal()
    p[1, 0, 3, 1] = float("nan")
    return p


def _negative() -> torch.Tensor:
    row_sums_to_one = torch.tensor([[1.0, 0, 0], [1.5, -0.5, 0], [0.2, 0.3, 0.5]])
    return row_sums_to_one.expand(2, 2, 3, 3).contiguous()


@functools.cache
def _bert() -> torch.nn.Module:
    """A tiny random BERT (bidirectional encoder) booted the way a user would boot one."""
    import transformers as tf

    folder = tempfile.mkdtemp(prefix="oversquash_tiny_bert_")
    cfg = tf.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    tf.BertForMaskedLM(cfg).save_pretrained(folder)
    testing.tiny_tokenizer().save_pretrained(folder)
    with contextlib.redirect_stderr(io.StringIO()):
        model = _tl.bridge_class().boot_transformers(folder)
    model.eval()
    return model


@functools.cache
def _bidirectional_native() -> torch.nn.Module:
    return testing.tiny_native_model(attention_dir="bidirectional")


def gpt2() -> torch.nn.Module:
    return build("gpt2")


def _enter(ctx: Any) -> None:
    with ctx:
        pass


# --------------------------------------------------------------------------- catalogue
@dataclass(frozen=True)
class Case:
    """One bad input: ``call()`` must raise ``error`` with ``names`` in its message."""

    name: str
    call: Callable[[], Any]
    error: type[errors.OversquashError]
    names: str


Tok, Pat = errors.InvalidTokensError, errors.InvalidPatternError
Arg, Mod = errors.InvalidArgumentError, errors.UnsupportedModelError
CATALOGUE = [
    # tokens
    Case("empty token list", lambda: osl.capture_residuals(gpt2(), []), Tok, "empty"),
    Case("empty text", lambda: osl.capture_residuals(gpt2(), ""), Tok, "''"),
    Case("empty batch rows", lambda: osl.capture_residuals(gpt2(), torch.zeros(3, 0).long()),
         Tok, "(3, 0)"),
    Case("3-D tokens", lambda: osl.capture_residuals(gpt2(), torch.zeros(1, 2, 3).long()),
         Tok, "(1, 2, 3)"),
    Case("float tokens", lambda: osl.token_sensitivity(gpt2(), torch.rand(5)), Tok, "float32"),
    Case("bool tokens", lambda: osl.attention_rollout_from_model(gpt2(), torch.ones(4).bool()),
         Tok, "bool"),
    Case("ragged token lists", lambda: osl.capture_residuals(gpt2(), [[1, 2], [3]]),
         Tok, "[[1, 2], [3]]"),
    Case("None as tokens", lambda: osl.capture_residuals(gpt2(), None), Tok, "None"),
    Case("token id >= d_vocab", lambda: osl.capture_residuals(gpt2(), [5, 6, 64]), Tok, "64"),
    Case("negative token id", lambda: osl.oversquash_profile(gpt2(), [5, -1, 6]), Tok, "-1"),
    Case("longer than n_ctx", lambda: osl.capture_residuals(gpt2(), torch.ones(129).long()),
         Tok, "129"),
    Case("text without a tokenizer", lambda: osl.capture_residuals(build("native"), "1 2 3"),
         Tok, "'1 2 3'"),
    Case("two sequences for sensitivity",
         lambda: osl.token_sensitivity(gpt2(), torch.ones(2, 5).long()), Tok, "(2, 5)"),
    Case("one-position sequence for heads", lambda: classify_heads(gpt2(), [5], progress=False),
         Tok, "1 position"),
    # targets and positions
    Case("sensitivity target past the end", lambda: osl.token_sensitivity(gpt2(), TOKENS, target=9),
         Arg, "target=9"),
    Case("sensitivity target before the start",
         lambda: osl.token_sensitivity(gpt2(), TOKENS, target=-10), Arg, "target=-10"),
    Case("rollout-from-model target",
         lambda: osl.attention_rollout_from_model(gpt2(), TOKENS, target=9), Arg, "target=9"),
    Case("profile target", lambda: osl.oversquash_profile(gpt2(), TOKENS, target=100),
         Arg, "target=100"),
    Case("path_counts target", lambda: osl.path_counts(5, 3, target=5), Arg, "target=5"),
    Case("rollout target", lambda: osl.attention_rollout(_causal(), target=-6), Arg, "target=-6"),
    Case("capture positions", lambda: osl.capture_residuals(gpt2(), TOKENS, positions=[0, 20]),
         Arg, "positions=20"),
    Case("profile layer", lambda: osl.oversquash_profile(gpt2(), TOKENS, layer=3), Arg, "layer=3"),
    # attention patterns
    Case("pattern query != key", lambda: osl.attention_rollout(torch.rand(2, 2, 5, 4)),
         Pat, "(2, 2, 5, 4)"),
    Case("pattern of rank 2", lambda: osl.attention_rollout(torch.eye(5)), Pat, "(5, 5)"),
    Case("pattern batch of 2", lambda: osl.attention_rollout(torch.rand(2, 1, 1, 3, 3)),
         Pat, "(2, 1, 1, 3, 3)"),
    Case("pattern cache of 2 sequences",
         lambda: osl.attention_rollout({"blocks.0.attn.hook_pattern": torch.rand(2, 1, 3, 3)}),
         Pat, "2 sequences"),
    Case("pattern not row-stochastic", lambda: osl.attention_rollout(_causal() * 0.5),
         Pat, "sums to 0.5"),
    Case("pattern not causal", lambda: osl.attention_rollout(torch.full((2, 2, 5, 5), 0.2)),
         Pat, "puts 0.2 on key 1"),
    Case("pattern with NaN", lambda: osl.attention_rollout(_with_nan()), Pat, "nan"),
    Case("pattern with a negative weight", lambda: osl.oversquashing_bound(_negative()),
         Pat, "-0.5"),
    Case("integer pattern", lambda: osl.attention_rollout(torch.ones(1, 1, 2, 2).long()),
         Pat, "int64"),
    Case("heads pattern not causal", lambda: pattern_scores(torch.full((2, 2, 5, 5), 0.2)),
         Pat, "0.2"),
    Case("bound beta <= 0", lambda: osl.oversquashing_bound(_causal(), beta=-1.0), Arg, "-1.0"),
    Case("rollout residual > 1", lambda: osl.attention_rollout(_causal(), residual=2.0),
         Arg, "residual=2.0"),
    # options
    Case("n_probes = 0",
         lambda: osl.token_sensitivity(gpt2(), TOKENS, method="estimate", n_probes=0),
         Arg, "n_probes=0"),
    Case("n_probes < 0", lambda: osl.oversquash_profile(gpt2(), TOKENS, n_probes=-3),
         Arg, "n_probes=-3"),
    Case("unknown sensitivity method",
         lambda: osl.token_sensitivity(gpt2(), TOKENS, method="jacobian"), Arg, "'jacobian'"),
    Case("chunk_size = 0", lambda: osl.token_sensitivity(gpt2(), TOKENS, chunk_size=0),
         Arg, "chunk_size=0"),
    Case("unknown capture dtype", lambda: osl.capture_residuals(gpt2(), TOKENS, dtype="float8"),
         Arg, "'float8'"),
    Case("unknown precision", lambda: osl.collapse_curve(gpt2(), [4], precisions=("fp8",)),
         Arg, "'fp8'"),
    Case("unknown collapse task", lambda: osl.collapse_curve(gpt2(), [4], task="nope"),
         Arg, "'nope'"),
    Case("unknown accuracy task", lambda: osl.task_accuracy(gpt2(), "count-twos", [4]),
         Arg, "'count-twos'"),
    Case("unknown task option",
         lambda: osl.collapse_curve(gpt2(), [4], task_options={"colour": "red"}),
         Arg, "'colour'"),
    Case("unknown remedy",
         lambda: osl.task_accuracy(gpt2(), "count-ones", [4], remedies=("magic",)),
         Arg, "'magic'"),
    Case("collapse length beyond n_ctx", lambda: osl.collapse_curve(gpt2(), [8, 400]),
         Tok, "n=400"),
    Case("accuracy length beyond n_ctx", lambda: osl.task_accuracy(gpt2(), "copy-last", [300]),
         Tok, "n=300"),
    Case("collapse length 0", lambda: osl.collapse_curve(gpt2(), [0, 4]), Arg, "contains 0"),
    Case("path_counts n_tokens = 0", lambda: osl.path_counts(0, 3), Arg, "n_tokens=0"),
    Case("path_counts n_tokens < 0", lambda: osl.path_counts(-5, 3, log=True), Arg, "n_tokens=-5"),
    Case("path_counts n_layers < 0", lambda: osl.path_counts(5, -1), Arg, "n_layers=-1"),
    Case("classify_heads eps = 0", lambda: classify_heads(gpt2(), TOKENS, eps=0.0), Arg, "eps=0.0"),
    Case("classify_heads eps > 1", lambda: classify_heads(gpt2(), TOKENS, eps=1.5), Arg, "eps=1.5"),
    Case("classify_heads eps < 0", lambda: classify_heads(gpt2(), TOKENS, eps=-0.1),
         Arg, "eps=-0.1"),
    Case("adaptive temperature layer", lambda: _enter(adaptive_temperature(gpt2(), layers=[5])),
         Arg, "5"),
    Case("synthetic precision", lambda: synthetic.bf16_collision_n(dtype="float7"),
         Arg, "'float7'"),
    Case("viz length mismatch", lambda: viz.colored_tokens(["a", "b"], [1.0]), Arg, "1 values"),
    Case("load_model of a missing folder", lambda: osl.load_model("/nonexistent/osl"),
         errors.ModelLoadError, "'/nonexistent/osl'"),
    Case("load_model unknown device", lambda: osl.load_model("/nonexistent/osl", device="tpu"),
         Arg, "'tpu'"),
    Case("viz no tokens", lambda: viz.colored_tokens([], []), Arg, "tokens=[]"),
    Case("capture reversed slice", lambda: osl.capture_residuals(
        gpt2(), TOKENS, positions=slice(None, None, -1)), Arg, "slice(None, None, -1)"),
    Case("capture integer dtype",
         lambda: osl.capture_residuals(gpt2(), TOKENS, dtype=torch.int64), Arg, "torch.int64"),
    Case("text longer than n_ctx", lambda: osl.capture_residuals(
        gpt2(), " ".join(["cat"] * gpt2().cfg.n_ctx)), Tok, "n_ctx="),
    # models
    Case("BERT (bidirectional) model", lambda: osl.capture_residuals(_bert(), [5, 6, 7]),
         Mod, "'bidirectional'"),
    Case("BERT into token_sensitivity", lambda: osl.token_sensitivity(_bert(), [5, 6, 7]),
         Mod, "BertForMaskedLM"),
    Case("TL-native bidirectional model",
         lambda: osl.collapse_curve(_bidirectional_native(), [4]), Mod, "'bidirectional'"),
    Case("torch.nn.Linear as model",
         lambda: osl.capture_residuals(torch.nn.Linear(2, 2), TOKENS), Mod, "Linear"),
    Case("string as model", lambda: osl.token_sensitivity("gpt2", TOKENS), Mod, "'gpt2'"),
    Case("None as model", lambda: osl.attention_rollout_from_model(None, TOKENS), Mod, "None"),
    Case("Linear into classify_heads", lambda: classify_heads(torch.nn.Linear(2, 2), TOKENS),
         Mod, "Linear"),
    Case("Linear into adaptive_temperature",
         lambda: _enter(adaptive_temperature(torch.nn.Linear(2, 2))), Mod, "Linear"),
    Case("accuracy on a model without tokenizer",
         lambda: osl.task_accuracy(build("native"), "count-ones", [3]), Mod, "'native'"),
]  # fmt: skip


#: Values whose Python type contradicts the parameter's annotation. Under the suite's
#: jaxtyping+beartype instrumentation the type checker refuses them before our validation
#: runs (a TypeCheckError naming the parameter); in a plain run (no instrumentation, what
#: users get) our own validation must raise the OversquashError: checked in a subprocess.
TYPED_CATALOGUE = [
    Case("adaptive temperature threshold",
         lambda: _enter(adaptive_temperature(gpt2(), threshold="high")), Arg, "'high'"),
    Case("adaptive temperature coefficients",
         lambda: _enter(adaptive_temperature(gpt2(), coefficients=("a",))), Arg, "('a',)"),
    Case("adaptive temperature layers", lambda: _enter(adaptive_temperature(gpt2(), layers="0")),
         Arg, "'0'"),
    Case("accuracy lengths None", lambda: osl.task_accuracy(gpt2(), "count-ones", None),
         Arg, "lengths=None"),
    Case("accuracy lengths float", lambda: osl.task_accuracy(gpt2(), "count-ones", 2.5),
         Arg, "lengths=2.5"),
    Case("accuracy seed text", lambda: osl.task_accuracy(gpt2(), "count-ones", [3], seed="a"),
         Arg, "seed='a'"),
    Case("accuracy remedies None",
         lambda: osl.task_accuracy(gpt2(), "count-ones", [3], remedies=None), Arg, "None"),
    Case("collapse precisions None", lambda: osl.collapse_curve(gpt2(), [3], precisions=None),
         Arg, "precisions=None"),
    Case("sensitivity target float", lambda: osl.token_sensitivity(gpt2(), TOKENS, target=1.5),
         Arg, "target=1.5"),
    Case("path_counts float length", lambda: osl.path_counts(5.0, 3), Arg, "n_tokens=5.0"),
    Case("capture batch_size text", lambda: osl.capture_residuals(gpt2(), TOKENS, batch_size="2"),
         Arg, "'2'"),
    Case("load_model of an int", lambda: osl.load_model(5), Arg, "name_or_path=5"),
    Case("synthetic lengths int", lambda: synthetic.toy_collapse_gap(5), Arg, "lengths=5"),
]  # fmt: skip


def test_catalogue_is_large_and_named():
    names = [c.name for c in CATALOGUE + TYPED_CATALOGUE]
    assert len(CATALOGUE) >= 20
    assert len(set(names)) == len(names)


def _check(case: Case) -> str | None:
    """None if ``case`` raises its error naming the value, else what went wrong."""
    try:
        case.call()
    except errors.OversquashError as exc:
        if not isinstance(exc, case.error):
            return f"{case.name}: {type(exc).__name__} instead of {case.error.__name__}: {exc}"
        if case.names not in str(exc):
            return f"{case.name}: {case.names!r} not named in: {exc}"
        return None
    except Exception as exc:  # noqa: BLE001 - reported as a failure
        return f"{case.name}: raw {type(exc).__name__}: {str(exc)[:300]}"
    return f"{case.name}: no error raised"


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_bad_input_raises_a_named_error(case):
    problem = _check(case)
    assert problem is None, problem


@pytest.mark.parametrize("case", TYPED_CATALOGUE, ids=[c.name for c in TYPED_CATALOGUE])
def test_mistyped_input_is_refused(case):
    """In this (instrumented) process: refused by our validation or by the type checker."""
    from jaxtyping import TypeCheckError

    with pytest.raises((errors.OversquashError, TypeCheckError)) as info:
        case.call()
    if isinstance(info.value, errors.OversquashError):
        assert _check(case) is None, _check(case)


def test_mistyped_input_gets_a_named_error_without_instrumentation():
    """What a user sees: no type checker installed, so our own validation must answer."""
    code = (
        "import sys\n"
        "from tests.test_reliability import TYPED_CATALOGUE, _check, osl\n"
        "assert not hasattr(osl.path_counts, '__wrapped__'), 'instrumented'\n"
        "problems = [p for p in map(_check, TYPED_CATALOGUE) if p]\n"
        "print('\\n'.join(problems))\n"
        "sys.exit(1 if problems else 0)\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


# --------------------------------------------------------------------------- faults
class InjectedFault(Exception):
    """Raised from inside a forward pass (not a RuntimeError: nothing may swallow it)."""


def _fault_hook(countdown: list[int], *_: Any) -> None:
    countdown[0] -= 1
    if countdown[0] == 0:
        raise InjectedFault("injected fault")


def _entry_points() -> dict[str, Callable[[Any, torch.Tensor], Any]]:
    def adaptive(model, toks):
        with adaptive_temperature(model), torch.no_grad():
            model(toks[None])

    return {
        "capture_residuals": lambda m, t: osl.capture_residuals(m, t, positions=[0, -1]),
        "attention_rollout_from_model": osl.attention_rollout_from_model,
        "token_sensitivity exact": lambda m, t: osl.token_sensitivity(m, t, progress=False),
        "token_sensitivity estimate": lambda m, t: osl.token_sensitivity(
            m, t, method="estimate", n_probes=3, progress=False
        ),
        "oversquash_profile": lambda m, t: osl.oversquash_profile(m, t, n_probes=2),
        "collapse_curve": lambda m, t: osl.collapse_curve(
            m, [2, 4], precisions=("float32", "bfloat16"), run_in_dtype=True, progress=False
        ),
        "classify_heads": lambda m, t: classify_heads(m, t, progress=False),
        "task_accuracy": lambda m, t: osl.task_accuracy(
            m, "copy-last", [3], remedies=("none", "separators"), adaptive_temperature=True
        ),
        "adaptive_temperature": adaptive,
    }


def _hook_point_count(model: Any) -> int:
    """Hooks TransformerLens tracks on its hook points (besides the torch module hooks)."""
    points = getattr(model, "hook_dict", {}).values()
    return sum(len(getattr(h, "fwd_hooks", [])) + len(getattr(h, "bwd_hooks", [])) for h in points)


def _leftovers(model: Any, dtypes: dict[str, torch.dtype], points: int) -> list[str]:
    """What the guarantees forbid beyond :func:`assert_unchanged`: dtypes changed, gradients
    accumulated, hook-point hooks, autograd graphs kept on modules."""
    found = [f"dtype of {k}" for k, v in model.state_dict().items() if v.dtype != dtypes[k]]
    found += [f".grad on {name}" for name, p in model.named_parameters() if p.grad is not None]
    if _hook_point_count(model) != points:
        found.append(f"hook-point hooks {points} -> {_hook_point_count(model)}")
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                found.append(f"autograd graph on {name}.{key}")
    return found


def _random_state(model: Any, rng: random.Random) -> str:
    """Put the model in train or eval mode and freeze none, some or all parameters."""
    model.train(rng.random() < 0.4)
    params = list(model.parameters())
    freeze = rng.choice(["none", "some", "all"])
    for i, p in enumerate(params):
        p.requires_grad_(freeze == "none" or (freeze == "some" and i % 3 != 0))
    return f"{'train' if model.training else 'eval'}/frozen={freeze}"


N_FAULTS = 100  # faults that must actually fire (runs where none fired are checked too)


@dataclass
class FaultTally:
    runs: int = 0
    fired: int = 0
    propagated: int = 0
    leaks: list[str] = field(default_factory=list)


def _inject(model: Any, fn: Callable, toks: torch.Tensor, rng: random.Random) -> tuple:
    """Run ``fn(model, toks)`` with a raising hook on a random block part; return what fired,
    what the call raised and where the fault was put."""
    layer = rng.randrange(model.cfg.n_layers)
    part = rng.choice(["block", "attn", "mlp"])
    pre = rng.random() < 0.5
    countdown = [rng.choice([1, 1, 1, 2, 3])]  # fire on this call of the module
    module = model.blocks[layer] if part == "block" else getattr(model.blocks[layer], part)
    add = module.register_forward_pre_hook if pre else module.register_forward_hook
    handle = add(functools.partial(_fault_hook, countdown))  # ours: removed by us below
    raised = None
    try:
        fn(model, toks)
    except Exception as exc:  # noqa: BLE001 - the fault (or what wraps it) is expected
        raised = exc
    finally:
        handle.remove()
    return countdown[0] <= 0, raised, f"{part} {layer} {'pre' if pre else 'post'}"


def _caused_by_fault(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, InjectedFault):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def test_faults_inside_forward_leave_the_model_untouched():
    rng = random.Random(20240611)
    entries = list(_entry_points().items())
    models = {arch: build(arch) for arch in ARCHS}
    texts = [a for a in ARCHS if getattr(models[a], "tokenizer", None) is not None]
    originals = {
        a: ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
        for a, model in models.items()
    }
    for model in models.values():  # TL 4 bridges wire permanent capture hooks on first use
        with torch.no_grad():
            model(torch.tensor([[5, 6, 7]]))
    tally, seconds = FaultTally(), dict.fromkeys(dict(entries), 0.0)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        while tally.fired < N_FAULTS and tally.runs < 2 * N_FAULTS:
            entry, fn = entries[tally.runs % len(entries)]
            arch = rng.choice(texts if entry == "task_accuracy" else ARCHS)
            model = models[arch]
            gen = torch.Generator().manual_seed(tally.runs)
            toks = torch.randint(4, 60, (rng.randint(4, 7),), generator=gen)
            state = _random_state(model, rng)
            snapshot = state_snapshot(model)
            dtypes = {k: v.dtype for k, v in model.state_dict().items()}
            points = _hook_point_count(model)
            t0 = time.perf_counter()
            fired, raised, place = _inject(model, fn, toks, rng)
            seconds[entry] += time.perf_counter() - t0
            where = f"run {tally.runs}: {entry} on {arch}, fault at {place}, {state}"
            tally.runs += 1
            tally.fired += fired
            if fired and _caused_by_fault(raised):
                tally.propagated += 1
            elif fired:
                tally.leaks.append(f"{where}: the fault was swallowed ({raised!r})")
            elif raised is not None:
                tally.leaks.append(f"{where}: unexpected {raised!r}")
            try:
                assert_unchanged(model, snapshot)
            except AssertionError as exc:
                tally.leaks.append(f"{where}: {exc}")
            tally.leaks += [f"{where}: {bad}" for bad in _leftovers(model, dtypes, points)]
    finally:
        for arch, model in models.items():
            modes, grads = originals[arch]
            for m, mode in zip(model.modules(), modes):
                m.training = mode
            for p, flag in zip(model.parameters(), grads):
                p.requires_grad_(flag)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"\nfault injection: {tally.runs} runs ({len(entries)} entry points, {len(ARCHS)} archs) "
        f"in {wall:.1f} s ({cpu:.1f} s CPU); fault fired in {tally.fired}, reached the caller in "
        f"{tally.propagated}; leaks: {len(tally.leaks)}\nseconds per entry point: "
        + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
    )
    assert not tally.leaks, "\n".join(tally.leaks[:20])
    assert tally.fired == N_FAULTS, f"only {tally.fired} faults fired in {tally.runs} runs"
