"""Sliding windows, scalable softmax and 8-bit formats on a real model (docs/science.md §7).

Three tables: the last-layer gap between `1 … 1` (n items) and `1 … 1 1` (n + 1) with every
layer windowed to w keys and without (and under SSMax); the crossing length per precision,
8-bit formats included; copy / count accuracy with and without the glasses.

    python examples/windows_on_smollm2.py                      # embedded SmolLM2-135M-Instruct
    python examples/windows_on_smollm2.py --quick              # short grid (CI); OVERSQUASH_QUICK=1
    python examples/windows_on_smollm2.py --model path/to/hf_folder --windows 8 32
"""

import argparse
import functools
import os
import time
import warnings
from typing import Any

import pandas as pd

import oversquash_lens as osl
from oversquash_lens.collapse import resolution
from oversquash_lens.glasses import ssmax_s

QUICK_ENV = os.environ.get("OVERSQUASH_QUICK") == "1"
PRECISIONS = ("float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2")
QUESTIONS = {
    "copy-last": ("What is the last digit in this sequence: {items}?", "The last digit is"),
    "count-bernoulli": ("How many ones are in this sequence: {items}?", "There are"),
}


def chat_options(model: Any, task: str) -> dict[str, Any]:
    """Wrap the task in the model's chat template, the answer started (as counting_accuracy.py)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not getattr(tok, "chat_template", None):
        return {"other": "7"} if task.startswith("copy") else {}
    question, prefill = QUESTIONS[task]
    text = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    bos = tok.bos_token or ""
    options: dict[str, Any] = {"template": text + prefill}
    if bos and text.startswith(bos):
        options["template"] = text[len(bos) :] + prefill
    else:
        options["bos"] = None
    if task.startswith("copy"):
        options["other"] = "7"
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF folder or hub name (default: embedded)")
    parser.add_argument("--lengths", type=int, nargs="+", help="items n of the repeat pair")
    parser.add_argument("--windows", type=int, nargs="+", help="sliding windows w (keys)")
    parser.add_argument("--m0", type=int, default=64, help="SSMax s = 1/ln(m0)")
    parser.add_argument("--samples", type=int, default=4, help="prompts per length (counting)")
    parser.add_argument("--quick", action="store_true", default=QUICK_ENV, help="short grid (CI)")
    args = parser.parse_args(argv)
    lengths = args.lengths or ([4, 16, 64] if args.quick else [16, 32, 64, 128, 256, 512, 1024])
    windows = args.windows or ([8] if args.quick else [16, 64, 256])
    task_lengths = [4, 8] if args.quick else [8, 16, 32, 64]

    t0 = time.perf_counter()
    model = osl.load_model(args.model)
    n_layers = model.cfg.n_layers
    s = ssmax_s(args.m0)
    glasses = {"none": None}
    glasses.update(
        {f"window {w}": functools.partial(osl.sliding_window, window=w) for w in windows}
    )
    glasses[f"ssmax s={s:.3f}"] = functools.partial(osl.scalable_softmax, s=s)
    loaded = time.perf_counter() - t0
    print(f"model {model.cfg.model_name}: {n_layers} layers, loaded in {loaded:.0f} s")
    print("reach of a window through every layer, L·(w − 1): "
          + ", ".join(f"w={w}: {n_layers * (w - 1)}" for w in windows))  # fmt: skip

    rows, crossings, underflows = [], [], {}
    for name, glass in glasses.items():
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            curve = osl.collapse_curve(
                model, lengths, task="repeat", precisions=PRECISIONS, run_in_dtype=False,
                intervention=glass, progress=False,
            )  # fmt: skip
        underflows[name] = sum("underflow" in str(w.message) for w in caught)
        last = curve.frame[curve.frame["layer"] == n_layers]
        for n in lengths:
            at = last[last["length"] == n].set_index("precision")
            rows.append(
                {"glasses": name, "n": n, "rel_linf fp32": at.loc["float32", "rel_linf"],
                 "l1 fp32": at.loc["float32", "l1"],
                 **{f"same {p}": bool(at.loc[p, "identical"]) for p in PRECISIONS}}
            )  # fmt: skip
        for p in PRECISIONS:
            crossings.append(
                {"glasses": name, "precision": p, "eps": resolution(p),
                 "crossing (rel gap < eps)": curve.crossing_length(p, criterion="collapsed"),
                 "crossing (bit-identical)": curve.crossing_length(p, criterion="identical")}
            )  # fmt: skip
        print(f"collapse curve with {name}: {time.perf_counter() - t:.0f} s")

    acc = []
    for task in ("copy-last", "count-bernoulli"):
        for name, glass in glasses.items():
            rep = osl.task_accuracy(
                model, task, task_lengths, remedies=("none",), n_samples=args.samples,
                intervention=glass, task_options=chat_options(model, task), progress=False,
            )  # fmt: skip
            frame = rep.to_dataframe()
            for _, r in frame.iterrows():
                acc.append({"task": task, "glasses": name, "n": r["length"],
                            "accuracy": r["accuracy"], "n_prompts": r["n_prompts"]})  # fmt: skip

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print("\nlast-layer gap of the repeat pair (same X = bit-identical after rounding to X):")
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        print("\ncrossing lengths, last layer (None = not collapsed at the largest n):")
        cross = pd.DataFrame(crossings)
        for col in ("crossing (rel gap < eps)", "crossing (bit-identical)"):
            cross[col] = cross[col].astype("Int64")  # None stays <NA>, not NaN
        print(cross.to_string(index=False))
        print("\naccuracy (greedy, chat format where the model has one):")
        table = pd.DataFrame(acc).pivot_table(
            index=["task", "n"], columns="glasses", values="accuracy"
        )
        print(table.to_string(float_format=lambda x: f"{x:.2f}"))
    print(f"\nunderflow warnings (rows renormalised to uniform): {underflows}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
