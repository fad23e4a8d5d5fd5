"""Benchmark: target-row attention rollout and batched Jacobian sensitivity vs their baselines.

Run: python benchmarks/paths.py [--sizes 2048 4096] [--layers 12] [--heads 4] [--threads N]
     [--quick]
On a shared, oversubscribed machine many small parallel ops stall on thread barriers; compare
with ``--threads 1`` there.

Prints, measured in this run:
1. attention_rollout (target row only, every depth) vs the full-matrix rollout R_l = A_l R_{l-1}
   (n x n products, what the row-vector scheme avoids; goal >= 5x at n=2048, growing with n) and
   vs one plain read of the patterns, ``patterns.sum()`` (goal: within 3x), on random
   row-stochastic causal patterns [layer, head, query, key] in float32.
2. token_sensitivity(method="exact") vs a naive loop of one backward per output coordinate
   (one forward, retain_graph) and vs torch.autograd.functional.jacobian (goal >= 5x over the
   naive loop), on a small GPT-2-style model; then the estimator's time and its error vs exact.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time  # noqa: E402

from oversquash_lens import _tl, attention_rollout, testing, token_sensitivity  # noqa: E402


def random_patterns(layers: int, heads: int, n: int, seed: int = 0) -> torch.Tensor:
    """Row-stochastic causal float32 patterns, built layer by layer (no big temporaries)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(layers, heads, n, n)
    for layer in range(layers):
        block = out[layer]
        block.uniform_(generator=gen)
        block.tril_()
        block.div_(block.sum(-1, keepdim=True))
    return out


def full_matrix_rollout(patterns: torch.Tensor, target: int = -1, residual: float = 0.5):
    """Reference: build every A_l (n x n) and multiply the full products; keep row ``target``."""
    n = patterns.shape[-1]
    eye = torch.eye(n, dtype=patterns.dtype)
    prod = None
    rows = []
    for layer in range(patterns.shape[0]):
        a = residual * eye + (1 - residual) * patterns[layer].mean(0)
        a /= a.sum(-1, keepdim=True)
        prod = a if prod is None else a @ prod
        rows.append(prod[target].clone())
    return torch.stack(rows)


def bench_rollout(sizes: list[int], layers: int, heads: int, repeat: int) -> None:
    print(f"== attention rollout: {layers} layers, {heads} heads, float32, target = last token")
    print(
        f"{'n':>6} {'sum() ms':>9} {'rollout ms':>11} {'full ms':>10} "
        f"{'full/rollout':>13} {'rollout/sum':>12} {'max |diff|':>11}"
    )
    for n in sizes:
        pats = random_patterns(layers, heads, n)
        t_sum = best_time(lambda pats=pats: pats.sum(), repeat=repeat)
        t_roll = best_time(lambda pats=pats: attention_rollout(pats), repeat=repeat)
        start = time.perf_counter()
        ref = full_matrix_rollout(pats)
        t_full = time.perf_counter() - start  # one run: it is the slow baseline
        diff = float((attention_rollout(pats) - ref).abs().max())
        print(
            f"{n:>6} {t_sum * 1e3:>9.1f} {t_roll * 1e3:>11.1f} {t_full * 1e3:>10.0f} "
            f"{t_full / t_roll:>12.1f}x {t_roll / t_sum:>11.2f}x {diff:>11.2e}"
        )
        del pats, ref
    print("goals: full/rollout >= 5x at n=2048 and growing with n; rollout/sum <= 3x")


def _h0_runner(model, toks, layers):
    """f(x) -> [layer, d_model] target residuals with h^(0) replaced by x (for the baselines)."""

    def run(x):
        store = {}

        def keep(layer):
            def hook(a, hook):
                store[layer] = a

            return hook

        hooks = [(_tl.resid_name(0), lambda a, hook: x)]
        hooks += [(_tl.resid_name(layer), keep(layer)) for layer in layers]
        with model.hooks(fwd_hooks=hooks):
            model(toks.expand(x.shape[0], -1))
        return torch.stack([store[layer][0, -1] for layer in layers])

    return run


