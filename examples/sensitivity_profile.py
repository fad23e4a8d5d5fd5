"""Over-squashing profile of one prompt (docs/science.md §3, §5): causal path counts,
attention rollout,
the Theorem 5.1 bound and the measured Jacobian sensitivity of the last token, side by side.

    python examples/sensitivity_profile.py
    python examples/sensitivity_profile.py --prompt "The cat sat on the mat. The cat" --html p.html
    python examples/sensitivity_profile.py --model path/to/hf_folder --quick
"""

import argparse
import os
import time

import numpy as np
import pandas as pd

import oversquash_lens as osl
from oversquash_lens import viz

DEFAULT_PROMPT = "What is the last digit in this sequence? 3 1 4 1 5 9 2 6 5 3 5 8 9 7. Answer:"
QUICK_PROMPT = "What is the last digit in this sequence? 3 1 4 1 5. Answer:"

QUICK_ENV = os.environ.get("OVERSQUASH_QUICK") == "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF folder or hub name (default: embedded)")
    parser.add_argument("--prompt", help="text to profile (default: a copy-the-last-digit prompt)")
    parser.add_argument("--target", type=int, default=-1, help="receiving position")
    parser.add_argument("--method", choices=["estimate", "exact"], default="estimate")
    parser.add_argument("--probes", type=int, default=16, help="probes per layer (estimate)")
    parser.add_argument("--layer", type=int, default=-1, help="depth shown (1..n_layers, -1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=QUICK_ENV,
        help="shorter prompt, 4 probes (CI); also OVERSQUASH_QUICK=1",
    )
    parser.add_argument("--html", help="write a self-contained HTML view here")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    model = osl.load_model(args.model)
    t1 = time.perf_counter()
    profile = osl.oversquash_profile(
        model,
        args.prompt or (QUICK_PROMPT if args.quick else DEFAULT_PROMPT),
        target=args.target,
        method=args.method,
        n_probes=4 if args.quick else args.probes,
        layer=args.layer,
    )
    t2 = time.perf_counter()
    frame = profile.to_dataframe()
    n = len(frame)
    print(
        f"{n} tokens, target {profile.target}, depth {profile.layer} of {profile.n_layers}, "
        f"sensitivity {profile.sensitivity.method} (load {t1 - t0:.1f} s, profile {t2 - t1:.1f} s)"
    )
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(frame.to_string(index=False, float_format="{:.4g}".format))
        print("\nSpearman correlation between measures:")
        print(profile.correlations().round(3).to_string())
    sens = frame["sensitivity"].to_numpy()
    q = max(1, n // 4)
    share = sens[:q].sum() / sens.sum()
    print(f"\nsensitivity share of the first {q} tokens: {share:.1%} (even spread {q / n:.1%})")
    if args.html:
        measures = {
            "log paths": frame["log_paths"],
            "rollout": frame["rollout"],
            "log bound": np.log(frame["bound"].clip(lower=1e-300)),
            "log sensitivity": np.log(frame["sensitivity"].clip(lower=1e-300)),
        }
        view = viz.colored_tokens_multi([str(t) for t in frame["token"]], measures)
        print(f"wrote {viz.save_html([view, profile.plot()], args.html)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
