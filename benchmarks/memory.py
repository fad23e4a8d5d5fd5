"""Benchmark: peak memory of capture_residuals and token_sensitivity(method="estimate") at long
context, against baselines measured in the same run.

Run: python benchmarks/memory.py [--tokens 4096] [--estimate-tokens 512] [--probes 2]
                                 [--cap-gib 14] [--threads 2] [--graph-only]
     (``--estimate-tokens 4096 --graph-only --skip-capture`` measures the graph part at 4096)

Model: GPT-2-small-shaped, random weights (12 layers, d_model 768, 12 heads, d_vocab 50257,
n_ctx = the largest length asked for). Every variant runs in a fresh process (spawn): build the
model, run a short warm-up forward (TL 4 bridges wire hooks on first use), read VmRSS, reset
the kernel's peak mark (``/proc/self/clear_refs`` = 5), run once, and report VmHWM minus the
VmRSS before: the peak RSS above the loaded model. Each child gets an address-space cap
(``--cap-gib`` above what it has mapped) so a variant that needs more than the machine can
spare stops with an "exceeded" line instead of pushing a shared machine out of memory.

At ``--tokens`` (default 4096):
- forward:       ``model(tokens)`` under ``torch.no_grad()`` — the baseline;
- capture_last:  ``capture_residuals(model, tokens, positions=-1)``;
- capture_all:   ``capture_residuals(model, tokens)`` (keeps [13, pos, 768] float32).
  Budget: peak <= 1.10 x forward peak + the states kept (0 for the last position,
  13·pos·768·4 bytes for all): the hooks keep what is asked for, never a cache.

At ``--estimate-tokens`` (default 512; 4096 needs ~15 GiB and well over 30 minutes on 2 cores):
- graph:    a grad-enabled forward whose input residual h^(0) is a leaf requiring grad, the
            output kept alive: the autograd graph any Jacobian of h^(0) has to keep;
- estimate: ``token_sensitivity(model, tokens, method="estimate", n_probes=P, chunk_size=1)``.
  It keeps that graph and runs one batched backward per (layer, chunk of probes). With
  ``chunk_size=1`` (the smallest setting; also what the default picks at these lengths, from
  its ~512 MiB budget) a backward's working set is one cotangent's, which sensitivity.py sizes
  as ``4·m·(24·d + 4·H·m)`` bytes (m positions, d = d_model, H heads).
  Budget: peak <= graph peak + 1.25 x that one-cotangent figure.
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
from _common import status_mib as _status_mib  # noqa: E402

from oversquash_lens import _tl, capture_residuals, token_sensitivity  # noqa: E402

MIB = 1 << 20
D_MODEL, HEADS, LAYERS = 768, 12, 12


def _graph(model, toks) -> None:
    """Grad-enabled forward from a leaf h^(0); peak measured while the graph is alive."""

    def replace(x, hook):
        return leaf

    name = _tl.resid_name(0)
    leaf = _tl.capture(model, toks, [name], stop_at_layer=1)[name].requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = _tl.run_with_hooks(model, toks, [(name, replace)], grad=True, freeze=True)
        assert logits.grad_fn is not None
    finally:
        _tl.release_graphs(model)


def _child(variant: str, n_tokens: int, n_ctx: int, args, queue) -> None:
    torch.set_num_threads(args.threads)
    model = gpt2_small_shaped(n_ctx=n_ctx)
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(0, model.cfg.d_vocab, (1, n_tokens), generator=gen)
    with torch.no_grad():
        model(toks[:, :8])
    cap = int(_status_mib("VmSize") * MIB + args.cap_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    base = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
    start, error = time.perf_counter(), ""
    try:
        if variant == "forward":
            with torch.no_grad():
                model(toks)
        elif variant == "capture_last":
            capture_residuals(model, toks, positions=-1)
        elif variant == "capture_all":
            capture_residuals(model, toks)
        elif variant == "graph":
            _graph(model, toks)
        elif variant == "estimate":
            token_sensitivity(
                model, toks, method="estimate", n_probes=args.probes, chunk_size=1, progress=False
            )
    except (MemoryError, RuntimeError) as exc:  # the address-space cap was hit
        error = f"exceeded the cap: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    queue.put((_status_mib("VmHWM") - base, time.perf_counter() - start, error))


def _run(variant: str, n_tokens: int, n_ctx: int, args) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(variant, n_tokens, n_ctx, args, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        peak, seconds, error = float("nan"), float("nan"), f"child exit code {proc.exitcode}"
    else:
        peak, seconds, error = queue.get()
    note = f"   !! {error}" if error else ""
    print(f"  {variant:13s} peak above model {peak:9.1f} MiB   wall {seconds:7.1f} s{note}")
    sys.stdout.flush()
    return float("nan") if error else peak


def _verdict(name: str, peak: float, budget: float, how: str) -> None:
    verdict = "PASS" if peak <= budget else "FAIL"  # NaN (not measured) -> FAIL
    print(f"  {name:13s} {peak:9.1f} MiB <= {how} = {budget:9.1f} MiB: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--estimate-tokens", type=int, default=512)
    parser.add_argument("--probes", type=int, default=2)
    parser.add_argument("--cap-gib", type=float, default=14.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-capture", action="store_true")
    parser.add_argument("--skip-estimate", action="store_true")
    parser.add_argument(
        "--graph-only", action="store_true", help="at --estimate-tokens, skip the estimate run"
    )
    args = parser.parse_args()
    n_ctx = max(args.tokens, args.estimate_tokens)
    start = time.perf_counter()
    print(
        f"gpt2-small-shaped random model (12 layers, d_model 768, 12 heads, n_ctx {n_ctx}), "
        f"{args.threads} threads, address-space cap +{args.cap_gib:g} GiB per child process"
    )

    if not args.skip_capture:
        m = args.tokens
        print(f"capture_residuals at {m} tokens:")
        peaks = {v: _run(v, m, n_ctx, args) for v in ("forward", "capture_last", "capture_all")}
        fwd, kept = peaks["forward"], (LAYERS + 1) * m * D_MODEL * 4 / MIB
        for variant, extra in (("capture_last", 0.0), ("capture_all", kept)):
            how = f"1.10 x forward {fwd:.1f} + kept {extra:.1f}"
            _verdict(variant, peaks[variant], 1.10 * fwd + extra, how)
            print(f"  {'':13s} ratio to the forward's peak: {peaks[variant] / fwd:.3f}")

    if not args.skip_estimate:
        m = args.estimate_tokens
        print(f"token_sensitivity(estimate, n_probes={args.probes}, chunk_size=1) at {m} tokens:")
        variants = ("forward", "graph") if args.graph_only else ("forward", "graph", "estimate")
        peaks = {v: _run(v, m, n_ctx, args) for v in variants}
        cotangent = 4 * m * (24 * D_MODEL + 4 * HEADS * m) / MIB
        if args.graph_only:
            print(
                f"  (graph only) the estimate needs at least the graph's "
                f"{peaks['graph'] / 1024:.2f} GiB, plus up to 1.25 x one cotangent "
                f"{cotangent / 1024:.2f} GiB"
            )
            print(f"total wall time {time.perf_counter() - start:.0f} s")
            return
        how = f"graph {peaks['graph']:.1f} + 1.25 x one cotangent {cotangent:.1f}"
        _verdict("estimate", peaks["estimate"], peaks["graph"] + 1.25 * cotangent, how)
        print(
            f"  {'':13s} ratio to the forward's peak: {peaks['estimate'] / peaks['forward']:.2f}"
            f"; backward working set (estimate - graph): "
            f"{peaks['estimate'] - peaks['graph']:.1f} MiB"
        )
    print(f"total wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
