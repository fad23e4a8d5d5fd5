"""Benchmark: classify_heads on a model shaped like the embedded SmolLM2-135M (random weights).

Run: python benchmarks/heads.py [--tokens 100] [--threads 1] [--layers 30]
Prints wall times and ratios against a plain forward pass measured in the same run:
classify_heads without ablations, with ablations (2 · layers · heads ablated passes, batched,
each starting at the head's layer), and the naive alternative (one full forward pass per
ablated head and mode), extrapolated from the measured time of a few such passes.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time  # noqa: E402

from oversquash_lens import _tl, classify_heads, testing  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    parser.add_argument("--naive-samples", type=int, default=4)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = testing.tiny_model(
        "llama", d_model=576, n_layers=args.layers, n_heads=9, n_kv_heads=3, d_vocab=64, n_ctx=256
    )
    toks = torch.randint(0, 64, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    info = _tl.model_info(model)
    print(
        f"llama-shaped: {info.n_layers} layers, {info.n_heads} heads ({info.n_kv_heads} K/V), "
        f"d_model {info.d_model}, {args.tokens} tokens, {torch.get_num_threads()} thread(s)"
    )

    def forward() -> None:
        with torch.no_grad():
            model(toks)

    t_forward = best_time(forward, repeat=3)

    def naive_one(layer: int, head: int) -> None:
        def hook(z, hook):
            z = z.clone()
            z[:, 1:, head] = 0
            return z

        _tl.run_with_hooks(model, toks, [(_tl.z_name(layer), hook)])

    n = args.naive_samples
    samples = [(i * info.n_layers // n, i % info.n_heads) for i in range(n)]
    start = time.perf_counter()
    for layer, head in samples:
        naive_one(layer, head)
    per_naive = (time.perf_counter() - start) / n
    t_naive = per_naive * 2 * info.n_layers * info.n_heads

    t_patterns = best_time(
        lambda: classify_heads(model, toks, ablation=False, progress=False), repeat=2
    )
    start = time.perf_counter()
    report = classify_heads(model, toks, progress=False)
    t_full = time.perf_counter() - start

    rows = [
        ("plain forward pass", t_forward, "1.00"),
        ("classify_heads(ablation=False)", t_patterns, f"{t_patterns / t_forward:.2f}"),
        ("classify_heads (with ablations)", t_full, f"{t_full / t_forward:.1f}"),
        ("naive ablations (extrapolated)", t_naive, f"{t_naive / t_forward:.1f}"),
    ]
    for name, seconds, ratio in rows:
        print(f"{name:34s} {seconds:9.2f} s   x forward: {ratio}")
    print(f"naive / batched ablation time: {t_naive / max(t_full - t_patterns, 1e-9):.2f}")
    print("labels:", report.counts().to_dict())


if __name__ == "__main__":
    main()
