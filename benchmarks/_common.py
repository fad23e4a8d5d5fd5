"""Helpers shared by the benchmark scripts (timing with warm-up, peak memory in a subprocess)."""

import statistics
import time
from collections.abc import Callable
from pathlib import Path


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` size field (VmRSS, VmHWM, VmSize) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def best_time(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs after ``warmup`` runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpt2_small_shaped(n_ctx: int = 1024, d_vocab: int = 50257):
    """A random-weight model with GPT-2 small's shape (12 layers, d_model 768, 12 heads)."""
    from oversquash_lens import testing

    return testing.tiny_model(
        "gpt2", d_model=768, n_layers=12, n_heads=12, n_ctx=n_ctx, d_vocab=d_vocab
    )
