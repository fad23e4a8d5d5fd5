"""The HTML report: over-squashing at a glance for one model and a few default prompts.

Sections: model card; representational collapse (repeated ones with and without separators,
crossing lengths per precision); causal paths vs rollout vs the Theorem 5.1 bound vs measured
Jacobian sensitivity on a copy prompt; the head table with flagged heads; attention views.
Every section is measured when the report is built — nothing is precomputed.
"""

import html
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import _tl, viz
from ._display import frame_html
from .errors import InvalidArgumentError

__all__ = ["ReportConfig", "build_report", "DEFAULT_TEXT", "DEFAULT_COPY_PROMPT"]

DEFAULT_TEXT = (
    "The quick brown fox jumps over the lazy dog. Researchers measure how information flows "
    "through the layers of a language model, and why the last token sometimes cannot see "
    "the first one."
)
DEFAULT_COPY_PROMPT = (
    "What is the last digit in this sequence? 3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3 2 3 8 4 6 2 6 4 "
    "3 3 8 3 2 7 9 5. Answer:"
)


DEFAULT_LENGTHS = (8, 16, 32, 64, 128, 256, 512)
_COLLAPSE_TASKS = ("repeat", "repeat-sep")


@dataclass(frozen=True)
class ReportConfig:
    """What the report measures; defaults keep the embedded model's report to a few minutes."""

    #: n for the collapse sections; the default grid is cut to what fits the model's n_ctx,
    #: lengths you choose are used as given (one that does not fit raises InvalidTokensError).
    lengths: Sequence[int] = DEFAULT_LENGTHS
    precisions: Sequence[str] = ("float32", "bfloat16", "float16")
    copy_prompt: str = DEFAULT_COPY_PROMPT
    text: str = DEFAULT_TEXT
    sensitivity_method: str = "estimate"
    n_probes: int = 16
    head_eps: float = 0.1
    head_ablation: bool = False  # 30-layer ablations take many minutes on a 2-core CPU
    max_attention_views: int = 6
    timings: dict[str, float] = field(default_factory=dict)


def _section(title: str, note: str = "") -> str:
    text = f"<h2>{html.escape(title)}</h2>"
    return text + (f"<p class='note'>{note}</p>" if note else "")


def _timed(config: ReportConfig, name: str, fn: Callable[[], Any], bar: Any) -> Any:
    start = time.perf_counter()
    out = fn()
    config.timings[name] = time.perf_counter() - start
    bar.update(1)
    return out


def _token_strings(model: Any, tokens: Any) -> list[str]:
    tok = getattr(model, "tokenizer", None)
    ids = tokens[0].tolist()
    if tok is None:
        return [str(i) for i in ids]
    return [tok.decode([i]) for i in ids]


