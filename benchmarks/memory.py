"""Benchmark: peak memory of capture_residuals and token_sensitivity(method="estimate") at long
context, against a plain forward's peak measured in the same run.

Run: python benchmarks/memory.py [--tokens 4096] [--probes 2] [--cap-gib 14]

On a GPT-2-small-shaped random model (12 layers, d_model 768, 12 heads, d_vocab 50257,
n_ctx = tokens) every variant runs in a fresh process (spawn): build the model, read VmRSS,
reset the kernel's peak mark (``/proc/self/clear_refs`` = 5), run once, and report
VmHWM − VmRSS-before, i.e. the peak RSS above the loaded model. Each child gets an
address-space cap (``--cap-gib`` above what it has mapped) so a variant that would need more
memory than the machine can spare fails with a clear "exceeded" line instead of swapping or
taking the machine down.

Variants:
- forward:          ``model(tokens)`` under ``torch.no_grad()`` (the baseline);
- capture_last:     ``capture_residuals(model, tokens, positions=-1)``;
- capture_all:      ``capture_residuals(model, tokens)`` (keeps [13, pos, 768] float32);
- estimate:         ``token_sensitivity(model, tokens, method="estimate", n_probes=P,
                    chunk_size=1)``.

Budgets (PASS/FAIL):
- capture_last, capture_all: peak ≤ 1.10 × forward peak + the states kept (0 for the last
  position; (n_layers + 1)·pos·d_model·4 bytes for all positions) — hooks keep only what is
  asked for, never a cache.
- estimate: one grad-enabled forward whose autograd graph is kept for all layers, then one
  batched backward per chunk of probes. With ``chunk_size=1`` the backward's working set is
  one cotangent's: sensitivity.py sizes it as ``4·m·(24·d + 4·H·m)`` bytes (m positions,
  d = d_model, H heads). The graph a training step keeps is about the forward's saved
  activations: per layer ~``4·m·(16·d + 3·H·m)`` bytes (activations of the linear layers and
  norms, and the attention scores / pattern / mask per head). Budget = 1.25 × (graph +
  one-cotangent working set) + the logits (``4·m·d_vocab``, built by the forward). The
  measured peak is reported against it and against the forward peak.
"""

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gpt2_small_shaped  # noqa: E402

from oversquash_lens import capture_residuals, token_sensitivity  # noqa: E402

MIB = 1 << 20
VARIANTS = ("forward", "capture_last", "capture_all", "estimate")


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) so the reading covers this variant only."""
    Path("/proc/self/clear_refs").write_text("5")


def _child(variant: str, n_tokens: int, probes: int, cap_gib: float, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    model = gpt2_small_shaped(n_ctx=n_tokens)
    toks = torch.randint(
        0, model.cfg.d_vocab, (1, n_tokens), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():  # warm-up (every variant): TL 4 bridges wire hooks on first run
        model(toks[:, :8])
    mapped = _status_mib("VmSize") * MIB
    cap = int(mapped + cap_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    base = _status_mib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    try:
        if variant == "forward":
            with torch.no_grad():
                model(toks)
        elif variant == "capture_last":
            capture_residuals(model, toks, positions=-1)
        elif variant == "capture_all":
            capture_residuals(model, toks)
        elif variant == "estimate":
            token_sensitivity(
                model, toks, method="estimate", n_probes=probes, chunk_size=1, progress=False
            )
        error = ""
    except (MemoryError, RuntimeError) as exc:  # the address-space cap was hit
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    queue.put((_status_mib("VmHWM") - base, time.perf_counter() - start, error))


def _run(variant: str, args) -> tuple[float, float, str]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_child, args=(variant, args.tokens, args.probes, args.cap_gib, args.threads, queue)
    )
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return float("nan"), float("nan"), f"child exited with code {proc.exitcode}"
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--probes", type=int, default=2)
    parser.add_argument("--cap-gib", type=float, default=14.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()

    m, d, h, layers, vocab = args.tokens, 768, 12, 12, 50257
    kept_all = (layers + 1) * m * d * 4 / MIB
    logits = 4 * m * vocab / MIB
    graph = layers * 4 * m * (16 * d + 3 * h * m) / MIB
    cotangent = 4 * m * (24 * d + 4 * h * m) / MIB
    print(
        f"gpt2-small-shaped (12 layers, d_model 768, 12 heads), {m} tokens, "
        f"{args.threads} threads, address-space cap +{args.cap_gib:g} GiB per child"
    )
    results = {}
    for variant in args.variants:
        peak, seconds, error = _run(variant, args)
        results[variant] = peak
        note = f"  !! {error}" if error else ""
        print(f"  {variant:13s} peak above model {peak:9.1f} MiB   wall {seconds:7.1f} s{note}")
        sys.stdout.flush()
        if error:
            results[variant] = float("nan")

    fwd = results.get("forward", float("nan"))
    print("budgets (peak RSS above the loaded model):")
    for variant, extra in (("capture_last", 0.0), ("capture_all", kept_all)):
        if variant in results:
            budget = 1.10 * fwd + extra
            peak = results[variant]
            verdict = "PASS" if peak <= budget else "FAIL"
            print(
                f"  {variant:13s} {peak:9.1f} MiB <= 1.10 x forward {fwd:.1f} + kept "
                f"{extra:.1f} = {budget:9.1f} MiB: {verdict}  (ratio to forward {peak / fwd:.3f})"
            )
    if "estimate" in results:
        budget = 1.25 * (graph + cotangent) + logits
        peak = results["estimate"]
        verdict = "PASS" if peak <= budget else "FAIL"
        print(
            f"  estimate      {peak:9.1f} MiB <= 1.25 x (graph {graph:.0f} + one cotangent "
            f"{cotangent:.0f}) + logits {logits:.0f} = {budget:9.1f} MiB: {verdict}  "
            f"(ratio to forward {peak / fwd:.2f})"
        )


if __name__ == "__main__":
    main()
