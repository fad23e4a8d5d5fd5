"""The HTML report: what one or two models show about over-squashing, in one page.

Sections: findings (one measured sentence each, linked to its section); the model card;
representational collapse (gap vs n per precision and mode, crossing lengths under both
criteria, a layer × n heat map, with and without separators); the over-squashing profile of a
copy prompt (path counts, rollout, Theorem 5.1 bound, measured sensitivity, information-flow
routes when available); attention heads (heat maps of every score, ranked tables, the full
table as CSV, attention views of the most extreme heads); timings. Everything is measured when
the report is built — nothing is precomputed.

Modules: :mod:`.config` (defaults, light: the command line reads them before importing
torch), :mod:`.names` (display names), :mod:`.measure` (the measurements), :mod:`.findings`,
:mod:`.figures`, :mod:`.page` (sections) and :mod:`.build` (:func:`build_report`).
``build_report`` is imported on first use, so ``from oversquash_lens.report import
DEFAULT_TEXT`` stays light.
"""

from typing import TYPE_CHECKING, Any

from .config import DEFAULT_COPY_PROMPT as DEFAULT_COPY_PROMPT
from .config import DEFAULT_TEXT as DEFAULT_TEXT
from .config import ReportConfig as ReportConfig

if TYPE_CHECKING:
    from .build import build_report as build_report

__all__ = ["ReportConfig", "build_report", "DEFAULT_TEXT", "DEFAULT_COPY_PROMPT"]


def __getattr__(name: str) -> Any:
    if name == "build_report":
        from .build import build_report

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
