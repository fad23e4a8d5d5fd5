"""Benchmark: information flow routes and attention flow vs their baselines, same run.

Run: OMP_NUM_THREADS=1 OVERSQUASH_LENS_CACHE=~/.cache/oversquash_lens python benchmarks/routes.py
     [--tokens 256] [--all-tokens 128] [--repeat 3] [--threads 1]

Prints, measured in this run:
1. information_flow for one target vs one plain forward pass (``model(tokens)`` under no_grad)
   at ``--tokens`` tokens on the embedded model (SmolLM2-135M, loaded from the cache), and the
   route graph walk at τ = 0.04 on top of it (nodes computed as the walk reaches them).
2. information_flow(all_positions=True) at ``--all-tokens`` tokens vs a plain forward there.
3. attention_flow (igraph push-relabel) vs the Edmonds–Karp reference (networkx, the
   algorithm of Abnar & Zuidema's code) at n = 20, L = 3 on random patterns, and vs networkx
   preflow_push; the largest difference of the flow values.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time  # noqa: E402

import oversquash_lens as osl  # noqa: E402
from oversquash_lens.flow.rollout import rollout_matrices  # noqa: E402


def prompt(model, n: int) -> torch.Tensor:
    """``n`` token ids of a repeated digit-sequence question (BOS first)."""
    text = "What is the last digit in this sequence? " + " ".join(str(i % 10) for i in range(n))
    toks = model.to_tokens(text)[:, :n]
    return toks


def networkx_flows(caps: torch.Tensor, t: int, flow_func) -> list[float]:
    import networkx as nx

    n_layers, m = caps.shape[0], caps.shape[-1]
    graph = nx.DiGraph()
    for layer in range(n_layers):
        for q in range(m):
            for k in range(q + 1):
                c = float(caps[layer, q, k])
                if c > 0:
                    graph.add_edge((layer, k), (layer + 1, q), capacity=c)
    return [
        nx.maximum_flow_value(graph, (0, j), (n_layers, t), flow_func=flow_func)
        for j in range(t + 1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--all-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")

    model = osl.load_model()
    for n, all_positions in ((args.tokens, False), (args.all_tokens, True)):
        toks = prompt(model, n)

        def forward(toks=toks):
            with torch.no_grad():
                model(toks)

        t_fwd = best_time(forward, repeat=args.repeat)
        t_flow = best_time(
            lambda toks=toks, a=all_positions: osl.information_flow(model, toks, all_positions=a),
            repeat=args.repeat,
        )
        routes = osl.information_flow(model, toks, all_positions=all_positions)
        what = "all positions" if all_positions else "one target"
        print(
            f"information_flow ({what}) at {n} tokens: {t_flow:.3f} s; plain forward "
            f"{t_fwd:.3f} s; ratio {t_flow / t_fwd:.1f}x; identity worst relative error "
            f"{float(routes.identity_error.max()):.2e}"
        )
        if not all_positions:  # the walk alone, on fresh results (nodes not yet memoised)
            walks = []
            for _ in range(args.repeat):
                fresh = osl.information_flow(model, toks)
                start = time.perf_counter()
                fresh.source_totals(0.04)
                walks.append(time.perf_counter() - start)
            t_walk = statistics.median(walks)
            print(
                f"  + route walk at tau=0.04 (lazy nodes): {t_walk:.3f} s "
                f"({t_walk / t_fwd:.2f}x a forward), {len(routes.edges(0.04))} edges"
            )

    import networkx.algorithms.flow as nxf

    gen = torch.Generator().manual_seed(0)
    p = torch.rand(3, 4, 20, 20, generator=gen, dtype=torch.float64).tril()
    p = p / p.sum(-1, keepdim=True)
    caps = rollout_matrices(p, residual=0.5)
    t_ig = best_time(lambda: osl.attention_flow(p), repeat=args.repeat)
    t_ek = best_time(lambda: networkx_flows(caps, 19, nxf.edmonds_karp), repeat=args.repeat)
    t_pp = best_time(lambda: networkx_flows(caps, 19, nxf.preflow_push), repeat=args.repeat)
    diff = max(
        abs(a - b)
        for a, b in zip(osl.attention_flow(p).tolist(), networkx_flows(caps, 19, nxf.edmonds_karp))
    )
    print(
        f"attention_flow n=20 L=3: {t_ig * 1e3:.2f} ms; Edmonds-Karp reference "
        f"{t_ek * 1e3:.1f} ms ({t_ek / t_ig:.0f}x slower); networkx preflow_push "
        f"{t_pp * 1e3:.1f} ms ({t_pp / t_ig:.0f}x); max |diff| {diff:.1e}"
    )


if __name__ == "__main__":
    main()
