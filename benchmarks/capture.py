"""Benchmark: capture_residuals vs a plain forward, and its peak memory vs run_with_cache.

Run: python benchmarks/capture.py [--tokens 512]
Prints the time ratio capture_residuals / plain forward (goal <= 1.15) and the extra peak
memory (peak RSS above the loaded model, measured in a fresh process per variant) of
capture_residuals (last position, and all positions) versus a full ``run_with_cache``.
"""

import argparse
import multiprocessing as mp
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, gpt2_small_shaped  # noqa: E402

from oversquash_lens import capture_residuals  # noqa: E402


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next reading covers one variant only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak(variant: str, n_tokens: int, queue) -> None:
    torch.set_num_threads(1)
    model = gpt2_small_shaped()
    toks = torch.randint(
        0, model.cfg.d_vocab, (1, n_tokens), generator=torch.Generator().manual_seed(0)
    )
    base = _status_mib("VmRSS")
    _reset_peak()
    if variant == "forward":
        with torch.no_grad():
            model(toks)
    elif variant == "capture_last":
        capture_residuals(model, toks, positions=-1)
    elif variant == "capture_all":
        capture_residuals(model, toks)
    elif variant == "run_with_cache":
        with torch.no_grad():
            _, cache = model.run_with_cache(toks)
        del cache
    queue.put(_status_mib("VmHWM") - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    model = gpt2_small_shaped()
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(0, model.cfg.d_vocab, (1, args.tokens), generator=gen)

    def forward():
        with torch.no_grad():
            model(toks)

    t_fwd = best_time(forward, repeat=args.repeat)
    t_last = best_time(lambda: capture_residuals(model, toks, positions=-1), repeat=args.repeat)
    t_all = best_time(lambda: capture_residuals(model, toks), repeat=args.repeat)
    print(f"gpt2-small-shaped, {args.tokens} tokens, {torch.get_num_threads()} threads")
    print(f"plain forward                   {t_fwd * 1e3:8.1f} ms  (baseline)")
    print(
        f"capture_residuals(positions=-1) {t_last * 1e3:8.1f} ms  ratio {t_last / t_fwd:.3f}"
        "  (goal <= 1.15)"
    )
    print(f"capture_residuals(all)          {t_all * 1e3:8.1f} ms  ratio {t_all / t_fwd:.3f}")

    ctx = mp.get_context("spawn")
    peaks = {}
    for variant in ("forward", "capture_last", "capture_all", "run_with_cache"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_peak, args=(variant, args.tokens, queue))
        proc.start()
        peaks[variant] = queue.get()
        proc.join()
    print("peak RSS above the loaded model (MiB, fresh process each):")
    for variant, mib in peaks.items():
        print(f"  {variant:16s} {mib:8.1f}")
    full = max(peaks["run_with_cache"], 1e-9)
    print(
        f"capture_residuals(positions=-1) / run_with_cache peak: {peaks['capture_last'] / full:.3f}"
    )
    print(
        f"capture_residuals(all) / run_with_cache peak:          {peaks['capture_all'] / full:.3f}"
    )


if __name__ == "__main__":
    main()