def naive_exact(model, toks) -> torch.Tensor:
    """One forward, then one backward per output coordinate (layer, c) with retain_graph."""
    layers = range(1, model.cfg.n_layers + 1)
    name = _tl.resid_name(0)
    x = _tl.capture(model, toks, [name])[name].requires_grad_(True)
    with _tl.preserved(model, freeze=True):
        out = _h0_runner(model, toks, layers)(x)  # [L, d]
        sq = torch.zeros(out.shape[0], toks.shape[1], dtype=torch.float64)
        for layer in range(out.shape[0]):
            for c in range(out.shape[1]):
                (g,) = torch.autograd.grad(out[layer, c], x, retain_graph=True)
                sq[layer] += g[0].double().square().sum(-1)
    _tl.release_graphs(model)
    return sq.sqrt()


def jacobian_exact(model, toks, *, vectorize: bool) -> torch.Tensor:
    layers = range(1, model.cfg.n_layers + 1)
    name = _tl.resid_name(0)
    x = _tl.capture(model, toks, [name])[name]
    with _tl.preserved(model, freeze=True):
        jac = torch.autograd.functional.jacobian(
            _h0_runner(model, toks, layers), x, vectorize=vectorize
        )
    _tl.release_graphs(model)
    return jac[:, :, 0].square().sum((1, 3)).sqrt()


def bench_sensitivity(d_model: int, n_layers: int, n_tokens: int, repeat: int) -> None:
    model = testing.tiny_model(
        "gpt2", d_model=d_model, n_layers=n_layers, n_heads=4, n_ctx=max(128, n_tokens)
    )
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(4, model.cfg.d_vocab, (1, n_tokens), generator=gen)
    print(
        f"\n== token_sensitivity: GPT-2-style, {n_layers} layers, d_model {d_model}, "
        f"{n_tokens} tokens ({n_layers * d_model} output coordinates)"
    )
    exact = token_sensitivity(model, toks).values
    for name, fn in [
        ("naive loop", lambda: naive_exact(model, toks)),
        ("jacobian", lambda: jacobian_exact(model, toks, vectorize=False)),
        ("jacobian vectorize", lambda: jacobian_exact(model, toks, vectorize=True)),
    ]:
        err = float(((fn().float() - exact).abs() / exact).max())
        print(f"  check {name:<19} max rel diff vs ours {err:.1e}")
    t_ours = best_time(lambda: token_sensitivity(model, toks), repeat=repeat)
    t_naive = best_time(lambda: naive_exact(model, toks), repeat=max(1, repeat // 2))
    t_jac = best_time(lambda: jacobian_exact(model, toks, vectorize=False), repeat=1)
    t_jacv = best_time(lambda: jacobian_exact(model, toks, vectorize=True), repeat=repeat)
    print(f"  exact (batched, ours)        {t_ours * 1e3:9.1f} ms")
    print(
        f"  naive per-coordinate loop    {t_naive * 1e3:9.1f} ms  ours is {t_naive / t_ours:.1f}x"
        " faster (goal >= 5x)"
    )
    print(
        f"  autograd.functional.jacobian {t_jac * 1e3:9.1f} ms  ours is "
        f"{t_jac / t_ours:.1f}x faster"
    )
    print(
        f"  jacobian(vectorize=True)     {t_jacv * 1e3:9.1f} ms  ours is "
        f"{t_jacv / t_ours:.1f}x faster"
    )
    for probes in (16, 64):
        t_est = best_time(
            lambda p=probes: token_sensitivity(model, toks, method="estimate", n_probes=p),
            repeat=repeat,
        )
        rels = []
        for seed in range(5):
            est = token_sensitivity(model, toks, method="estimate", n_probes=probes, seed=seed)
            rels.append(((est.values - exact).abs() / exact).flatten())
        rel = torch.cat(rels)
        print(
            f"  estimate, {probes:>2} probes           {t_est * 1e3:9.1f} ms  "
            f"({t_ours / t_est:.1f}x faster than exact); relative error over 5 seeds: "
            f"median {float(rel.median()):.3f}, 90th pct {float(rel.quantile(0.9)):.3f}, "
            f"max {float(rel.max()):.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [256, 512] if args.quick else args.sizes
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_rollout(sizes, args.layers, args.heads, args.repeat)
    if args.quick:
        bench_sensitivity(d_model=32, n_layers=2, n_tokens=8, repeat=2)
    else:
        bench_sensitivity(d_model=128, n_layers=4, n_tokens=32, repeat=args.repeat)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
