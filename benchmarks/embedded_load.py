"""Benchmark: the embedded SmolLM2 model — one-time conversion vs a cached load.

Run: python benchmarks/embedded_load.py [--cache-dir DIR]
Each step runs in a fresh process (so peak RSS is that step's alone), against a clean temporary
cache unless ``--cache-dir`` is given. Prints: conversion time, cache size on disk, load time of
``load_model()`` (first and second call in a process, float32 and bfloat16), peak RSS of each
step, the cached-load / conversion time ratio, and the model-quality checks (greedy next token
after "The capital of France is"; mean next-token loss on three English paragraphs versus a
random-weight model of the same shape, whose loss should be ≈ ln(d_vocab)).
"""

import argparse
import math
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _losses(model, paragraphs, forward) -> float:
    import torch

    total = 0.0
    for text in paragraphs:
        tokens = model.to_tokens(text)
        with torch.no_grad():
            logits = forward(tokens)
        total += torch.nn.functional.cross_entropy(logits[0, :-1].float(), tokens[0, 1:]).item()
    return total / len(paragraphs)


def _step(kind: str, cache_dir: str, queue) -> None:
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    import torch  # noqa: F401  (imports outside the timed region)
    import transformer_lens  # noqa: F401
    import transformers  # noqa: F401

    from oversquash_lens import load_model
    from oversquash_lens.models.embedded import embedded_model_folder
    from tests.test_embedded import PARAGRAPHS

    out: dict = {"rss_after_imports": _peak_mib(), "import_seconds": time.perf_counter() - start}
    if kind == "convert":
        start = time.perf_counter()
        folder = embedded_model_folder(cache_dir=cache_dir)
        out["seconds"] = time.perf_counter() - start
        out["disk_bytes"] = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    elif kind in ("float32", "bfloat16"):
        start = time.perf_counter()
        model = load_model(dtype=kind, cache_dir=cache_dir)
        out["seconds"] = time.perf_counter() - start
        out["peak_after_load"] = _peak_mib()
        tokens = model.to_tokens("The capital of France is")
        with torch.no_grad():
            out["next_token"] = model.tokenizer.decode(model(tokens)[0, -1].argmax())
        out["peak_after_forward"] = _peak_mib()
        del model
        start = time.perf_counter()
        model = load_model(dtype=kind, cache_dir=cache_dir)
        out["second_call_seconds"] = time.perf_counter() - start
        out["loss"] = _losses(model, PARAGRAPHS, model)
    elif kind == "random":
        from transformers import AutoConfig, AutoModelForCausalLM

        model = load_model(cache_dir=cache_dir)  # only for its tokenizer
        torch.manual_seed(0)
        folder = embedded_model_folder(cache_dir=cache_dir)
        rand = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        out["loss"] = _losses(model, PARAGRAPHS, lambda t: rand(t).logits)
        out["ln_vocab"] = math.log(model.cfg.d_vocab)
    out["peak_rss"] = _peak_mib()
    queue.put(out)


def _run(kind: str, cache_dir: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_step, args=(kind, cache_dir, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", default=None, help="default: a clean temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oversquash-embedded-") as tmp:
        cache_dir = args.cache_dir or tmp
        conv = _run("convert", cache_dir)
        f32 = _run("float32", cache_dir)
        bf16 = _run("bfloat16", cache_dir)
        rand = _run("random", cache_dir)
    print(f"cache: {'clean temporary folder' if args.cache_dir is None else args.cache_dir}")
    print(f"imports (torch, transformers, transformer_lens) {conv['import_seconds']:.2f} s")
    print(f"conversion (embedded_model_folder) {conv['seconds']:7.2f} s  (baseline)")
    print(f"  cache size on disk               {conv['disk_bytes'] / 2**20:7.1f} MiB")
    print(
        f"  peak RSS                         {conv['peak_rss']:7.0f} MiB "
        f"(after imports {conv['rss_after_imports']:.0f} MiB)"
    )
    for name, r in (("float32", f32), ("bfloat16", bf16)):
        print(
            f"load_model(dtype={name!r}) first  {r['seconds']:7.2f} s  "
            f"ratio to conversion {r['seconds'] / conv['seconds']:.3f}"
        )
        print(f"  second call in same process      {r['second_call_seconds']:7.2f} s")
        print(
            f"  peak RSS after first load        {r['peak_after_load']:7.0f} MiB "
            f"(after imports {r['rss_after_imports']:.0f} MiB)"
        )
        print(f"  peak RSS after one forward pass  {r['peak_after_forward']:7.0f} MiB")
        print(f"  next token after 'The capital of France is': {r['next_token']!r}")
        print(f"  mean next-token loss (3 paragraphs) {r['loss']:.3f} nats")
    print(
        f"random-weight model, same shape: loss {rand['loss']:.3f} nats "
        f"(ln d_vocab = {rand['ln_vocab']:.3f}); pretrained/random loss ratio "
        f"{f32['loss'] / rand['loss']:.3f}"
    )


if __name__ == "__main__":
    main()