def build_report(
    model: Any | None = None,
    path: str | Path = "out/report.html",
    *,
    config: ReportConfig | None = None,
    progress: bool = True,
) -> Path:
    """Measure every section on ``model`` (default: the embedded SmolLM2-135M-Instruct) and
    write one self-contained HTML file (renders offline). Returns the path."""
    from .collapse import collapse_curve
    from .flow import oversquash_profile
    from .heads import classify_heads
    from .models import load_model

    config = config or ReportConfig()
    start = time.perf_counter()
    bar = tqdm(total=6, desc="report", disable=not progress)
    embedded = model is None
    if embedded:
        model = _timed(config, "load model", load_model, bar)
    else:
        bar.update(1)
    info = _tl.model_info(model)
    lengths = list(config.lengths)
    if tuple(lengths) == DEFAULT_LENGTHS:
        lengths = _fitting_lengths(model, lengths, info.n_ctx)

    title = "SmolLM2-135M-Instruct (embedded default model)" if embedded else info.name
    items: list[Any] = [f"<h1>oversquash_lens report: {html.escape(title)}</h1>"]
    items.append(_model_card(model, info, embedded))

    # --- representational collapse (PAPER §2) ------------------------------------------
    curves = {}
    for task in _COLLAPSE_TASKS:
        curves[task] = _timed(
            config,
            f"collapse {task}",
            lambda task=task: collapse_curve(
                model, lengths, task=task, precisions=tuple(config.precisions), progress=False
            ),
            bar,
        )
    items.append(
        _section(
            "Representational collapse",
            "Gap between the last-token residuals of a sequence of n ones and the same "
            "sequence with one more one (PAPER §2, Thm 4.2), per precision. "
            "'repeat-sep' puts a comma every 3rd item (the paper's 'glasses')."
            + _skipped_text(config.lengths, lengths, info.n_ctx),
        )
    )
    rows = []
    for task, curve in curves.items():
        for precision in config.precisions:
            rows.append(
                {
                    "task": task,
                    "precision": precision,
                    "crossing length (last layer)": _crossing_text(
                        curve.crossing_length(precision), curve.lengths
                    ),
                }
            )
    items.append(frame_html("Crossing lengths (rounded fp32 states)", pd.DataFrame(rows)))
    for task, curve in curves.items():
        fig = curve.plot()
        fig.update_layout(title=f"Collapse curve: {task}")
        items.append(fig)

    # --- over-squashing profile (PAPER §3, §5) -----------------------------------------
    tokens = _tl.prepare_tokens(model, config.copy_prompt, info)
    profile = _timed(
        config,
        "over-squashing profile",
        lambda: oversquash_profile(
            model, tokens, method=config.sensitivity_method, n_probes=config.n_probes
        ),
        bar,
    )
    items.append(
        _section(
            "Over-squashing: paths, rollout, bound and measured sensitivity",
            "Toward the last token of a copy prompt. Path counts (log) grow toward early tokens "
            "(Thm 5.1); rollout and the bound use the model's real attention; sensitivity is the "
            "measured Jacobian norm ‖∂h_n/∂h_i^(0)‖ at the last layer.",
        )
    )
    frame = profile.to_dataframe()
    measures = {
        c: frame[c].to_numpy()
        for c in frame.columns
        if c not in ("pos", "token") and pd.api.types.is_numeric_dtype(frame[c])
    }
    items.append(
        viz.colored_tokens_multi(
            _token_strings(model, tokens), measures, title="Per-token measures (switchable)"
        )
    )
    items.append(frame_html("Spearman correlation between measures", profile.correlations()))
    items.append(profile.plot())

    # --- heads (PAPER §4) ----------------------------------------------------------------
    head_tokens = _tl.prepare_tokens(model, config.text, info)
    report = _timed(
        config,
        "head classification",
        lambda: classify_heads(
            model, head_tokens, eps=config.head_eps, ablation=config.head_ablation
        ),
        bar,
    )
    items.append(_section("Attention heads", "Diagonal, previous-token, BOS-sink and no-op heads."))
    items.append(report)
    flagged = report.flagged
    if len(flagged):
        patterns = _tl.attention_patterns(model, head_tokens)[0]
        chosen = flagged.head(config.max_attention_views)
        layers = torch.as_tensor(chosen["block"].tolist(), dtype=torch.long)
        heads = torch.as_tensor(chosen["head"].tolist(), dtype=torch.long)
        attn = patterns[layers, heads]
        names = [f"L{r.block}H{r.head} {r.label}" for r in chosen.itertuples()]
        items.append(
            viz.attention_heads(
                attn,
                _token_strings(model, head_tokens),
                head_names=names,
                title="Flagged heads",
            )
        )
    config.timings["total"] = time.perf_counter() - start
    timing = pd.DataFrame({"seconds": config.timings}).round(2)
    items.append(frame_html("Timings (this run)", timing))
    bar.update(1)
    bar.close()
    return viz.save_html(items, path, title=f"oversquash_lens: {info.name}")


def _model_card(model: Any, info: _tl.ModelInfo, embedded: bool) -> str:
    facts = {
        "name": info.name,
        "family": info.family,
        "layers": info.n_layers,
        "heads (query / key-value)": f"{info.n_heads} / {info.n_kv_heads}",
        "d_model": info.d_model,
        "context (n_ctx)": info.n_ctx,
        "vocabulary": info.d_vocab,
        "positional encoding": info.positional,
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "dtype": str(_tl.model_dtype(model)),
    }
    if embedded:
        from .models.embedded import embedded_model_card

        facts.update({f"card: {k}": v for k, v in embedded_model_card().items()})
    frame = pd.DataFrame({"value": {k: str(v) for k, v in facts.items()}})
    return _section("Model") + frame.to_html()


def _fitting_lengths(model: Any, lengths: Sequence[int], n_ctx: int) -> list[int]:
    """The lengths whose prompt pairs (every collapse task of the report) fit in ``n_ctx``."""
    from .tasks import task_pair

    def fits(n: int) -> bool:
        pairs = [task_pair(model, task, n) for task in _COLLAPSE_TASKS]
        return all(max(len(p.base), len(p.extended)) <= n_ctx for p in pairs)

    kept = [n for n in lengths if fits(n)]
    if not kept:
        raise InvalidArgumentError(
            f"none of the report's lengths {list(lengths)} fits the model's n_ctx={n_ctx}"
        )
    return kept


def _skipped_text(asked: Sequence[int], used: Sequence[int], n_ctx: int) -> str:
    skipped = [n for n in asked if n not in used]
    if not skipped:
        return ""
    return f" Lengths {skipped} are skipped: their prompts do not fit the model's n_ctx={n_ctx}."


def _crossing_text(length: int | None, lengths: Sequence[int]) -> str:
    """A crossing length for display; ``None`` means no collapse anywhere in the grid."""
    return f"n = {length}" if length is not None else f"none for n ≤ {max(lengths)}"
