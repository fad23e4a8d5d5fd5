"""Everything the report measures on one model, in named, timed steps.

:func:`measure_model` runs the collapse curves, the over-squashing profile, the head scores,
the attention patterns of the head text and (when available) the information-flow routes, and
returns a :class:`ModelRun`. The profile's sensitivity is measured at the last layer only
(:func:`last_layer_sensitivity`, the depth the report shows): the same numbers as
``token_sensitivity(...).values[-1]`` with the same seed, at about 2/L of its cost (the
backward pass of depth ℓ runs through ℓ blocks; all depths cost L(L+1)/2 block-backwards).
"""

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import _tl
from ..errors import InvalidArgumentError
from ..flow import OversquashProfile, Sensitivity, attention_rollout, oversquashing_bound
from ..flow.profile import learned_sinks_of
from .config import COLLAPSE_TASKS, ReportConfig
from .names import registry_card

__all__ = [
    "ModelRun",
    "measure_model",
    "last_layer_sensitivity",
    "report_profile",
    "with_routes",
    "STEPS",
]

#: the named steps of one model, in order (the outer progress bar names each)
STEPS = ("collapse repeat", "collapse repeat-sep", "profile", "heads", "attention", "routes")
_CHUNK_BYTES = 512 << 20


@dataclass
class ModelRun:
    """One model's measurements (see :func:`measure_model`)."""

    name: str
    info: Any
    facts: dict[str, Any]
    lengths: list[int]
    skipped: list[int]
    curves: dict[str, Any] = field(default_factory=dict)
    profile: Any = None
    heads: Any = None
    head_tokens: list[str] = field(default_factory=list)
    patterns: Tensor | None = None
    routes_note: str = ""
    windows: tuple[int | None, ...] = ()  # per block: sliding window, None = global
    agreement: Any = None  # OversquashProfile.agreement(), filled by the findings
    timings: dict[str, float] = field(default_factory=dict)


def token_strings(model: Any, ids: Tensor) -> list[str]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [str(i) for i in ids.tolist()]
    return [tok.decode([i]) for i in ids.tolist()]


def fitting_lengths(model: Any, lengths: list[int], n_ctx: int) -> list[int]:
    """The lengths whose prompt pairs (both collapse tasks) fit in ``n_ctx``."""
    from ..tasks import task_pair

    def fits(n: int) -> bool:
        pairs = [task_pair(model, task, n) for task in COLLAPSE_TASKS]
        return all(max(len(p.base), len(p.extended)) <= n_ctx for p in pairs)

    kept = [n for n in lengths if fits(n)]
    if not kept:
        raise InvalidArgumentError(
            f"none of the report's lengths {list(lengths)} fits the model's n_ctx={n_ctx}"
        )
    return kept


