"""``oversquash-lens`` command line: ``report``, ``collapse``, ``heads``, ``sensitivity``,
``models``.

Arguments are parsed and checked before anything heavy is imported or any model is loaded:
this module imports only the standard library, :mod:`oversquash_lens._arguments` (the checks
argparse cannot make) and :mod:`oversquash_lens.report.config` (the defaults) at the top, so
``--help`` is fast (as fast as the package's own ``__init__`` allows). A bad
argument — a negative length, an out-of-range target, a missing folder, a hub name with no
internet — is one ``oversquash-lens <command>: error: ...`` line on stderr and exit status 2,
never a traceback.

Every subcommand takes ``--model``: a local Hugging Face folder, a known real model
(``oversquash-lens models``; default: the embedded SmolLM2-135M-Instruct) or a hub name (needs
the internet). ``report`` takes it twice to compare two models side by side. Table
subcommands print a table, or JSON records with ``--json``.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._arguments import ArgumentCheckError, check_lengths, check_model, check_target
from .report import config as defaults

__all__ = ["main", "build_parser"]

_DTYPES = ("float32", "bfloat16", "float16")


class _Parser(argparse.ArgumentParser):
    """One-line errors: ``prog: error: message (see prog --help)``, exit status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1)")
    return value


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text


def _grid(values: Sequence[Any]) -> str:
    return " ".join(map(str, values))


_MODEL_HELP = (
    "a local Hugging Face folder, a known real model (see `oversquash-lens models`) or a hub "
    "name (needs the internet) (default: the embedded SmolLM2-135M-Instruct)"
)


def _common(model_twice: bool = False) -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    if model_twice:
        common.add_argument("--model", action="append", default=None, metavar="MODEL",
                            help=_MODEL_HELP + "; give it twice to compare two models")  # fmt: skip
    else:
        common.add_argument("--model", default=None, metavar="MODEL", help=_MODEL_HELP)
    common.add_argument("--dtype", choices=_DTYPES, default="float32",
                        help="dtype the model is loaded in (default: float32)")  # fmt: skip
    return common


def _add_lengths(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument("--lengths", type=_positive_int, nargs="+", metavar="N",
                   help=f"collapse lengths n (items) (default: {_grid(defaults.DEFAULT_LENGTHS)}"
                   f", cut to what fits the model's n_ctx{extra})")  # fmt: skip


def _add_precisions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precisions", nargs="+", choices=defaults.PRECISIONS, metavar="P",
                   default=list(defaults.DEFAULT_PRECISIONS),
                   help=f"precisions, among {{{','.join(defaults.PRECISIONS)}}} (default: "
                   f"{_grid(defaults.DEFAULT_PRECISIONS)}; fp8 is rounding only)")  # fmt: skip


def _add_probes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", type=_positive_int, default=None,
                   help="Hutchinson probes of the sensitivity estimate (default: "
                   f"{defaults.DEFAULT_PROBES}; --quick: 8)")  # fmt: skip


def _add_eps(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eps", type=_fraction, default=defaults.DEFAULT_EPS,
                   help="ε of Def 5.1: diagonal / previous-token mass ≥ 1 − ε, in (0, 1) "
                   f"(default: {defaults.DEFAULT_EPS})")  # fmt: skip


def _report_parser(sub: Any) -> None:
    rep = sub.add_parser(
        "report", parents=[_common(model_twice=True)], formatter_class=_Formatter,
        help="write the self-contained HTML report (one or two models)",
        description="Measure collapse, the over-squashing profile and the heads of one or two "
        "models and write one self-contained HTML page (renders offline).",
    )  # fmt: skip
    rep.add_argument("--output", "-o", default="out/report.html",
                     help="the HTML file to write (default: out/report.html)")  # fmt: skip
    rep.add_argument("--quick", action="store_true",
                     help="a quicker page (~30 s on 2 CPU cores): lengths "
                     f"{_grid(defaults.QUICK_LENGTHS)}, rounded precisions only, 8 probes, no "
                     "routes")  # fmt: skip
    rep.add_argument("--prompt", type=_text, default=defaults.DEFAULT_COPY_PROMPT,
                     help="copy-task prompt of the over-squashing profile (default: a 32-digit "
                     "'What is the last digit ...' prompt)")  # fmt: skip
    rep.add_argument(
        "--text",
        type=_text,
        default=defaults.DEFAULT_TEXT,
        help="ordinary text for the head scores (default: a 3-sentence text)",
    )
    _add_lengths(rep, "; --quick: " + _grid(defaults.QUICK_LENGTHS))
    _add_precisions(rep)
    _add_probes(rep)
    _add_eps(rep)
    rep.add_argument(
        "--ablation",
        action="store_true",
        help="also ablate every head (slow: minutes on a CPU) (default: off)",
    )
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.set_defaults(func=_cmd_report)


