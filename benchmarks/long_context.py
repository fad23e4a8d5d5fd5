"""Benchmark: analyses at long context on the embedded model (SmolLM2-135M-Instruct), against
the physical limit measured in the same run — the Hugging Face model's own forward with fused
attention (``attn_implementation="sdpa"``), which never builds a ``[head, query, key]`` pattern.

Run: python benchmarks/long_context.py [--lengths 1024 2048 4096] [--only VARIANT ...]
                                       [--cap-gib 18] [--probe-curve]
     Measure alone on the machine (nothing else running: 2-thread torch spin-waits otherwise);
     threads come from ``OMP_NUM_THREADS`` (default 2).

Every variant runs once in a fresh process (spawn): load the model, one short warm-up forward,
read VmRSS, reset the kernel's peak mark (``/proc/self/clear_refs`` = 5), run, and report the
wall time and VmHWM minus that VmRSS (the peak RSS above the loaded model). Each child gets an
address-space cap (``--cap-gib`` above what it has mapped): a variant that needs more stops
with an "exceeded" line instead of pushing the machine out of memory.

Variants at each length n (tokens drawn at random from the vocabulary, seed 0):
- hf_sdpa:        the plain Hugging Face model, sdpa attention, ``use_cache=False`` — the limit;
- bridge_forward: ``model(tokens)`` of the TransformerBridge (eager, patterns materialised);
- capture_last:   ``capture_residuals(model, tokens, positions=-1)`` (fused attention);
- capture_eager:  the same inside ``eager_attention()`` (what it cost before fusion);
- collapse_pair:  ``collapse_curve`` on one repeat pair whose longer prompt has <= n tokens,
                  float32 and bfloat16 rounded from it (``run_in_dtype=False``; a native bf16
                  run casts the model and runs eagerly, and CPU bf16 matmuls are slow: 298 s
                  at 2,048 tokens on this machine, 13x the limit);
- rollout:        ``attention_rollout_from_model(model, tokens)`` (last-token rows, streamed);
- sensitivity:    ``token_sensitivity(method="estimate", n_probes=16, layers=[1])``, blocks
                  checkpointed: the peak is one block's recomputation + backward (what every
                  layer's pass holds at a time); all 30 layers cost Σℓ = 465 block backward
                  passes per probe instead of 1, i.e. hours at 4,096 tokens on 2 cores;
- flow:           ``information_flow(model, tokens)`` (one target, the last token; patterns
                  kept as packed causal triangles, L·H·n(n+1)/2 floats) and its default
                  τ = 0.04 route-graph walk (``routes.edges()``; its time is printed apart);
- equality:       max |fused − eager| of the last-token residuals at every layer, relative to
                  the largest |eager| value (not timed as a variant; prints the figure).

``--probe-curve``: time per probe of ``token_sensitivity(estimate, layers=[1])`` at 1,024
tokens for 1, 4 and 16 probes (probes are batched: the forward and the checkpointed
recomputation are shared by a chunk of probes).
"""

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import status_mib  # noqa: E402

MIB = 1 << 20
VARIANTS = (
    "hf_sdpa",
    "bridge_forward",
    "capture_last",
    "capture_eager",
    "collapse_pair",
    "rollout",
    "sensitivity",
    "flow",
)


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "2") or 2)


