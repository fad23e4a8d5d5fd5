"""Head table (docs/science.md §4): diagonal, previous-token, BOS-sink and no-op heads, with their
scores, write ratio, ablation effect and OV eigenvalue summary.

    python examples/head_table.py                  # embedded model, ablations included
    python examples/head_table.py --eps 0.5 --all  # looser diagonal threshold, every head
    python examples/head_table.py --model path/to/hf_folder --quick --csv heads.csv
"""

import argparse
import os
import time

import pandas as pd

import oversquash_lens as osl
from oversquash_lens.heads import classify_heads

DEFAULT_TEXTS = [
    "Every morning the baker opens her shop a little before six. She lights the ovens, sets out "
    "the trays and mixes the dough for the first loaves of the day.",
    "What is the last digit in this sequence? 3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3. Answer:",
]
COLUMNS = [
    "block",
    "head",
    "label",
    "diag_mass",
    "prev_mass",
    "first_mass",
    "write_ratio",
    "delta_loss_zero",
    "ov_copying",
]

QUICK_ENV = os.environ.get("OVERSQUASH_QUICK") == "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF folder or hub name (default: embedded)")
    parser.add_argument("--text", action="append", help="text to run (repeatable)")
    parser.add_argument("--eps", type=float, default=0.1, help="diagonal: mass >= 1 - eps")
    parser.add_argument("--sink", type=float, default=0.3, help="BOS-sink first-token mass")
    parser.add_argument("--no-ablation", action="store_true", help="skip the head ablations")
    parser.add_argument("--all", action="store_true", help="print every head, not only flagged")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=QUICK_ENV,
        help="one short text, no ablation (CI); also OVERSQUASH_QUICK=1",
    )
    parser.add_argument("--csv", help="write every head's scores here")
    args = parser.parse_args(argv)

    texts = args.text or (DEFAULT_TEXTS[1:] if args.quick else DEFAULT_TEXTS)
    t0 = time.perf_counter()
    model = osl.load_model(args.model)
    t1 = time.perf_counter()
    report = classify_heads(
        model,
        texts,
        eps=args.eps,
        sink_threshold=args.sink,
        ablation=not (args.no_ablation or args.quick),
        progress=False,
    )
    t2 = time.perf_counter()
    frame = report.to_dataframe()
    print(
        f"{report.n_layers} layers x {report.n_heads} heads, {report.n_tokens} tokens, "
        f"clean loss {report.clean_loss:.3f} (load {t1 - t0:.1f} s, heads {t2 - t1:.1f} s)"
    )
    print("\nheads per label:")
    print(report.counts().to_string())
    shown = frame if args.all else report.flagged
    with pd.option_context("display.width", 200, "display.max_rows", 1000):
        print(f"\n{'all' if args.all else 'flagged'} heads ({len(shown)}):")
        print(shown[COLUMNS].to_string(index=False, float_format="{:.3g}".format))
        print("\nmost diagonal heads:")
        print(
            frame.nlargest(5, "diag_mass")[COLUMNS].to_string(
                index=False, float_format="{:.3g}".format
            )
        )
    by_layer = frame.groupby("block")["first_mass"].mean()
    half = len(by_layer) // 2
    print(
        f"\nmean first-token attention: first half of layers {by_layer.iloc[:half].mean():.3f}, "
        f"second half {by_layer.iloc[half:].mean():.3f}"
    )
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