def _collapse_parser(sub: Any, tables: argparse.ArgumentParser) -> None:
    col = sub.add_parser(
        "collapse",
        parents=[_common(), tables],
        formatter_class=_Formatter,
        help="collapse-curve table (gap per length, layer, precision)",
    )
    col.add_argument(
        "--task", choices=defaults.PAIR_TASKS, default="repeat", help="pair task (default: repeat)"
    )
    _add_lengths(col)
    _add_precisions(col)
    col.add_argument("--all-layers", action="store_true", help="every layer, not only the last")
    col.set_defaults(func=_cmd_collapse)


def _heads_parser(sub: Any, tables: argparse.ArgumentParser) -> None:
    hd = sub.add_parser(
        "heads",
        parents=[_common(), tables],
        formatter_class=_Formatter,
        help="head scores and labels",
    )
    hd.add_argument(
        "--text",
        type=_text,
        default=defaults.DEFAULT_TEXT,
        help="text the heads are scored on (default: the report's head text)",
    )
    _add_eps(hd)
    hd.add_argument(
        "--ablation",
        action="store_true",
        help="also ablate every head (slow) (default: off, as in the report)",
    )
    hd.add_argument("--no-ablation", action="store_true", help=argparse.SUPPRESS)  # old flag
    hd.add_argument("--all", action="store_true", help="every head, not only flagged ones")
    hd.set_defaults(func=_cmd_heads)


