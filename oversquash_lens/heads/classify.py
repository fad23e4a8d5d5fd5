"""Head classifier: diagonal, previous-token, BOS-sink and no-op heads (PAPER §4).

Per (layer, head) :func:`classify_heads` measures, averaged over the prompts given:

- attention patterns (query position 0 left out, where every head trivially attends to itself):
  ``diag_mass`` = mean_i α_ii and ``diag_min`` = min_i α_ii over i ≥ 1 (Round and Round, Def 5.1:
  *diagonal* if α_ii > 1−ε for all i, column ``is_diagonal``); ``prev_mass`` / ``prev_min`` the
  same for α_{i,i−1} (*previous-token*, ``is_previous``); ``first_mass`` = α_1 of Gu et al.:
  mean over queries 1 ≤ t < 64 of α_{t,0} (``is_sink`` when above ``sink_threshold``: 0.3 as in
  Gu et al.; Barbero et al. use 0.8); ``entropy`` = mean row entropy (nats);
  ``learned_sink_mass`` = mean over queries 1 ≤ t < 64 of 1 − Σ_j α_tj, the attention a learned
  sink logit (GPT-OSS) took: such a model's ``hook_pattern`` rows sum to less than 1, and that
  mass is reported here, never folded into ``first_mass`` (0 for a model without learned sinks;
  ``learned_sinks`` below, docs/science.md "Learned attention sinks");
- what the head writes: ``write_ratio`` = mean over positions i ≥ 1 of ‖z_h(i)·W_O[h]‖ /
  ‖resid_pre(i)‖ (the residual stream the head's output is added to), and ``delta_loss_zero`` /
  ``delta_loss_mean``: change of the mean next-token cross-entropy (nats) when the head's
  ``hook_z`` is replaced at positions ≥ 1 by zero / by its mean over the prompts' positions ≥ 1
  (position 0 is left alone: the head's output there is not its function, and every later token
  reads it);
- the OV circuit (Elhage et al. 2021): eigenvalues λ of W_V[h]·W_O[h] (with the pre-attention norm
  scale folded into W_V; grouped K/V heads repeated per query head): ``ov_copying`` = Σ Re λ /
  Σ |λ| in [−1, 1] (+1 copies, −1 erases) and ``ov_neg_fraction`` = Σ_{Re λ<0} |λ| / Σ |λ|.
  Only the norm's elementwise scale is folded; its centring and 1/rms are ignored.

Labels, first matching rule wins (thresholds are keyword options of :class:`HeadThresholds`):

1. *diagonal* heads: ``diag_mass ≥ 1−eps`` (or Def 5.1, ``diag_min > 1−eps``, with ``strict``):
   ``diagonal-noop`` if ``write_ratio < write_threshold`` and, when ablations were run, both
   ``|delta_loss|`` < ``ablation_threshold`` (a head that writes little but matters is not a
   no-op); else ``diagonal-eraser`` if ``ov_copying <
   −eraser_threshold``; else ``diagonal``;
2. ``bos-sink`` if ``first_mass ≥ sink_threshold``;
3. ``previous-token`` if ``prev_mass ≥ 1−eps`` (``prev_min > 1−eps`` with ``strict``);
4. ``mixing`` otherwise.
"""

from types import SimpleNamespace
from typing import Any

from jaxtyping import Float
from torch import Tensor

from .. import _tl, _validate
from .._tl.cache import resolve_learned_sinks
from .._tl.protocol import HookedModel
from ..errors import InvalidPatternError
from . import scores as hs
from .labels import LABELS, HeadThresholds, excess, label_heads
from .report import HeadReport

__all__ = [
    "LABELS",
    "HeadThresholds",
    "HeadReport",
    "classify_heads",
    "label_heads",
    "pattern_scores",
    "excess",
]


def pattern_scores(
    patterns: Float[Tensor, "*batch layer head_index query_pos key_pos"] | Any,
    *,
    sink_window: int = 64,
    learned_sinks: str = "auto",
) -> dict[str, Float[Tensor, "layer head_index"]]:
    """Pattern-only head scores (PAPER §4) from precomputed attention: ``diag_mass``,
    ``diag_min``, ``prev_mass``, ``prev_min``, ``first_mass``, ``entropy`` and
    ``learned_sink_mass`` (definitions in the module docstring), averaged over the batch
    (minima: minimum over the batch).

    Example:
        >>> _, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
        >>> pattern_scores(cache)["diag_mass"].shape  # [n_layers, n_heads]

    Args:
        patterns: ``[layer, head, query, key]`` or ``[batch, layer, head, query, key]`` causal,
            row-stochastic attention, or an ActivationCache holding ``hook_pattern`` entries.
        sink_window: queries 1 ≤ t < sink_window enter ``first_mass`` and
            ``learned_sink_mass`` (64, as Gu et al.).
        learned_sinks: rows summing to less than 1 (a learned sink logit took the rest):
            ``"keep"`` — scores of the rows as given, ``learned_sink_mass`` = 1 − Σ_j α_ij, the
            entropy that of the softmax with the sink; ``"renormalize"`` — scores of α / Σ_j α
            (``learned_sink_mass`` still measured); ``"auto"`` (default) — ``"keep"`` for an
            ActivationCache of a model with learned sinks, else rows must sum to 1. Rows above
            1 are refused in every mode.
    """
    sinks = resolve_learned_sinks(learned_sinks, patterns)
    if _tl.is_activation_cache(patterns):
        patterns = _tl.cache_patterns(patterns)
    if not isinstance(patterns, Tensor):
        raise InvalidPatternError(
            f"patterns={type(patterns).__name__} is neither a tensor nor an ActivationCache"
        )
    patterns = patterns.detach()
    hs.check_patterns(patterns, sinks=sinks)
    _check_window(sink_window)
    p = patterns if patterns.ndim == 5 else patterns.unsqueeze(0)
    b, n_layers, n_heads, n, _ = p.shape
    flat = p.reshape(b, n_layers * n_heads, n, n)
    st = hs.pattern_stats(flat, sink_window=sink_window, sinks=sinks)
    st = st.view(b, n_layers, n_heads, -1).double()
    out = {name: st[..., i].mean(0).float() for i, name in enumerate(hs.PATTERN_STATS)}
    out["diag_min"], out["prev_min"] = st[..., 1].amin(0).float(), st[..., 3].amin(0).float()
    return out


