"""Representational collapse sweep (docs/science.md §2): gap between the last-token residuals of
`1 … 1` (n items) and `1 … 1 1` (n+1) per length, layer and precision, and the crossing length.

    python examples/collapse_sweep.py                       # embedded SmolLM2-135M-Instruct
    python examples/collapse_sweep.py --task repeat-sep     # commas every 3rd item ("glasses")
    python examples/collapse_sweep.py --model path/to/hf_folder --quick --csv gaps.csv
"""

import argparse
import os
import time

import pandas as pd

import oversquash_lens as osl
from oversquash_lens.collapse import resolution
from oversquash_lens.tasks import pair_tasks

QUICK_ENV = os.environ.get("OVERSQUASH_QUICK") == "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF folder or hub name (default: embedded)")
    parser.add_argument("--task", default="repeat", choices=pair_tasks())
    parser.add_argument("--lengths", type=int, nargs="+", help="numbers of items n")
    parser.add_argument(
        "--precisions", nargs="+", default=["float32", "bfloat16", "float16"], help="dtypes"
    )
    parser.add_argument("--native", action="store_true", help="also run the model in each dtype")
    parser.add_argument("--layer", type=int, default=-1, help="residual layer for the table")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=QUICK_ENV,
        help="short sweep (CI); also OVERSQUASH_QUICK=1",
    )
    parser.add_argument("--csv", help="write the full long-format table here")
    args = parser.parse_args(argv)

    lengths = args.lengths or ([2, 4, 8, 16] if args.quick else [2, 4, 8, 16, 32, 64, 128, 256])
    t0 = time.perf_counter()
    model = osl.load_model(args.model)
    t1 = time.perf_counter()
    curve = osl.collapse_curve(
        model,
        lengths,
        task=args.task,
        precisions=tuple(args.precisions),
        run_in_dtype=args.native,
        progress=False,
    )
    t2 = time.perf_counter()
    frame = curve.to_dataframe()
    layer = args.layer % (curve.n_layers + 1)
    print(f"task={args.task!r}, n={lengths}, layer {layer} of {curve.n_layers} "
          f"(load {t1 - t0:.1f} s, sweep {t2 - t1:.1f} s)")  # fmt: skip
    at_layer = frame[frame["layer"] == layer]
    table = at_layer.pivot_table(index="length", columns=["precision", "mode"], values="rel_linf")
    with pd.option_context("display.width", 160, "display.float_format", "{:.3g}".format):
        print("\nrelative L-inf gap ‖a−b‖∞ / max(‖a‖∞, ‖b‖∞):")
        print(table)
    print("\ncrossing length (smallest n from which the pair stays collapsed):")
    for precision in curve.precisions:
        for mode in ["rounded"] + (["native"] if precision in curve.native else []):
            n = curve.crossing_length(precision, layer, mode=mode, criterion="collapsed")
            where = f"n = {n}" if n is not None else f"none up to n = {max(lengths)}"
            print(f"  {precision:>9} {mode:>7} (eps {resolution(precision):.2g}): {where}")
    collapsed = frame.groupby(["precision", "mode", "length"])["collapsed"].sum().unstack("length")
    print(f"\nlayers (of {curve.n_layers + 1}) in which the pair is collapsed:")
    print(collapsed.to_string())
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