def _sensitivity_parser(sub: Any, tables: argparse.ArgumentParser) -> None:
    sens = sub.add_parser(
        "sensitivity",
        parents=[_common(), tables],
        formatter_class=_Formatter,
        help="Jacobian sensitivity of the target token to every input token",
    )
    sens.add_argument(
        "--prompt",
        type=_text,
        default=defaults.DEFAULT_COPY_PROMPT,
        help="the prompt (default: the report's copy prompt)",
    )
    sens.add_argument(
        "--target",
        type=int,
        default=-1,
        help="receiving position; negative counts from the end (default: -1)",
    )
    sens.add_argument(
        "--method",
        choices=("exact", "estimate"),
        default="estimate",
        help="exact (d_model products per layer) or estimate (default: estimate)",
    )
    _add_probes(sens)
    sens.set_defaults(func=_cmd_sensitivity)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (standard library only: building it imports nothing heavy)."""
    parser = _Parser(
        prog="oversquash-lens", formatter_class=_Formatter,
        description="Measure over-squashing and representational collapse in a causal LM "
        "(Barbero et al. 2024, 'Transformers need glasses!'). Offline by default: the embedded "
        "SmolLM2-135M-Instruct, or any local Hugging Face folder.",
    )  # fmt: skip
    tables = _Parser(add_help=False)
    tables.add_argument("--json", action="store_true", help="print JSON records, not a table")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)  # fmt: skip
    _report_parser(sub)

    _collapse_parser(sub, tables)
    _heads_parser(sub, tables)
    _sensitivity_parser(sub, tables)
    mod = sub.add_parser(
        "models",
        formatter_class=_Formatter,
        help="the known real models (offline) and whether they are installed",
    )
    mod.set_defaults(func=_cmd_models)
    return parser


# --- commands --------------------------------------------------------------------------------


def _load(source: str | None, dtype: str) -> Any:
    from .models import load_model

    return load_model(source, dtype=dtype)


def _emit(frame: Any, args: argparse.Namespace) -> None:
    if args.json:
        # Not DataFrame.to_json: it keeps 10 decimals, so a collapse gap of 3e-11 would print
        # as 0.0. Python's float repr round-trips every value; NaN becomes null.
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        print(json.dumps(records, indent=1, default=_json_scalar))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.width", 200):
            print(frame.to_string(index=False))


def _json_scalar(value: Any) -> Any:
    """numpy scalars (np.int64, np.bool_) as Python ones; anything else as its string."""
    return value.item() if hasattr(value, "item") else str(value)


def _cmd_report(args: argparse.Namespace) -> int:
    sources = args.model or [None]
    if len(sources) > 2:
        raise ArgumentCheckError(
            f"--model given {len(sources)} times: the report compares one or two"
        )
    output = Path(args.output)
    if output.is_dir():
        raise ArgumentCheckError(f"--output {args.output}: is a folder; give an .html file name")
    for source in sources:
        check_lengths(args.lengths, check_model(source))
    from .report import ReportConfig, build_report
    from .report.names import display_name

    changes: dict[str, Any] = {
        "head_ablation": args.ablation, "head_eps": args.eps, "copy_prompt": args.prompt,
        "text": args.text, "precisions": tuple(dict.fromkeys(args.precisions)),
    }  # fmt: skip
    if args.probes is not None:
        changes["n_probes"] = args.probes
    if args.lengths:
        changes["lengths"] = tuple(sorted(set(args.lengths)))
    config = ReportConfig.quick(**changes) if args.quick else ReportConfig(**changes)
    models = [None if s is None and args.dtype == "float32" else _load(s, args.dtype)
              for s in sources]  # fmt: skip
    names = [display_name(source=s) for s in sources]
    path = build_report(models=models, names=names, path=output, config=config,
                        progress=not args.no_progress)  # fmt: skip
    total = config.timings.get("total", float("nan"))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {total:.0f} s")
    return 0


def _cmd_collapse(args: argparse.Namespace) -> int:
    check_lengths(args.lengths, check_model(args.model))
    from .collapse import collapse_curve
    from .report.measure import fitting_lengths

    model = _load(args.model, args.dtype)
    lengths = args.lengths
    if not lengths:
        from . import _tl

        lengths = fitting_lengths(
            model, list(defaults.DEFAULT_LENGTHS), _tl.model_info(model).n_ctx
        )
        skipped = [n for n in defaults.DEFAULT_LENGTHS if n not in lengths]
        if skipped:
            print(f"lengths {skipped} skipped: they do not fit the model's n_ctx", file=sys.stderr)
    curve = collapse_curve(model, lengths, task=args.task,
                           precisions=tuple(dict.fromkeys(args.precisions)))  # fmt: skip
    frame = curve.to_dataframe()
    if not args.all_layers:
        frame = frame[frame["layer"] == frame["layer"].max()]
    _emit(frame, args)
    return 0


def _cmd_heads(args: argparse.Namespace) -> int:
    check_model(args.model)
    from .heads import classify_heads

    ablation = args.ablation and not args.no_ablation
    report = classify_heads(_load(args.model, args.dtype), args.text, eps=args.eps,
                            ablation=ablation)  # fmt: skip
    _emit(report.to_dataframe() if args.all else report.flagged, args)
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    folder = check_model(args.model)
    check_target(args.target, args.prompt, folder)
    from .flow import token_sensitivity

    sens = token_sensitivity(_load(args.model, args.dtype), args.prompt, target=args.target,
                             method=args.method,
                             n_probes=args.probes or defaults.DEFAULT_PROBES)  # fmt: skip
    _emit(sens.to_dataframe(), args)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import available_models

    frame = available_models()
    cols = ["title", "default", "installed", "converted", "license", "n_layers", "attention"]
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(frame[[c for c in cols if c in frame]].to_string())
    print("\ninstall a model's packages with its 'install' command (available_models())")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a bad argument or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"
    try:
        return args.func(args)
    except ArgumentCheckError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from .errors import OversquashError

        if not isinstance(exc, OversquashError):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
