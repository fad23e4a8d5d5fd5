"""Information flow routes on a copy-the-last-digit prompt (docs/science.md §"Contribution routes
and attention flow"): does the residual decomposition sum exactly, which heads carry the last
digit to the answer position, and how much of the answer position's state comes from the first
10% of the tokens — through the route graph (τ) and through attention flow.

    python examples/routes_on_smollm2.py
    python examples/routes_on_smollm2.py --prompt "..." --digit-pos -4 --tau 0.02 --html r.html
    python examples/routes_on_smollm2.py --model path/to/hf_folder
"""

import argparse
import time

import pandas as pd

import oversquash_lens as osl
from oversquash_lens import viz
from oversquash_lens.flow.attention_flow import MAX_SIZE

DEFAULT_PROMPT = "What is the last digit in this sequence? 3 8 1 9 4 7 2 6 . Answer:"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF folder or hub name (default: embedded)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument(
        "--digit", default="6", help="the last digit's text (its last occurrence is the source)"
    )
    parser.add_argument("--tau", type=float, default=0.04, help="edge threshold of the routes")
    parser.add_argument("--top", type=int, default=10, help="edges to list")
    parser.add_argument("--html", help="write the route graph as a self-contained HTML page")
    args = parser.parse_args(argv)
    pd.set_option("display.width", 140)

    model = osl.load_model(args.model)
    t0 = time.perf_counter()
    routes = osl.information_flow(model, args.prompt, all_positions=True)
    t1 = time.perf_counter()
    labels = [lab.strip() for lab in routes.labels]
    digit = max(i for i, lab in enumerate(labels) if lab == args.digit)
    n, t = routes.n_pos, routes.target
    print(f"model {routes.model_name}: {n} tokens, target {t} {routes.labels[t]!r}, last digit")
    print(f"{args.digit!r} at position {digit}; information_flow (all positions) {t1 - t0:.1f} s")

    worst = 0.0
    for layer in range(routes.n_layers + 1):
        for p in range(n):
            _, vectors = routes.parts(layer, p)
            x = routes.resid[layer, p]
            worst = max(worst, float((vectors.sum(0) - x).norm() / x.norm()))
    print(f"identity: worst relative error of sum(parts) vs hook_resid_post = {worst:.2e}")

    edges = routes.edges(args.tau)
    print(f"\nroute graph at tau={args.tau}: {len(edges)} edges")
    heads = edges[edges["head"].map(lambda h: not isinstance(h, str))]
    into = heads[heads["target"] == t].sort_values("importance", ascending=False)
    print(f"\nattention edges into the answer position (top {args.top} by importance):")
    print(into.head(args.top).to_string(index=False))
    carry = heads[heads["source"] == digit].sort_values("flow", ascending=False)
    print(f"\nattention edges reading the last digit (position {digit}), by flow:")
    print(carry.head(args.top).to_string(index=False))

    first = max(1, round(0.1 * n))
    totals = {tau: routes.source_totals(tau) for tau in (0.0, args.tau)}
    flow = osl.attention_flow(routes.patterns) if n * routes.n_layers <= MAX_SIZE else None
    rollout = osl.attention_rollout(routes.patterns)[-1]
    print(f"\nshare of the answer position's state from the first {first} tokens (10%):")
    rows = []
    for tau, tot in totals.items():
        rows.append((f"route totals tau={tau}", float(tot[:first].sum()), float(tot.sum())))
    rows.append(("attention rollout", float(rollout[:first].sum()), float(rollout.sum())))
    if flow is not None:
        rows.append(("attention flow (max-flow)", float(flow[:first].sum()), float(flow.sum())))
    frame = pd.DataFrame(rows, columns=["measure", "first 10%", "all tokens"])
    frame["fraction"] = frame["first 10%"] / frame["all tokens"]
    print(frame.to_string(index=False))
    print("\nper-source route totals (tau=0):")
    per = pd.DataFrame({"token": routes.labels, "route_total": totals[0.0].numpy()})
    per["rollout"] = rollout.numpy()
    if flow is not None:
        per["attention_flow"] = flow.numpy()
    print(per.to_string())
    if args.html:
        viz.save_html([routes.plot(args.tau)], args.html)
        print(f"wrote {args.html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