def _pair_length(model, n: int) -> int:
    """The largest repeat length k whose extended prompt has at most n tokens."""
    from oversquash_lens import tasks

    k = n
    while k > 1:
        size = len(tasks.repeated_pair(model, k).extended)
        if size <= n:
            return k
        k = min(k - 1, k * n // size)  # items may take more than one token each
    return 1


def _load(variant: str):
    import torch

    import oversquash_lens as ol

    if variant == "hf_sdpa":
        from transformers import AutoModelForCausalLM

        from oversquash_lens.models.embedded import embedded_model_folder

        hf = AutoModelForCausalLM.from_pretrained(
            str(embedded_model_folder()), attn_implementation="sdpa", dtype=torch.float32
        ).eval()
        return hf
    return ol.load_model()


def _work(variant: str, model, toks, args):
    """The measured call for ``variant`` (returns something small to print, or None)."""
    import torch

    import oversquash_lens as ol

    if variant == "hf_sdpa":
        with torch.no_grad():
            model(input_ids=toks, use_cache=False)
    elif variant == "bridge_forward":
        with torch.no_grad():
            model(toks)
    elif variant == "capture_last":
        ol.capture_residuals(model, toks, positions=-1)
    elif variant == "capture_eager":
        with ol.eager_attention():
            ol.capture_residuals(model, toks, positions=-1)
    elif variant == "collapse_pair":
        k = args["pair_k"]
        curve = ol.collapse_curve(
            model, [k], precisions=("float32", "bfloat16"), run_in_dtype=False, progress=False
        )
        return (
            f"k={k}, bf16 identical at last layer: {bool(curve.to_dataframe().identical.iloc[-1])}"
        )
    elif variant == "rollout":
        ol.attention_rollout_from_model(model, toks)
    elif variant == "sensitivity":
        probes = args.get("probes", 16)
        ol.token_sensitivity(
            model, toks, method="estimate", n_probes=probes, layers=[1], progress=False
        )
    elif variant == "flow":
        routes = ol.information_flow(model, toks)
        start = time.perf_counter()
        edges = routes.edges()  # the default τ = 0.04 walk from the last token
        walk = time.perf_counter() - start
        return f"of which the τ=0.04 walk {walk:.1f} s ({len(edges)} edges)"
    elif variant == "equality":
        fast = ol.capture_residuals(model, toks, positions=-1).states
        with ol.eager_attention():
            slow = ol.capture_residuals(model, toks, positions=-1).states
        diff = float((fast - slow).abs().max()) / float(slow.abs().max())
        return f"max |fused - eager| / max |eager| = {diff:.2e}"
    return None


def _child(variant: str, n: int, args: dict, queue) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    model = _load(variant)
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size if variant == "hf_sdpa" else model.cfg.d_vocab)
    toks = torch.randint(0, vocab, (1, n), generator=gen)
    if variant == "collapse_pair":
        args = {**args, "pair_k": _pair_length(model, n)}
    with torch.no_grad():
        model(toks[:, :8]) if variant != "hf_sdpa" else model(input_ids=toks[:, :8])
    cap = int(status_mib("VmSize") * MIB + args["cap_gib"] * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    base = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
    start, note = time.perf_counter(), ""
    try:
        note = _work(variant, model, toks, args) or ""
    except (MemoryError, RuntimeError) as exc:  # the address-space cap was hit
        note = f"!! exceeded the cap: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    queue.put((status_mib("VmHWM") - base, time.perf_counter() - start, note))


def _run(variant: str, n: int, args: dict) -> tuple[float, float, str]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(variant, n, args, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return float("nan"), float("nan"), f"!! child exit code {proc.exitcode}"
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--only", nargs="+", choices=(*VARIANTS, "equality"), default=None)
    parser.add_argument("--cap-gib", type=float, default=18.0)
    parser.add_argument("--probe-curve", action="store_true")
    ns = parser.parse_args()
    args = {"threads": _threads(), "cap_gib": ns.cap_gib}
    variants = ns.only or (*VARIANTS, "equality")
    print(
        f"SmolLM2-135M-Instruct (embedded), float32, {args['threads']} threads, "
        f"address-space cap +{ns.cap_gib:g} GiB per child; one run per variant"
    )
    start = time.perf_counter()
    for n in ns.lengths:
        print(f"\n{n} tokens:")
        print(f"  {'variant':15s} {'wall s':>8s} {'peak MiB':>9s} {'x time':>7s} {'x peak':>7s}")
        limit: tuple[float, float] | None = None
        for variant in variants:
            peak, seconds, note = _run(variant, n, args)
            if variant == "equality":
                print(f"  {'equality':15s} {note}")
                continue
            if variant == "hf_sdpa":
                limit = (seconds, peak)
            ratios = (
                f"{seconds / limit[0]:7.2f} {peak / limit[1]:7.2f}" if limit else f"{'':7s} {'':7s}"
            )
            print(f"  {variant:15s} {seconds:8.1f} {peak:9.1f} {ratios}  {note}")
            sys.stdout.flush()
    if ns.probe_curve:
        print("\ntoken_sensitivity(estimate, layers=[1]) at 1024 tokens, time per probe:")
        for probes in (1, 4, 16):
            peak, seconds, note = _run("sensitivity", 1024, {**args, "probes": probes})
            print(f"  {probes:3d} probes: {seconds:7.1f} s, {seconds / probes:6.2f} s/probe, "
                  f"peak {peak:8.1f} MiB {note}")  # fmt: skip
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
