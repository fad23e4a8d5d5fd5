"""Task accuracy harness: counting and copying with and without remedies (docs/science.md §6).

``task_accuracy`` builds prompts of each length (``oversquash_lens.tasks``), decodes the
model's greedy answer and compares it with the ground truth: the paper's observation is that
accuracy falls with length (collapse, §2) and that separators, hints, interleaving and
repeating the final element ("glasses") can recover some of it; adaptive temperature is the
other glasses (``oversquash_lens.glasses``).

The predicted answer is the first integer in the decoded greedy continuation (answers are
counts or digits), so ``" 12"``, ``"12."`` and ``"12\\n"`` all read as 12.
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import _tl, _validate
from .._display import frame_html
from .._sweep import interrupted
from .._tl.protocol import HookedModel
from ..errors import InvalidArgumentError, InvalidTokensError, UnsupportedModelError
from ..glasses import Intervention, applied, describe
from ..glasses import adaptive_temperature as _adaptive
from .prompts import RANDOM_TASKS, REMEDIES, applicable_remedies, task_prompt

__all__ = ["AccuracyReport", "task_accuracy", "read_answer"]

_INT = re.compile(r"-?\d+")


def read_answer(text: str) -> str:
    """The first integer in ``text`` (the model's answer), or the stripped text if none."""
    _validate.text(text, "text")
    match = _INT.search(text)
    return match.group(0) if match else text.strip()


@dataclass(frozen=True)
class AccuracyReport:
    """Per-prompt greedy answers (``records``) for one task across lengths and remedies."""

    records: pd.DataFrame
    task: str
    lengths: tuple[int, ...]
    remedies: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    intervention: str = "none"
    model_name: str = ""
    #: False when the sweep was interrupted (KeyboardInterrupt): ``records`` are the prompts
    #: answered before, and some (remedy, length) cells are missing or hold fewer prompts.
    complete: bool = True

    def to_dataframe(self, *, per_prompt: bool = False) -> pd.DataFrame:
        """Accuracy per (remedy, length) with the number of prompts and the most common
        prediction; ``per_prompt=True`` gives one row per prompt instead."""
        if per_prompt:
            return self.records.copy()
        grouped = self.records.groupby(["remedy", "length"], sort=False)
        out = grouped.agg(
            accuracy=("correct", "mean"),
            n_prompts=("correct", "size"),
            most_common_prediction=("prediction", lambda s: s.value_counts().index[0]),
        )
        return out.reset_index().assign(task=self.task)

    def accuracy(self, remedy: str = "none") -> pd.Series:
        """Accuracy per length for one remedy."""
        if remedy not in self.remedies:
            raise InvalidArgumentError(f"remedy={remedy!r} was not measured: {self.remedies}")
        df = self.to_dataframe()
        return df[df["remedy"] == remedy].set_index("length")["accuracy"]

    def plot(self):
        """Accuracy vs length (log x) per remedy (plotly)."""
        import plotly.express as px

        fig = px.line(
            self.to_dataframe(), x="length", y="accuracy", color="remedy", markers=True,
            log_x=True, hover_data=["n_prompts", "most_common_prediction"],
            title=f"{self.task} accuracy ({self.model_name}, intervention: {self.intervention})",
        )  # fmt: skip
        fig.update_yaxes(range=[-0.05, 1.05])
        return fig

    def _repr_html_(self) -> str:
        table = self.to_dataframe().pivot(index="length", columns="remedy", values="accuracy")
        head = (
            f"<b>AccuracyReport</b> {self.model_name}: task={self.task!r}, "
            f"intervention: {self.intervention}, skipped remedies: {list(self.skipped) or 'none'}"
        )
        if not self.complete:
            head += " — <b>interrupted</b>: only the prompts answered before the interrupt"
        return frame_html(head, table)


#: Most prompts per (remedy, length) ``task_accuracy`` accepts: refused before any is built.
MAX_SAMPLES = 100_000


def _greedy(model: Any, toks: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` greedy tokens after each row of ``toks`` (no KV cache: short answers)."""
    out = toks
    for _ in range(steps):
        logits = _tl.run_with_hooks(model, out, [])
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out[:, toks.shape[1] :]


def task_accuracy(
    model: HookedModel,
    task: str,
    lengths: int | Iterable[SupportsIndex],
    *,
    remedies: Sequence[str] = REMEDIES,
    n_samples: int = 8,
    adaptive_temperature: bool = False,
    intervention: Intervention = None,
    seed: int = 0,
    batch_size: int = 8,
    extra_tokens: int = 1,
    task_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> AccuracyReport:
    """Greedy-answer accuracy of ``task`` (``tasks.prompt_tasks()``) at each length, with
    and without each remedy (docs/science.md §6).

    Example:
        >>> rep = task_accuracy(model, "count-ones", [5, 10, 20], remedies=("none", "separators"))
        >>> rep.to_dataframe()          # remedy, length, accuracy, n_prompts, ...

    Args:
        remedies: among ``tasks.REMEDIES``; those that would change the task's answer
            (``repeat-final`` on counting) are skipped and listed in ``skipped``.
        n_samples: prompts per (remedy, length) for randomised tasks (seeds seed..seed+k-1);
            deterministic tasks use one prompt.
        adaptive_temperature: apply ``glasses.adaptive_temperature`` to every attention layer.
        intervention: any other intervention accepted by ``glasses.applied``.
        extra_tokens: greedy tokens decoded beyond the answer's own length (a leading space).
    """
    info = _tl.model_info(model)
    tokenizer = _tl.text_tokenizer(model)
    if tokenizer is None:
        raise UnsupportedModelError(
            f"model {info.name!r} has no tokenizer; task_accuracy compares decoded text answers"
        )
    ns = sorted(set(_validate.int_list(lengths, name="lengths", minimum=None)))
    _validate.fits_context(ns, info.n_ctx, name="lengths")  # before any prompt is built
    _validate.integer(
        n_samples, "n_samples", minimum=1, maximum=MAX_SAMPLES,
        hint=" (prompts per remedy and length; each is a greedy decode)",
    )  # fmt: skip
    _validate.integer(batch_size, "batch_size", minimum=1)
    _validate.integer(extra_tokens, "extra_tokens", minimum=0)
    _validate.integer(seed, "seed")
    _validate.flag(adaptive_temperature, "adaptive_temperature")
    options = _validate.options(task_options, "task_options")
    if adaptive_temperature and intervention is not None:
        raise InvalidArgumentError("give either adaptive_temperature=True or intervention=")
    chosen, skipped = _choose_remedies(task, remedies)
    prompts = _build_prompts(model, info, task, ns, chosen, n_samples, seed, extra_tokens, options)
    ctx = _adaptive if adaptive_temperature else intervention
    records, complete = _answer(model, info, task, prompts, batch_size, ctx, progress)
    return AccuracyReport(
        records=records.reset_index(drop=True),
        task=task,
        lengths=tuple(ns),
        remedies=tuple(chosen),
        skipped=skipped,
        intervention="adaptive_temperature" if adaptive_temperature else describe(intervention),
        model_name=info.name,
        complete=complete,
    )


def _choose_remedies(task: str, remedies: Any) -> tuple[list[str], tuple[str, ...]]:
    """The requested remedies that apply to ``task``, and those skipped (in given order)."""
    if isinstance(remedies, str) or not isinstance(remedies, Iterable):
        raise InvalidArgumentError(f"remedies={remedies!r} must be a list of names in {REMEDIES}")
    remedies = list(remedies)
    unknown = [r for r in remedies if not isinstance(r, str) or r not in REMEDIES]
    if unknown or not remedies:
        raise InvalidArgumentError(f"remedies={remedies!r}: each must be one of {REMEDIES}")
    usable = applicable_remedies(task)
    chosen = [r for r in dict.fromkeys(remedies) if r in usable]
    skipped = tuple(r for r in dict.fromkeys(remedies) if r not in usable)
    if not chosen:
        raise InvalidArgumentError(
            f"remedies={remedies!r}: none applies to task {task!r} (applicable: {usable})"
        )
    return chosen, skipped


def _build_prompts(
    model: Any, info: Any, task: str, ns: Sequence[int], chosen: Sequence[str], n_samples: int,
    seed: int, extra_tokens: int, options: Mapping[str, Any],
) -> list[tuple[Any, int, int]]:  # fmt: skip
    """``(prompt, sample, tokens to decode)`` per remedy, length and sample; a prompt whose
    answer would not fit in ``n_ctx`` raises InvalidTokensError."""
    tokenizer = _tl.text_tokenizer(model)
    samples = n_samples if task in RANDOM_TASKS else 1
    prompts = []
    for remedy in chosen:
        for n in ns:
            for s in range(samples):
                extra = {"seed": seed + s} if task in RANDOM_TASKS else {}
                prompt = task_prompt(model, task, n, remedy=remedy, **{**options, **extra})
                answer_len = len(tokenizer.encode(" " + prompt.answer, add_special_tokens=False))
                if len(prompt.tokens) + answer_len + extra_tokens > info.n_ctx:
                    raise InvalidTokensError(
                        f"length n={n} of task {task!r} (remedy {remedy!r}) needs "
                        f"{len(prompt.tokens)} prompt tokens + {answer_len + extra_tokens} "
                        f"answer tokens, more than the model's n_ctx={info.n_ctx}"
                    )
                prompts.append((prompt, s, answer_len + extra_tokens))
    return prompts


def _answer(
    model: Any, info: Any, task: str, prompts: list[tuple[Any, int, int]], batch_size: int,
    intervention: Intervention, progress: bool | None,
) -> tuple[pd.DataFrame, bool]:  # fmt: skip
    """Greedy answers for every prompt (batched by prompt length), one record each; and
    whether all were answered (False after a KeyboardInterrupt, see :mod:`.._sweep`)."""
    tokenizer = _tl.text_tokenizer(model)
    groups: dict[int, list] = {}
    for item in prompts:
        groups.setdefault(len(item[0].tokens), []).append(item)
    chunks = [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    rows = []
    show = _validate.progress_flag(progress, len(chunks) > 1)
    done = 0
    try:
        with applied(model, intervention):
            bar = tqdm(chunks, desc=f"task_accuracy {task}", disable=not show, leave=False)
            for chunk in bar:
                batch = torch.stack([p.tokens for p, _, _ in chunk])
                toks = _tl.prepare_tokens(model, batch, info)
                generated = _greedy(model, toks, max(k for _, _, k in chunk)).cpu()
                for (prompt, s, k), gen in zip(chunk, generated):
                    text = tokenizer.decode(gen[:k].tolist())
                    pred = read_answer(text)
                    rows.append(
                        {"task": task, "remedy": prompt.remedy, "length": prompt.length,
                         "sample": s, "answer": prompt.answer, "prediction": pred,
                         "correct": pred == prompt.answer, "output": text,
                         "prompt_tokens": len(prompt.tokens)}
                    )  # fmt: skip
                done += 1
    except KeyboardInterrupt as exc:
        interrupted(f"task_accuracy {task!r}", done, len(chunks), exc)
    frame = pd.DataFrame(rows).sort_values(["remedy", "length", "sample"], kind="stable")
    return frame, done == len(chunks)
