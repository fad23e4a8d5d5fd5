"""Information flow routes on a copy-the-last-digit prompt (docs/science.md §"Contribution routes
and attention flow"): do the parts sum exactly to the residual, which heads carry the last digit
to the answer position, and how much of the answer position's state comes from the first 10% of
the tokens — through the route graph, attention rollout and attention flow.

    python examples/routes_on_smollm2.py
    python examples/routes_on_smollm2.py --prompt "..." --digit 7 --tau 0.02 --html r.html
    python examples/routes_on_smollm2.py --model path/to/hf_folder
"""

import argparse
import time

import pandas as pd
import torch

import oversquash_lens as osl
from oversquash_lens import viz
from oversquash_lens.flow.attention_flow import MAX_SIZE

# The trailing space is its own token in SmolLM2's tokenizer: the answer position then
# predicts the digit itself.
DEFAULT_PROMPT = "What is the last digit in this sequence? 3 8 1 9 4 7 2 6 . Answer: "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF folder or hub name (default: embedded)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument(
        "--digit", default="6", help="the last digit (its last token is the source)"
    )
    parser.add_argument("--tau", type=float, default=0.04, help="edge threshold of the routes")
    parser.add_argument("--top", type=int, default=8, help="rows to list")
    parser.add_argument("--html", help="write the route graph as a self-contained HTML page")
    args = parser.parse_args(argv)
    pd.set_option("display.width", 140)

    model = osl.load_model(args.model)
    t0 = time.perf_counter()
    routes = osl.information_flow(model, args.prompt, all_positions=True)
    seconds = time.perf_counter() - t0
    words = [lab.strip() for lab in routes.labels]
    digit = max(i for i, w in enumerate(words) if w == args.digit)
    n, t, n_heads = routes.n_pos, routes.target, routes.n_heads
    print(f"model {routes.model_name}: {n} tokens; answer position {t} {routes.labels[t]!r};")
    print(f"last digit {args.digit!r} at position {digit}; information_flow(all) {seconds:.1f} s")
    with torch.no_grad():
        probs = model(routes.tokens[None].to(routes.resid.device))[0, -1].softmax(-1)
    top = [(model.tokenizer.decode([i]), round(float(p), 3)) for p, i in zip(*probs.topk(5))]
    want = model.tokenizer.encode(args.digit, add_special_tokens=False)[-1]
    print(f"next-token top 5: {top}; p({args.digit!r}) = {float(probs[want]):.3f}")

    worst = 0.0
    for layer in range(routes.n_layers + 1):
        for p in range(n):
            _, vectors = routes.parts(layer, p)
            x = routes.resid[layer, p]
            worst = max(worst, float((vectors.sum(0) - x).norm() / x.norm()))
    print(f"identity: worst relative error of sum(parts) vs hook_resid_post = {worst:.2e}")

    rows = []  # the direct part head h moves from the digit into the answer position, per block
    for layer in range(1, routes.n_layers + 1):
        imp = routes.importance(layer, t)[1 : 1 + n_heads * (t + 1)].reshape(n_heads, t + 1)
        for h in range(n_heads):
            alpha = float(routes.patterns[layer - 1, h, t, digit])
            rows.append((f"L{layer - 1}H{h}", float(imp[h, digit]), alpha))
    direct = pd.DataFrame(rows, columns=["head", "importance", "attention"])
    direct = direct.sort_values("importance", ascending=False).head(args.top)
    print("\nheads moving the digit straight into the answer position (importance of the part):")
    print(direct.to_string(index=False))

    for by_head in (True, False):
        edges = routes.edges(args.tau, by_head=by_head)
        attn = edges[edges["head"].map(lambda h: h not in ("mlp", "residual"))]
        reads = attn[attn["source"] == digit].sort_values("flow", ascending=False)
        kind = "per head" if by_head else "heads summed"
        print(
            f"\nroute graph ({kind}) at tau={args.tau}: {len(edges)} edges, {len(attn)} attention;"
        )
        print(f"edges reading the digit, by flow ({len(reads)}):")
        print(reads.head(args.top).to_string(index=False))

    first = max(1, round(0.1 * n))
    measures = {
        "route totals tau=0 (per head)": routes.source_totals(0.0),
        "route totals tau=0 (heads summed)": routes.source_totals(0.0, by_head=False),
        f"route totals tau={args.tau} (per head)": routes.source_totals(args.tau),
        f"route totals tau={args.tau} (heads summed)": routes.source_totals(
            args.tau, by_head=False
        ),
        "attention rollout": osl.attention_rollout(routes.patterns)[-1].double().cpu(),
    }
    if n * routes.n_layers <= MAX_SIZE:
        measures["attention flow (max-flow)"] = osl.attention_flow(routes.patterns)
    share = pd.DataFrame(
        [(k, float(v[:first].sum()), float(v.sum())) for k, v in measures.items()],
        columns=["measure", f"first {first} tokens", "all tokens"],
    )
    share["fraction"] = share[f"first {first} tokens"] / share["all tokens"]
    print(f"\nshare of the answer position's state from the first {first} tokens (10%):")
    print(share.to_string(index=False))
    per = pd.DataFrame({k: v.numpy() for k, v in measures.items()})
    per.insert(0, "token", list(routes.labels))
    print("\nper source:")
    print(per.to_string(float_format=lambda v: f"{v:.4f}"))
    if args.html:
        viz.save_html([routes.plot(args.tau)], args.html)
        print(f"wrote {args.html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
