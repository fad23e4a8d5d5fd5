"""The numbers behind the head classifier (PAPER §4), one function per kind of evidence.

- attention-pattern statistics per head (diagonal, previous-token and first-token mass, entropy,
  learned-sink mass), from a ``[batch, head, query, key]`` pattern, position 0 left out where
  it is trivial;
- the OV-circuit eigenvalue summary from the weights (Elhage et al. 2021);
- what a head writes: ‖z_h·W_O[h]‖ / ‖resid_pre‖ from one clean forward pass, and the change
  of next-token loss when its ``hook_z`` is zero- or mean-ablated, many heads per forward pass
  (the batch is replicated, each copy ablating one head, starting at the head's layer).

Everything here reads the model; nothing writes to it (hooks return new tensors).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import _tl
from .._tl.cache import sub_stochastic_hint
from .._tl.protocol import HookedModel
from ..errors import InvalidPatternError, InvalidTokensError

#: Per-head pattern statistics, in the order of the last axis of :func:`pattern_stats`.
PATTERN_STATS = ("diag_mass", "diag_min", "prev_mass", "prev_min", "first_mass", "entropy",
                 "learned_sink_mass")  # fmt: skip
_MEANS, _MINS = [0, 2, 4, 5, 6], [1, 3]
#: Rough activation budget (bytes) of one ablation forward pass when no batch size is given.
_ABLATION_BYTES = 512 << 20


# --------------------------------------------------------------------------- patterns
def pattern_stats(
    pattern: Float[Tensor, "batch head_index query_pos key_pos"],
    *,
    sink_window: int = 64,
    sinks: str = "none",
) -> Float[Tensor, "batch head_index 7"]:
    """Per sequence and head, in the order of :data:`PATTERN_STATS`: mean and min over queries
    i ≥ 1 of α_ii and over queries i ≥ 2 of α_{i,i−1} (NaN with 2 positions); mean over queries
    1 ≤ t < sink_window of α_{t,0}; mean over
    queries i ≥ 1 of the row entropy −Σ_j α_ij log α_ij (nats); mean over queries
    1 ≤ t < sink_window of the learned-sink mass s_t = 1 − Σ_j α_tj. Needs at least 2 positions.

    ``sinks`` (docs/science.md, "Learned attention sinks"): ``"none"`` — rows sum to 1 and
    ``s = 0``; ``"keep"`` — α as given, ``s = max(0, 1 − Σ_j α_tj)`` and the entropy is that of
    the whole softmax, sink included (``− s log s`` added); ``"renormalize"`` — every score but
    ``s`` from α / Σ_j α (``s`` still from the rows as given)."""
    p = pattern.float()
    total = p.sum(-1)
    if sinks == "none":
        sink = torch.zeros_like(total)
    else:
        sink = (1.0 - total).clamp(min=0.0)
    if sinks == "renormalize":
        p = p / total[..., None]
    diag = p.diagonal(dim1=-2, dim2=-1)[..., 1:]
    # α_{i,i−1} from query 2 on: query 1's previous token is the first token, so counting it
    # would call sink attention previous-token attention (docs/science.md §4).
    prev = p.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:]
    if prev.shape[-1] == 0:  # 2 positions: no query has a previous token other than the first
        prev = torch.full_like(diag, float("nan"))
    first = p[..., 1:sink_window, 0]
    entropy = -torch.special.xlogy(p[..., 1:, :], p[..., 1:, :]).sum(-1)
    if sinks == "keep":
        entropy = entropy - torch.special.xlogy(sink[..., 1:], sink[..., 1:])
    return torch.stack(
        [
            diag.mean(-1),
            diag.amin(-1),
            prev.mean(-1),
            prev.amin(-1),
            first.mean(-1),
            entropy.mean(-1),
            sink[..., 1:sink_window].mean(-1),
        ],
        dim=-1,
    )


def chance_levels(lengths: list[int], *, sink_window: int = 64) -> dict[str, float]:
    """What ``diag_mass``, ``prev_mass`` and ``first_mass`` are for *uniform* causal attention
    (every query i spreads 1/(i+1) over its keys) on sequences of these lengths, averaged over
    the sequences as the scores are: the level a score must rise above to mean anything
    (docs/science.md §4). ``diag``: mean_{1≤i<n} 1/(i+1); ``prev``: mean_{2≤i<n} 1/(i+1);
    ``first``: mean_{1≤t<min(n, sink_window)} 1/(t+1)."""

    def mean_inverse(lo: int, hi: int) -> float:
        return sum(1.0 / (i + 1) for i in range(lo, hi)) / (hi - lo) if hi > lo else float("nan")

    out = {"diag": 0.0, "prev": 0.0, "first": 0.0}
    for n in lengths:
        out["diag"] += mean_inverse(1, n)
        out["prev"] += mean_inverse(2, n)
        out["first"] += mean_inverse(1, min(n, sink_window))
    return {k: v / len(lengths) for k, v in out.items()}


def check_patterns(
    patterns: Tensor,
    *,
    tol: float = 1e-3,
    sinks: str = "none",
    axes: tuple[str, ...] | None = None,
    prefix: str = "",
) -> None:
    """Raise :class:`InvalidPatternError` unless ``patterns [..., query, key]`` are finite,
    non-negative, causal and row-stochastic, with at least 2 positions. With ``sinks="keep"``
    or ``"renormalize"`` rows may sum to less than 1 (the rest is a learned sink's mass), never
    to more; ``"renormalize"`` also needs some mass on a key in every row. ``axes`` names the
    leading axes in error messages (default ``[sequence,] layer, head, query``), ``prefix``
    comes before the location (e.g. ``"block 3, "``). The tolerance is at least 4·eps of the
    patterns' dtype (half-precision patterns round each weight)."""
    shape = tuple(patterns.shape)
    if patterns.ndim not in (4, 5) or shape[-1] != shape[-2] or shape[-1] < 2 or 0 in shape:
        raise InvalidPatternError(
            f"patterns of shape {shape} must be [layer, head, query, key] or [batch, layer, head, "
            "query, key] with query == key >= 2"
        )
    if not patterns.is_floating_point():
        raise InvalidPatternError(f"patterns must be floating point, got dtype {patterns.dtype}")
    p = patterns.float()
    if not torch.isfinite(p).all():
        raise InvalidPatternError("patterns contain NaN or inf")
    if p.amin() < -tol:
        raise InvalidPatternError(f"patterns contain a negative weight {p.amin().item():.3g}")
    upper = torch.triu(torch.ones(shape[-2:], dtype=torch.bool, device=p.device), diagonal=1)
    leak = p.masked_fill(~upper, 0).amax()
    if leak > tol:
        raise InvalidPatternError(
            f"patterns are not causal: weight {leak.item():.3g} on a future key"
        )
    tol = max(tol, 4 * torch.finfo(patterns.dtype).eps)
    sums = p.sum(-1)
    if axes is None:
        axes = ("sequence",) * (patterns.ndim == 5) + ("layer", "head", "query")

    def where(index: Tensor) -> str:
        return prefix + ", ".join(f"{a} {int(i)}" for a, i in zip(axes, index.tolist()))

    high = sums.amax()
    if high > 1 + tol:
        idx = (sums == high).nonzero()[0]
        expected = f"1 ± {tol:.1g}" if sinks == "none" else f"<= 1 + {tol:.1g}"
        raise InvalidPatternError(
            f"pattern rows do not sum to 1: {where(idx)} sums to {high.item():.6g} > 1 "
            f"(expected {expected}); pass post-softmax attention"
        )
    low = sums.amin()
    if sinks == "none" and low < 1 - tol:
        idx = (sums == low).nonzero()[0]
        raise InvalidPatternError(
            f"pattern rows do not sum to 1: {where(idx)} sums to {sub_stochastic_hint(low.item())}"
        )
    if sinks == "renormalize" and low <= 0:
        idx = (sums == low).nonzero()[0]
        raise InvalidPatternError(
            f"{where(idx)} sums to {low.item():.6g}: no mass on any key (all of it on the learned "
            "sink), so learned_sinks='renormalize' cannot renormalise it; use learned_sinks='keep'"
        )


# --------------------------------------------------------------------------- weights
def ov_scores(
    model: HookedModel, n_layers: int, *, fold_norm: bool = True
) -> tuple[Float[Tensor, "layer head_index"], Float[Tensor, "layer head_index"], bool]:
    """``(ov_copying, ov_neg_fraction, folded)`` per head from the eigenvalues λ of the OV circuit
    W_V[h]·W_O[h] (computed as the d_head × d_head matrix W_O[h]·W_V[h], same nonzero spectrum):
    ``Σ Re λ / Σ |λ|`` (+1 copies, −1 erases) and ``Σ_{Re λ<0} |λ| / Σ |λ|``. With ``fold_norm``
    the pre-attention norm's elementwise scale is folded into W_V (``folded`` says whether one
    was found). NaN for a head whose OV circuit is exactly zero."""
    copying, negative, folded = [], [], False
    for block in range(n_layers):
        wv = _tl.w_v(model, block).double().cpu()
        scale = _tl.ln1_scale(model, block) if fold_norm else None
        if scale is not None:
            wv = wv * scale.double().cpu()[None, :, None]
            folded = True
        lam = torch.linalg.eigvals(_tl.w_o(model, block).double().cpu() @ wv)
        size = lam.abs()
        total = size.sum(-1)
        copying.append(lam.real.sum(-1) / total)
        negative.append((size * (lam.real < 0)).sum(-1) / total)
    return torch.stack(copying).float(), torch.stack(negative).float(), folded


# --------------------------------------------------------------------------- forward passes
def token_groups(
    model: HookedModel, tokens: Any, info: _tl.ModelInfo
) -> list[Int[Tensor, "batch pos"]]:
    """Token batches of equal length: a list of texts or of id sequences is split per item
    (no padding) and regrouped by length; each sequence needs at least 2 positions."""
    items = [tokens]
    if isinstance(tokens, (list, tuple)) and tokens:
        if all(isinstance(t, (str, list, tuple, Tensor)) for t in tokens):
            items = list(tokens)
    by_length: dict[int, list[Tensor]] = {}
    for part in (_tl.prepare_tokens(model, t, info) for t in items):
        if part.shape[1] < 2:
            raise InvalidTokensError(
                f"tokens hold a sequence of {part.shape[1]} position(s); head scores need >= 2 "
                "(query position 0 only attends to itself)"
            )
        by_length.setdefault(part.shape[1], []).append(part)
    return [torch.cat(group) for group in by_length.values()]


def measure(
    model: HookedModel,
    groups: list[Tensor],
    info: _tl.ModelInfo,
    *,
    sink_window: int,
    ablation: bool,
    fold_norm: bool,
    batch_size: int | None,
    progress: bool,
    sinks: str = "none",
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every ``[layer, head]`` score grid of the report (ablation grids NaN when skipped), and
    the facts ``clean_loss``, ``n_sequences``, ``n_tokens``, ``norm_folded``."""
    totals = Totals(info.n_layers, info.n_heads, info.d_head)
    resid = [
        clean_pass(model, g, totals, sink_window=sink_window, keep_resid=ablation, sinks=sinks)
        for g in groups
    ]
    n_seq = totals.n_seq
    stats = totals.stats.clone()
    stats[..., _MEANS] /= n_seq
    shape = (info.n_layers, info.n_heads)
    deltas = torch.full((2, *shape), float("nan"), dtype=torch.float64)
    if ablation:
        values = torch.zeros(2, *shape, info.d_head, dtype=torch.float64)
        values[1] = totals.z_sum / totals.n_z  # [0]: zero ablation, [1]: mean ablation
        values = values.to(_tl.model_device(model))
        copies = [copies_per_pass(info, g.shape[0], g.shape[1], batch_size) for g in groups]
        n_passes = sum(info.n_layers * -(-2 * info.n_heads // c) for c in copies)
        sums = torch.zeros(2, *shape, dtype=torch.float64)
        resume = _tl.resumes_exactly(model, groups[0], resid[0])
        with tqdm(total=n_passes, desc="ablating heads", disable=not progress, leave=False) as bar:
            for g, r, c in zip(groups, resid, copies):
                ablation_pass(model, g, r, values, sums, copies=c, bar=bar, resume=resume)
        deltas = (sums - totals.loss) / n_seq
    ov_copying, ov_neg, folded = ov_scores(model, info.n_layers, fold_norm=fold_norm)
    grids = {name: stats[..., i].float() for i, name in enumerate(PATTERN_STATS)}
    grids |= {
        "write_ratio": (totals.write / n_seq).float(),
        "delta_loss_zero": deltas[0].float(),
        "delta_loss_mean": deltas[1].float(),
        "ov_copying": ov_copying,
        "ov_neg_fraction": ov_neg,
    }
    facts = {
        "clean_loss": totals.loss / n_seq,
        "n_sequences": n_seq,
        "n_tokens": sum(g.numel() for g in groups),
        "norm_folded": folded,
    }
    return grids, facts


@dataclass
class Totals:
    """Sums over sequences (and positions for ``z_sum``); divided by counts at the end."""

    n_layers: int
    n_heads: int
    d_head: int
    stats: Tensor = field(init=False)  # [layer, head, 6]: sums, except min columns (minima)
    write: Tensor = field(init=False)  # [layer, head] sum over sequences of mean ratio
    z_sum: Tensor = field(init=False)  # [layer, head, d_head] sum over sequences and pos >= 1
    n_seq: int = 0
    n_z: int = 0
    loss: float = 0.0

    def __post_init__(self) -> None:
        shape = (self.n_layers, self.n_heads)
        self.stats = torch.zeros(*shape, len(PATTERN_STATS), dtype=torch.float64)
        self.stats[..., _MINS] = float("inf")
        self.write = torch.zeros(shape, dtype=torch.float64)
        self.z_sum = torch.zeros(*shape, self.d_head, dtype=torch.float64)


def sequence_loss(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, " batch"]:
    """Mean next-token cross-entropy of each sequence (positions 0..n−2 predict 1..n−1)."""
    b, n = tokens.shape
    ce = F.cross_entropy(
        logits[:, :-1].float().reshape(b * (n - 1), -1), tokens[:, 1:].reshape(-1), reduction="none"
    )
    return ce.view(b, n - 1).mean(1)


def clean_pass(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    totals: Totals,
    *,
    sink_window: int,
    keep_resid: bool,
    sinks: str = "none",
) -> list[Tensor]:
    """One clean forward pass: check every block's pattern (:func:`check_patterns` with
    ``sinks``), add pattern statistics, write ratios, z sums and the loss to ``totals``; return
    the residual entering every block when ``keep_resid`` (else [])."""
    n_layers = totals.n_layers
    grams = [(w := _tl.w_o(model, b).float()) @ w.transpose(1, 2) for b in range(n_layers)]
    resid_norm: dict[int, Tensor] = {}
    write_norm: dict[int, Tensor] = {}
    resid: dict[int, Tensor] = {}

    def on_pattern(block: int) -> Callable[..., None]:
        def hook(x: Tensor, hook: Any) -> None:
            pattern = x.detach()
            axes = ("sequence", "head", "query")
            check_patterns(pattern, sinks=sinks, axes=axes, prefix=f"block {block}, ")
            st = pattern_stats(pattern, sink_window=sink_window, sinks=sinks).double().cpu()
            t = totals.stats[block]
            t[..., _MEANS] += st[..., _MEANS].sum(0)
            t[..., _MINS] = torch.minimum(t[..., _MINS], st[..., _MINS].amin(0))

        return hook

    def on_z(block: int) -> Callable[..., None]:
        def hook(z: Tensor, hook: Any) -> None:
            zf = z.detach().float()
            sq = torch.einsum("bphd,hde,bphe->bph", zf, grams[block], zf)
            write_norm[block] = sq.clamp_min(0).sqrt()
            totals.z_sum[block] += zf[:, 1:].sum((0, 1)).double().cpu()

        return hook

    def on_resid(block: int) -> Callable[..., None]:
        def hook(x: Tensor, hook: Any) -> None:
            resid_norm[block] = x.detach().float().norm(dim=-1)
            if keep_resid:
                resid[block] = x.detach().clone()

        return hook

    hooks = []
    for block in range(n_layers):
        hooks += [
            (_tl.pattern_name(block), on_pattern(block)),
            (_tl.z_name(block), on_z(block)),
            (_tl.resid_pre_name(block), on_resid(block)),
        ]
    logits = _tl.run_with_hooks(model, tokens, hooks)
    for block in range(n_layers):
        ratio = write_norm[block] / resid_norm[block].clamp_min(1e-30)[..., None]
        totals.write[block] += ratio[:, 1:].mean(1).sum(0).double().cpu()
    totals.loss += float(sequence_loss(logits, tokens).sum())
    totals.n_seq += tokens.shape[0]
    totals.n_z += tokens.shape[0] * (tokens.shape[1] - 1)
    return [resid[b] for b in range(n_layers)] if keep_resid else []


def copies_per_pass(info: _tl.ModelInfo, batch: int, n: int, batch_size: int | None) -> int:
    """How many ablated copies of a ``[batch, n]`` token batch one forward pass runs."""
    if batch_size is not None:
        return max(1, batch_size // batch)
    per_seq = 4 * n * (2 * info.d_vocab + 12 * info.d_model + 2 * info.n_heads * n)
    return max(1, _ABLATION_BYTES // (per_seq * batch))


def ablation_pass(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    resid: list[Tensor],
    values: Float[Tensor, "mode layer head_index d_head"],
    deltas: Float[Tensor, "mode layer head_index"],
    *,
    copies: int,
    bar: Any,
    resume: bool = True,
) -> None:
    """Add, per (mode, layer, head), the sum over sequences of the loss after replacing the
    head's ``hook_z`` at positions ≥ 1 by ``values[mode, layer, head]`` to ``deltas``. Each
    forward pass starts at one layer (at the embedding when not ``resume``: see
    :func:`_tl.resumes_exactly`) and runs ``copies`` replicated batches, one head each."""
    b, n = tokens.shape
    n_modes, n_layers, n_heads, _ = values.shape
    for block in range(n_layers):
        tasks = [(m, h) for h in range(n_heads) for m in range(n_modes)]
        for start in range(0, len(tasks), copies):
            chunk = tasks[start : start + copies]
            k = len(chunk)
            modes = torch.tensor([m for m, _ in chunk])
            heads = torch.tensor([h for _, h in chunk])
            repl = values[modes, block, heads]
            hook = _replace_z(k, heads.to(resid[block].device), repl.to(resid[block].device))
            logits = _tl.run_from_layer(
                model,
                resid[block].repeat(k, 1, 1),
                block if resume else 0,
                [(_tl.z_name(block), hook)],
                tokens=tokens.repeat(k, 1),
            )
            loss = sequence_loss(logits, tokens.repeat(k, 1)).view(k, b).sum(1).double().cpu()
            deltas[modes, block, heads] += loss
            bar.update(1)


def _replace_z(k: int, heads: Tensor, repl: Tensor) -> Callable[..., Tensor]:
    """Hook: in copy c of the replicated batch set z[:, 1:, heads[c]] = repl[c]."""
    copy = torch.arange(k, device=heads.device)

    def hook(z: Tensor, hook: Any) -> Tensor:
        out = z.clone(memory_format=torch.contiguous_format)
        view = out.view(k, -1, *out.shape[1:])
        view[copy, :, 1:, heads] = repl[:, None, None, :].to(out.dtype)
        return out

    return hook
