"""``build_report``: measure one or two models and write one self-contained HTML page."""

import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import _validate, viz
from ..errors import InvalidArgumentError
from . import page
from .config import ReportConfig
from .measure import STEPS, ModelRun, measure_model
from .names import display_name, unique_names

__all__ = ["build_report"]


def _as_models(model: Any, models: Sequence[Any] | None) -> list[Any]:
    if models is not None:
        if model is not None:
            raise InvalidArgumentError("give model=... or models=[...], not both")
        if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
            raise InvalidArgumentError(f"models={models!r} must be a list of models")
        chosen = list(models)
    elif isinstance(model, (list, tuple)):
        chosen = list(model)
    else:
        chosen = [model]
    if not 1 <= len(chosen) <= 2:
        raise InvalidArgumentError(f"the report compares one or two models, got {len(chosen)}")
    return chosen


def build_report(
    model: Any | None = None,
    path: str | Path = "out/report.html",
    *,
    models: Sequence[Any] | None = None,
    names: Sequence[str] | None = None,
    config: ReportConfig | None = None,
    progress: bool = True,
) -> Path:
    """Measure every section on one or two models and write one self-contained HTML file
    (renders offline). Returns the path.

    Example:
        >>> build_report()                                   # the embedded SmolLM2-135M
        >>> build_report(models=[None, load_model("gemma-3-270m")], path="both.html")
        >>> build_report(model, config=ReportConfig.quick())  # the --quick page

    Args:
        model: a model, or None for the embedded SmolLM2-135M-Instruct (loaded here); a list
            of two is the same as ``models``.
        models: one or two models (None entries load the embedded one); findings and figures
            then put them side by side.
        names: display names, one per model (default: :func:`.names.display_name`).
        config: what to measure (:class:`ReportConfig`; ``ReportConfig.quick()`` for --quick).
        progress: the outer bar names the current model and section; long steps show their
            own bars.
    """
    from ..models import load_model

    config = config or ReportConfig()
    chosen = _as_models(model, models)
    if names is not None and len(names) != len(chosen):
        raise InvalidArgumentError(f"{len(names)} names for {len(chosen)} models")
    start = time.perf_counter()
    total = len(chosen) * (len(STEPS) + 1) + 1
    bar = tqdm(
        total=total, desc="report", disable=not _validate.flag(progress, "progress"), leave=True
    )
    runs: list[ModelRun] = []
    given: list[str | None] = list(names) if names is not None else [None] * len(chosen)
    try:
        for i, m in enumerate(chosen):
            label: str = given[i] or display_name(m)
            bar.set_description(f"report [{label}]: load model")
            t0 = time.perf_counter()
            loaded = load_model() if m is None else m
            load_seconds = time.perf_counter() - t0
            bar.update(1)

            def step(name: str, label: str = label) -> None:
                bar.set_description(f"report [{label}]: {name}")
                bar.update(1)

            run = measure_model(loaded, label, config, step, progress=progress)
            if m is None:
                run.timings = {"load model": load_seconds, **run.timings}
            bar.update(len(STEPS) - sum(1 for s in STEPS if s in run.timings))
            runs.append(run)
        for run, name in zip(runs, unique_names([r.name for r in runs])):
            run.name = name
        bar.set_description("report: writing the page")
        out = _write(runs, Path(path), config, start)
        bar.update(1)
    finally:
        bar.close()
    return out


def _write(runs: list[ModelRun], path: Path, config: ReportConfig, start: float) -> Path:
    names = " vs ".join(r.name for r in runs)
    t0 = time.perf_counter()
    items: list[Any] = [f"<style>{page.STYLE}</style>",
                        f"<h1>oversquash_lens report: {html.escape(names)}</h1>"]  # fmt: skip
    items.append(
        "<p class='note'>Over-squashing and representational collapse (Barbero et al. 2024, "
        '"Transformers need glasses!"), measured when this page was built. Sections: '
        "<a href='#findings'>findings</a> · <a href='#model'>model</a> · "
        "<a href='#collapse'>collapse</a> · <a href='#profile'>profile</a> · "
        "<a href='#heads'>heads</a> · <a href='#timings'>timings</a>.</p>"
    )
    items += page.findings_section(runs)
    items += page.model_section(runs)
    items += page.collapse_section(runs)
    items += page.profile_section(runs)
    items += page.heads_section(runs, config)
    page_seconds = time.perf_counter() - t0
    for run in runs:
        run.timings["page"] = page_seconds / len(runs)
    timings: dict[str, float] = {}
    for run in runs:
        for key, seconds in run.timings.items():
            timings[key] = timings.get(key, 0.0) + seconds
    total = time.perf_counter() - start
    config.timings.clear()
    config.timings.update(timings, total=total)
    items += page.timings_section(runs, total)
    return viz.save_html(items, path, title=f"oversquash_lens: {names}")