def classify_heads(
    model: HookedModel,
    tokens: Any,
    *,
    eps: float | None = None,
    min_excess: float = 0.5,
    sink_threshold: float = 0.8,
    write_threshold: float = 0.05,
    ablation_threshold: float = 0.01,
    eraser_threshold: float = 0.5,
    strict: bool = False,
    ablation: bool = True,
    fold_norm: bool = True,
    sink_window: int = 64,
    batch_size: int | None = None,
    progress: bool = True,
    learned_sinks: str = "auto",
) -> HeadReport:
    """Classify every attention head as ``diagonal-noop``, ``diagonal-eraser``, ``diagonal``,
    ``bos-sink``, ``previous-token`` or ``mixing`` (PAPER §4: Round and Round Def 5.1, Gu et
    al. sinks, circuits-framework OV eigenvalues; scores and rules in the module docstring).

    Example:
        >>> report = classify_heads(model, ["the cat sat on the mat", "1 2 3 4 5"])
        >>> report.counts()          # heads per label
        >>> report.flagged           # DataFrame of the non-mixing heads

    Args:
        model: a TransformerBridge or HookedTransformer (not modified).
        tokens: text, a list of texts (each run on its own, no padding), token ids ``[pos]`` or
            ``[batch, pos]``, or a list of id sequences of different lengths; ≥ 2 positions each.
        eps, min_excess, sink_threshold, write_threshold, ablation_threshold,
            eraser_threshold, strict: label thresholds, see :class:`HeadThresholds` (defaults:
            chance-relative, 0.5, 0.8, 0.05, 0.01 nats, 0.5; docs/science.md §4 justifies them).
        ablation: run the zero/mean ablations (2 · n_layers · n_heads ablated forward passes,
            batched, each starting at the head's layer); False leaves those columns NaN.
        fold_norm: fold the pre-attention norm's elementwise scale into W_V for the OV scores.
        sink_window: queries 1 ≤ t < sink_window enter ``first_mass`` (64, as Gu et al.).
        batch_size: most sequences per ablation forward pass (default: a ~512 MB budget).
        progress: show a progress bar over the ablation passes.
        learned_sinks: ``"auto"`` (default) reads the model: with learned sink logits
            (GPT-OSS) its patterns' rows sum to less than 1 and are scored as given, the rest
            reported as ``learned_sink_mass`` (``"keep"``); ``"renormalize"`` scores α / Σ_j α
            instead (``learned_sink_mass`` still reported); without learned sinks rows must
            sum to 1 (``learned_sink_mass`` 0). Every block's pattern is checked in the pass.

    Notes:
        Use prompts of a few dozen tokens: uniform attention already has ``first_mass`` =
        (H_n − 1)/(n − 1) (0.42 at n = 3, 0.29 at n = 6, 0.12 at n = 24; H_n harmonic), so on
        very short prompts mixing heads pass the 0.3 sink threshold. Ablations keep the
        residual entering every block for the prompts in memory (``n_layers · batch · pos ·
        d_model`` values); their cost is about ``n_heads · (n_layers + 1)`` forward passes
        (``benchmarks/heads.py``), so pass ``ablation=False`` for quick looks at big models.
    """
    thresholds = HeadThresholds(
        eps=eps,
        min_excess=min_excess,
        sink_threshold=sink_threshold,
        write_threshold=write_threshold,
        ablation_threshold=ablation_threshold,
        eraser_threshold=eraser_threshold,
        strict=strict,
    )
    _check_window(sink_window)
    if batch_size is not None:
        _validate.integer(batch_size, "batch_size", minimum=1)
    _validate.flag(ablation, "ablation")
    _validate.flag(fold_norm, "fold_norm")
    _validate.flag(progress, "progress")
    sinks = resolve_learned_sinks(learned_sinks, model)
    info = _tl.require_attention(model)
    groups = hs.token_groups(model, tokens, info)
    grids, facts = hs.measure(
        model,
        groups,
        info,
        sink_window=sink_window,
        ablation=ablation,
        fold_norm=fold_norm,
        batch_size=batch_size,
        progress=progress,
        sinks=sinks,
    )
    chance = hs.chance_levels([g.shape[1] for g in groups for _ in range(g.shape[0])],
                              sink_window=sink_window)  # fmt: skip
    labels = label_heads(SimpleNamespace(**grids, chance=chance), thresholds)
    return HeadReport(
        **grids,
        labels=labels,
        thresholds=thresholds,
        chance=chance,
        **facts,
        model_name=info.name,
        windows=tuple(_tl.attention_windows(model)),
        learned_sinks=sinks,
    )


def _check_window(sink_window: Any) -> None:
    _validate.integer(sink_window, "sink_window", minimum=2)
