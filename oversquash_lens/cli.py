"""``oversquash-lens`` command line: ``report``, ``collapse``, ``heads``, ``sensitivity``.

Every subcommand takes ``--model`` (a local HF folder or hub name; default: the embedded
SmolLM2-135M-Instruct). Table subcommands print a table, or JSON with ``--json``.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _load(args: argparse.Namespace) -> Any:
    from .models import load_model

    return load_model(args.model, dtype=args.dtype)


def _json_scalar(value: Any) -> Any:
    """numpy scalars (np.int64, np.bool_) as Python ones; anything else as its string."""
    return value.item() if hasattr(value, "item") else str(value)


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


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import ReportConfig, build_report

    cfg_kwargs: dict[str, Any] = {"n_probes": args.probes, "head_ablation": args.ablation}
    if args.lengths:
        cfg_kwargs["lengths"] = tuple(args.lengths)
    if args.prompt:
        cfg_kwargs["copy_prompt"] = args.prompt
    if args.text:
        cfg_kwargs["text"] = args.text
    model = None if args.model is None and args.dtype == "float32" else _load(args)
    path = build_report(model, args.output, config=ReportConfig(**cfg_kwargs))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_collapse(args: argparse.Namespace) -> int:
    from .collapse import collapse_curve

    curve = collapse_curve(
        _load(args),
        args.lengths or [8, 16, 32, 64, 128],
        task=args.task,
        precisions=tuple(args.precisions),
    )
    frame = curve.to_dataframe()
    if not args.all_layers:
        frame = frame[frame["layer"] == frame["layer"].max()]
    _emit(frame, args)
    return 0


def _cmd_heads(args: argparse.Namespace) -> int:
    from .heads import classify_heads

    report = classify_heads(_load(args), args.text, eps=args.eps, ablation=not args.no_ablation)
    frame = report.to_dataframe()
    _emit(frame if args.all else report.flagged, args)
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from .flow import token_sensitivity

    sens = token_sensitivity(
        _load(args), args.prompt, target=args.target, method=args.method, n_probes=args.probes
    )
    _emit(sens.to_dataframe(), args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .report import DEFAULT_COPY_PROMPT, DEFAULT_TEXT

    parser = argparse.ArgumentParser(
        prog="oversquash-lens",
        description="Measure over-squashing and representational collapse in a causal LM.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        default=None,
        help="registry name (gemma-3-270m, smollm2-135m-instruct), local HF folder or hub name "
        "(default: embedded SmolLM2-135M)",
    )
    common.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    tables = argparse.ArgumentParser(add_help=False)
    tables.add_argument("--json", action="store_true", help="print JSON records")
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("report", parents=[common], help="write the self-contained HTML report")
    rep.add_argument("--output", "-o", default="out/report.html")
    rep.add_argument("--prompt", help="copy-task prompt for the over-squashing profile")
    rep.add_argument("--text", help="ordinary text for the head table")
    rep.add_argument("--lengths", type=int, nargs="+", help="collapse lengths")
    rep.add_argument("--probes", type=int, default=16, help="sensitivity probes")
    rep.add_argument("--ablation", action="store_true", help="also ablate every head (slow)")
    rep.set_defaults(func=_cmd_report)

    col = sub.add_parser("collapse", parents=[common, tables], help="collapse-curve table")
    col.add_argument("--task", default="repeat")
    col.add_argument("--lengths", type=int, nargs="+")
    col.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "float16"])
    col.add_argument("--all-layers", action="store_true")
    col.set_defaults(func=_cmd_collapse)

    hd = sub.add_parser("heads", parents=[common, tables], help="head classification table")
    hd.add_argument("--text", default=DEFAULT_TEXT)
    hd.add_argument("--eps", type=float, default=0.1)
    hd.add_argument("--no-ablation", action="store_true")
    hd.add_argument("--all", action="store_true", help="every head, not only flagged ones")
    hd.set_defaults(func=_cmd_heads)

    sens = sub.add_parser(
        "sensitivity",
        parents=[common, tables],
        help="Jacobian sensitivity of the target token to every input token",
    )
    sens.add_argument("--prompt", default=DEFAULT_COPY_PROMPT)
    sens.add_argument("--target", type=int, default=-1)
    sens.add_argument("--method", choices=["exact", "estimate"], default="estimate")
    sens.add_argument("--probes", type=int, default=32)
    sens.set_defaults(func=_cmd_sensitivity)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import OversquashError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OversquashError as exc:
        print(f"oversquash-lens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
