"""Benchmark: collapse_curve throughput vs plain batched forwards over the same tokens.

Run: python benchmarks/collapse.py [--max-len 512] [--repeat 3]
On a GPT-2-small-shaped random model and a log grid of lengths, prints for the "repeat" task
(v is a prefix of v*) and the "alternating" task (equal-length pairs) the time of

- naive:    one plain forward per length over the pair [v, v*] (right-padded batch of 2),
            what a direct implementation runs;
- minimal:  plain forwards over exactly the sequences collapse_curve runs (after prefix
            sharing and batching), i.e. the same tokens without hooks or metrics;
- collapse_curve(precisions=("float32", "bfloat16", "float16"), run_in_dtype=False).

Throughput ratio = baseline time / collapse_curve time (goal >= 0.8 against both).
The run with native bf16/fp16 forwards is timed separately (it runs the model 3 times).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, gpt2_small_shaped  # noqa: E402

from oversquash_lens import collapse_curve, tasks  # noqa: E402
from oversquash_lens.collapse.curve import _plan  # noqa: E402


def _naive(model, pairs):
    with torch.no_grad():
        for pair in pairs:
            width = max(len(pair.base), len(pair.extended))
            rows = [
                torch.cat([seq, seq[-1:].repeat(width - len(seq))])
                for seq in (pair.base, pair.extended)
            ]
            model(torch.stack(rows))


def _minimal(model, pairs, batch_size=16):
    runs = _plan(pairs, share_prefix=True)
    by_len: dict[int, list] = {}
    for toks, _ in runs:
        by_len.setdefault(len(toks), []).append(toks)
    with torch.no_grad():
        for group in by_len.values():
            for i in range(0, len(group), batch_size):
                model(torch.tensor(group[i : i + batch_size]))
    return len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    model = gpt2_small_shaped(n_ctx=max(1024, args.max_len + 8))
    lengths = [2**k for k in range(3, 20) if 2**k <= args.max_len]
    print(f"gpt2-small-shaped random model, {torch.get_num_threads()} threads, lengths {lengths}")
    for task in ("repeat", "alternating"):
        pairs = [tasks.task_pair(model, task, n) for n in lengths]
        n_tokens = sum(len(p.base) + len(p.extended) for p in pairs)
        runs = _minimal(model, pairs)
        t_naive = best_time(lambda pairs=pairs: _naive(model, pairs), repeat=args.repeat)
        t_min = best_time(lambda pairs=pairs: _minimal(model, pairs), repeat=args.repeat)
        t_curve = best_time(
            lambda task=task: collapse_curve(
                model, lengths, task=task, run_in_dtype=False, progress=False
            ),
            repeat=args.repeat,
        )
        print(f"\ntask {task!r}: {len(pairs)} pairs, {n_tokens} pair tokens, {runs} run(s)")
        print(f"  naive per-length forwards  {t_naive * 1e3:9.1f} ms")
        print(f"  minimal same-token forwards{t_min * 1e3:9.1f} ms")
        print(f"  collapse_curve (rounded)   {t_curve * 1e3:9.1f} ms")
        print(f"  throughput vs naive   {t_naive / t_curve:6.2f}x  (goal >= 0.8)")
        print(f"  throughput vs minimal {t_min / t_curve:6.2f}x  (goal >= 0.8)")
    t_native = best_time(
        lambda: collapse_curve(model, lengths, task="repeat", progress=False), repeat=1, warmup=0
    )
    print(f"\ncollapse_curve 'repeat' with native bf16 + fp16 forwards: {t_native * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
