"""What the report measures, and the defaults the command line shares with it.

This module imports nothing heavy (no torch, no pandas): ``oversquash-lens --help`` reads its
defaults from here before any analysis is imported.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

__all__ = [
    "ReportConfig",
    "DEFAULT_TEXT",
    "DEFAULT_COPY_PROMPT",
    "DEFAULT_LENGTHS",
    "QUICK_LENGTHS",
    "DEFAULT_PRECISIONS",
    "PRECISIONS",
    "PAIR_TASKS",
    "COLLAPSE_TASKS",
    "DEFAULT_PROBES",
    "DEFAULT_EPS",
    "SINK_EPS",
]

DEFAULT_TEXT = (
    "The quick brown fox jumps over the lazy dog. Researchers measure how information flows "
    "through the layers of a language model, and why the last token sometimes cannot see "
    "the first one."
)
DEFAULT_COPY_PROMPT = (
    "What is the last digit in this sequence? 3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3 2 3 8 4 6 2 6 4 "
    "3 3 8 3 2 7 9 5. Answer:"
)

#: n (items) of the collapse sections; the default grid is cut to what fits the model's n_ctx.
DEFAULT_LENGTHS = (8, 16, 32, 64, 128, 256, 512)
#: the ``--quick`` grid
QUICK_LENGTHS = (8, 16, 32, 64, 128)
#: the three formats models are run in (docs/science.md §2); fp8 is opt-in (rounding only)
DEFAULT_PRECISIONS = ("float32", "bfloat16", "float16")
#: every precision ``collapse_curve`` accepts (kept here so ``--help`` needs no torch)
PRECISIONS = ("float32", "bfloat16", "float16", "float64", "float8_e4m3fn", "float8_e5m2")
#: ``oversquash_lens.tasks.pair_tasks()``, copied so ``--help`` needs no torch (a test keeps
#: the two equal)
PAIR_TASKS = (
    "repeat",
    "repeat-sep",
    "repeat-interleave",
    "alternating",
    "copy-last",
    "copy-first",
    "count-ones",
    "count-ones-sep",
)
#: the report's two collapse tasks: repeated ones, and the same with a comma every 3rd item
COLLAPSE_TASKS = ("repeat", "repeat-sep")
#: Hutchinson probes of the sensitivity estimate (report and ``sensitivity`` subcommand)
DEFAULT_PROBES = 16
#: ε of Def 5.1 (diagonal / previous-token mass ≥ 1 − ε)
DEFAULT_EPS = 0.1
#: sink thresholds reported as rates: Gu et al. (0.3) and Barbero et al. 2025 (0.8)
SINK_EPS = (0.3, 0.8)


@dataclass(frozen=True)
class ReportConfig:
    """What the report measures. The defaults keep the embedded model's report near a minute
    and a half on two CPU cores; :meth:`quick` is the ``--quick`` page (about 30 s).

    Attributes:
        lengths: n of the collapse sections; the default grid is cut to what fits the model's
            n_ctx (the page says which lengths it skipped); lengths you choose are used as given
            (one that does not fit raises InvalidTokensError).
        precisions: collapse precisions (rounded states; ``native`` also runs the model in them
            where that is fast — bfloat16 on CPU, never float16 on CPU nor fp8).
        native: also run the model natively in each precision (repeat task only).
        copy_prompt: the prompt of the over-squashing profile (target: its last token).
        text: ordinary text for the head scores and attention views.
        sensitivity_method, n_probes: the Jacobian sensitivity at the last layer
            (``"estimate"``: Hutchinson probes; ``"exact"``: d_model products).
        head_eps: ε of Def 5.1 for the head labels.
        head_ablation: also ablate every head (2 · layers · heads passes; minutes on a CPU).
        routes: add the information-flow routes' source totals to the profile when the
            installed ``oversquash_lens.flow`` offers ``information_flow``.
        top_k: rows of each ranked head table.
        max_attention_views: most heads in the attention view (the most extreme of each kind).
        timings: filled in by :func:`build_report` (seconds per section, and ``total``).
    """

    lengths: Sequence[int] = DEFAULT_LENGTHS
    precisions: Sequence[str] = DEFAULT_PRECISIONS
    native: bool = True
    copy_prompt: str = DEFAULT_COPY_PROMPT
    text: str = DEFAULT_TEXT
    sensitivity_method: str = "estimate"
    n_probes: int = DEFAULT_PROBES
    head_eps: float = DEFAULT_EPS
    head_ablation: bool = False  # 30-layer ablations take many minutes on a 2-core CPU
    routes: bool = True
    top_k: int = 5
    max_attention_views: int = 6
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def quick(cls, **changes: object) -> "ReportConfig":
        """The ``--quick`` page: grid up to n = 128, rounded precisions only, 8 probes, no
        routes — every section still measured."""
        base = cls(lengths=QUICK_LENGTHS, native=False, n_probes=8, routes=False)
        return replace(base, **changes) if changes else base

    @property
    def default_grid(self) -> bool:
        """Whether ``lengths`` is one of the built-in grids (cut to n_ctx, not an error)."""
        return tuple(self.lengths) in (DEFAULT_LENGTHS, QUICK_LENGTHS)
