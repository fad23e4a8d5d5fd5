"""Every analysis on a model you bring (tutorial 5): collapse, over-squashing profile and heads
on any TransformerLens model — a local Hugging Face folder, a hub name, or a tiny random model.

    python examples/bring_your_own_model.py --tiny llama          # offline, random weights
    python examples/bring_your_own_model.py --tiny hooked         # legacy HookedTransformer (TL 3)
    python examples/bring_your_own_model.py --model path/to/hf_folder --quick
    python examples/bring_your_own_model.py --model HuggingFaceTB/SmolLM2-360M  # needs internet
"""

import argparse
import os
import time
from typing import Any

import torch

import oversquash_lens as osl
from oversquash_lens import tasks, testing

TINY = (*testing.ARCHITECTURES, "native", "hooked")
TEXTS = [
    "the cat sat on the mat and the dog ran on the mat . the cat sat on the mat and the dog ran",
    "what is the last digit in this sequence : 3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3 ? answer :",
]


def load(args: argparse.Namespace) -> Any:
    """The model to analyse: ``--model`` through ``load_model``, else a tiny random one."""
    if args.model:
        return osl.load_model(args.model)
    size = {"n_layers": args.layers, "d_model": 64, "n_ctx": 1024}
    if args.tiny == "native":  # TL-native bridge: no Hugging Face files, no tokenizer
        return testing.tiny_native_model(**size)
    if args.tiny == "hooked":  # raises ImportError on transformer-lens 4 (no HookedTransformer)
        return testing.tiny_hooked_model(positional_embedding_type="rotary", **size)
    return testing.tiny_model(args.tiny, **size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="HF folder or hub name (load_model)")
    source.add_argument("--tiny", choices=TINY, help="a tiny random model built offline")
    parser.add_argument("--layers", type=int, default=4, help="layers of the --tiny model")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("OVERSQUASH_QUICK") == "1",
        help="short sweep, no ablation (CI; also OVERSQUASH_QUICK=1)",
    )
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    try:
        model = load(args)
    except ImportError as exc:
        print(f"cannot build --tiny {args.tiny} here: {exc}")
        return 2
    cfg = model.cfg
    has_text = getattr(model, "tokenizer", None) is not None
    print(
        f"model: {type(model).__name__}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"d_model {cfg.d_model}, n_ctx {cfg.n_ctx}, tokenizer: {has_text} "
        f"(load {time.perf_counter() - t0:.1f} s)"
    )

    # 1. Representational collapse: 1 … 1 (n) vs 1 … 1 1 (n+1), last layer.
    grid = [2, 8, 32, 128] if args.quick else [2, 4, 8, 16, 32, 64, 128, 256, 512]
    lengths = [n for n in grid if len(tasks.repeated_pair(model, n).extended) <= cfg.n_ctx]
    t1 = time.perf_counter()
    curve = osl.collapse_curve(model, lengths, run_in_dtype=False, progress=False)
    sep = osl.collapse_curve(
        model, lengths, task="repeat-sep", precisions="float32", run_in_dtype=False, progress=False
    )
    frame = curve.to_dataframe()
    last = frame[(frame["layer"] == cfg.n_layers) & (frame["precision"] == "float32")]
    sep_frame = sep.to_dataframe()
    sep_last = sep_frame[sep_frame["layer"] == cfg.n_layers]
    print(f"\ncollapse ({time.perf_counter() - t1:.1f} s): last-layer relative L-inf gap, n vs n+1")
    print(f"{'n':>6} {'no separators':>14} {'comma every 3':>14}")
    for n, a, b in zip(lengths, last["rel_linf"], sep_last["rel_linf"]):
        print(f"{n:>6} {a:>14.3g} {b:>14.3g}")
    for p in curve.precisions:
        n = curve.crossing_length(p)
        print(f"crossing length {p}: {n if n is not None else f'none up to n = {lengths[-1]}'}")
    bf = frame[(frame["precision"] == "bfloat16") & (frame["length"] == lengths[-1])]
    print(
        f"layers collapsed in bfloat16 at n = {lengths[-1]}: {int(bf['collapsed'].sum())} "
        f"of {cfg.n_layers + 1}"
    )

    # 2. Over-squashing toward the last token of a copy prompt (token ids: works untokenized).
    prompt = tasks.task_prompt(model, "copy-last", 8 if args.quick else 16).tokens
    small = cfg.d_model * cfg.n_layers <= 4096
    method = "exact" if small else "estimate"
    t2 = time.perf_counter()
    profile = osl.oversquash_profile(model, prompt, method=method, n_probes=4 if args.quick else 16)
    corr = profile.correlations()["sensitivity"]
    sens = profile.to_dataframe()["sensitivity"].to_numpy()
    q = max(1, len(sens) // 4)
    print(
        f"\nover-squashing ({len(sens)} tokens, sensitivity {method}, "
        f"{time.perf_counter() - t2:.1f} s)"
    )
    print(
        "Spearman(sensitivity, measure): "
        + ", ".join(f"{m} {corr[m]:+.2f}" for m in ("log_paths", "rollout", "bound"))
    )
    print(
        f"sensitivity share of the first {q} tokens: {sens[:q].sum() / sens.sum():.1%} "
        f"(even spread {q / len(sens):.1%})"
    )

    # 3. Heads: diagonal, previous-token, BOS-sink, mixing (+ ablations unless --quick).
    gen = torch.Generator().manual_seed(0)
    texts = TEXTS if has_text else torch.randint(16, cfg.d_vocab, (2, 40), generator=gen)
    t3 = time.perf_counter()
    report = osl.classify_heads(model, texts, ablation=not args.quick, progress=False)
    print(
        f"\nheads ({cfg.n_layers * cfg.n_heads}, {time.perf_counter() - t3:.1f} s): "
        + ", ".join(f"{k} {v}" for k, v in report.counts().items())
    )
    heads = report.to_dataframe()
    top = heads.loc[heads["diag_mass"].idxmax()]
    print(
        f"most diagonal head L{top['block']}H{top['head']}: diag_mass {top['diag_mass']:.2f}; "
        f"mean first-token mass {heads['first_mass'].mean():.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