def last_layer_sensitivity(
    model: Any,
    tokens: Any,
    *,
    target: int = -1,
    method: str = "estimate",
    n_probes: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> Sensitivity:
    """``token_sensitivity`` at the last layer only: ``values[-1]`` is ‖∂h_t^(L)/∂h_i^(0)‖_F
    (the same probes as ``token_sensitivity`` with this seed); the other rows are NaN (not
    measured)."""
    from .. import _validate

    info = _tl.model_info(model)
    toks = _tl.single_sequence(model, tokens, info)
    t = _validate.resolve_index(target, toks.shape[1], name="target")
    _validate.choice(method, "method", ("exact", "estimate"))
    run = toks[:, : t + 1]
    m, d, n_layers = run.shape[1], info.d_model, info.n_layers
    device, dtype = _tl.model_device(model), _tl.model_dtype(model)
    if method == "exact":
        cot, probes = torch.eye(d, dtype=dtype, device=device), None
    else:
        probes = _validate.integer(n_probes, "n_probes", minimum=1)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        full = torch.randn(n_layers, probes, d, generator=gen, dtype=torch.float64)
        cot = full[-1].to(device=device, dtype=dtype)
    chunk = max(1, _CHUNK_BYTES // (4 * m * (24 * d + 4 * info.n_heads * m)))
    squares = torch.zeros(m, dtype=torch.float64, device=device)
    name, last = _tl.resid_name(0), _tl.resid_name(n_layers)
    try:
        with torch.enable_grad(), _tl.preserved(model, freeze=True):
            leaf = _tl.capture(model, run, [name], stop_at_layer=1)[name].requires_grad_(True)
            kept: dict[str, Tensor] = {}

            def keep(x: Tensor, hook: Any) -> None:
                kept["out"] = x[0, t]

            hooks = [(name, lambda x, hook: leaf), (last, keep)]
            _tl.run_with_hooks(model, run, hooks, grad=True, freeze=True)
            starts = range(0, cot.shape[0], chunk)
            for s in tqdm(starts, desc="sensitivity (last layer)", disable=not progress,
                          leave=False):  # fmt: skip
                (grad,) = torch.autograd.grad(
                    kept["out"], leaf, grad_outputs=cot[s : s + chunk],
                    is_grads_batched=True, retain_graph=True,
                )  # fmt: skip
                squares += grad.double().square().sum((0, 1, 3))
    finally:
        _tl.release_graphs(model)
    if probes is not None:
        squares /= probes
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    values = torch.full((n_layers, toks.shape[1]), math.nan, dtype=out_dtype)
    values[-1] = 0.0
    values[-1, :m] = squares.sqrt().to(out_dtype).cpu()
    labels = tuple(token_strings(model, toks[0]))
    return Sensitivity(
        values=values,
        tokens=toks[0].cpu(),
        target=t,
        method=method,
        n_probes=probes,
        labels=labels,
        model_name=info.name,
    )


def report_profile(
    model: Any, tokens: Any, *, method: str, n_probes: int, progress: bool = False
) -> OversquashProfile:
    """``oversquash_profile`` (rollout, Theorem 5.1 bound with β from the residual norms, path
    counts) with the sensitivity of :func:`last_layer_sensitivity`; shown at the last layer.

    A copy of ``oversquash_profile``'s steps because that function measures the sensitivity at
    every depth (L(L+1)/2 block-backwards: ~150 s of a 30-layer report on 2 cores, against
    ~7 s here); tests/test_report.py checks the two tables are equal."""
    info = _tl.require_attention(model)
    toks = _tl.single_sequence(model, tokens, info)
    n_layers = info.n_layers
    names = [_tl.pattern_name(b) for b in range(n_layers)]
    names += [_tl.resid_name(b) for b in range(n_layers)]
    store = _tl.capture(model, toks, names)
    patterns = torch.stack([store[_tl.pattern_name(b)][0] for b in range(n_layers)])
    resid = torch.stack([store[_tl.resid_name(b)][0] for b in range(n_layers)]).double()
    if _tl.centres_before_norm(model):
        resid = resid - resid.mean(-1, keepdim=True)
    # As oversquash_profile: the norm divides by sqrt(mean(x²) + eps) (tests keep the two equal)
    beta = (resid.square().mean(-1) + _tl.norm_eps(model)).sqrt().cpu()
    sens = last_layer_sensitivity(model, toks, method=method, n_probes=n_probes, progress=progress)
    sinks = learned_sinks_of(model)
    return OversquashProfile(
        rollout=attention_rollout(patterns, target=-1, learned_sinks=sinks).cpu(),
        bound=oversquashing_bound(patterns, target=-1, beta=beta, learned_sinks=sinks).cpu(),
        beta=beta.clone(),
        sensitivity=sens,
        tokens=toks[0].cpu(),
        target=sens.target,
        layer=n_layers,
        labels=sens.labels,
        model_name=info.name,
    )


#: edge threshold of the routes column: 0 keeps every route (the totals sum to ~1)
ROUTE_TAU = 0.0


def with_routes(profile: OversquashProfile, model: Any, tokens: Tensor) -> tuple[Any, str]:
    """``profile`` with the information-flow routes toward its target (``routes`` column at
    τ = :data:`ROUTE_TAU`, their source totals computed once here), or unchanged with the
    reason when the installed ``oversquash_lens.flow`` or the architecture has none."""
    try:
        from ..flow.routes import information_flow
    except ImportError:
        return profile, "information-flow routes are not available in this installation"
    if "routes" not in {f.name for f in dataclasses.fields(profile)}:
        return profile, "this OversquashProfile has no routes column"
    try:
        routes = information_flow(model, tokens, target=profile.target)
        routes.source_totals(ROUTE_TAU)  # the walk is cached: later tables reuse it
    except Exception as exc:  # an unsupported architecture must not sink the whole report
        return profile, f"routes not computed: {type(exc).__name__}: {str(exc)[:160]}"
    return dataclasses.replace(profile, routes=routes, route_tau=ROUTE_TAU), ""


def measure_model(
    model: Any,
    name: str,
    config: ReportConfig,
    step: Callable[[str], None],
    *,
    progress: bool = False,
) -> ModelRun:
    """Run every measurement of the report on ``model``; ``step(name)`` is called before each
    named step (:data:`STEPS`) so the caller's progress bar can name it."""
    from ..collapse import collapse_curve
    from ..heads import classify_heads

    info = _tl.model_info(model)
    lengths = list(config.lengths)
    if config.default_grid:
        lengths = fitting_lengths(model, lengths, info.n_ctx)
    run = ModelRun(name, info, _facts(model, info, name), lengths, [])
    run.skipped = [n for n in config.lengths if n not in lengths]
    run.windows = tuple(_tl.attention_windows(model))

    def timed(label: str, fn: Callable[[], Any]) -> Any:
        step(label)
        start = time.perf_counter()
        out = fn()
        run.timings[label] = time.perf_counter() - start
        return out

    for task in COLLAPSE_TASKS:
        native = None if (config.native and task == "repeat") else False
        run.curves[task] = timed(
            f"collapse {task}",
            lambda task=task, native=native: collapse_curve(
                model, lengths, task=task, precisions=tuple(config.precisions),
                run_in_dtype=native, progress=progress,
            ),
        )  # fmt: skip
    copy_tokens = _tl.single_sequence(model, config.copy_prompt, info)
    run.profile = timed(
        "profile",
        lambda: report_profile(
            model, copy_tokens, method=config.sensitivity_method, n_probes=config.n_probes,
            progress=progress,
        ),
    )  # fmt: skip
    head_tokens = _tl.prepare_tokens(model, config.text, info)
    run.heads = timed(
        "heads",
        lambda: classify_heads(
            model, head_tokens, eps=config.head_eps, ablation=config.head_ablation,
            progress=progress,
        ),
    )  # fmt: skip
    run.head_tokens = token_strings(model, head_tokens[0])
    run.patterns = timed("attention", lambda: _tl.attention_patterns(model, head_tokens)[0])
    if config.routes:
        run.profile, run.routes_note = timed(
            "routes", lambda: with_routes(run.profile, model, copy_tokens)
        )
    else:
        run.routes_note = "routes skipped (--quick / ReportConfig(routes=False))"
    return run


def _facts(model: Any, info: Any, name: str) -> dict[str, Any]:
    """The model card: shape facts, the attention type per layer, and for a known real model
    (registry) its origin, licence and weights."""
    windows = _tl.attention_windows(model)
    local = [b for b, w in enumerate(windows) if w is not None]
    attention = "all global (full causal)"
    if local:
        sizes = sorted({w for w in windows if w is not None})
        attention = f"{len(local)} local (window {sizes}), global blocks " + str(
            [b for b, w in enumerate(windows) if w is None]
        )
    cfg = model.cfg
    arch = getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None)
    facts: dict[str, Any] = {
        "architecture": f"{arch or type(model).__name__} ({type(model).__name__})",
        "layers": info.n_layers,
        "heads (query / key-value)": f"{info.n_heads} / {info.n_kv_heads}",
        "d_model": info.d_model,
        "context (n_ctx)": info.n_ctx,
        "vocabulary": info.d_vocab,
        "positional encoding": info.positional,
        "attention": attention,
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "dtype": str(_tl.model_dtype(model)).replace("torch.", ""),
        "source": info.name,
    }
    card = registry_card(name)
    if card is not None:
        facts.update(origin=card.origin, license=card.license, weights=card.quantization)
    return facts
