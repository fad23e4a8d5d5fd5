"""The circuits framework on a real model (docs/science.md §"Circuits framework").

Four tables on the embedded SmolLM2-135M-Instruct (30 layers × 9 heads, d_model 576):
composition scores against the random baseline; per-head OV/QK summaries; the path expansion
of the answer position of a copy prompt (which single heads and virtual heads push the copied
digit's logit, and from which source position); time and memory of the expansion at 64 tokens.

    python examples/circuits_on_smollm2.py            # embedded model
    python examples/circuits_on_smollm2.py --quick    # V-composition only, no 64-token timing
    python examples/circuits_on_smollm2.py --model path/to/hf_folder --prompt "..." --answer 6
"""

import argparse
import os
import threading
import time

import pandas as pd
import torch

import oversquash_lens as osl
from oversquash_lens.circuits import circuit_summaries, composition, path_expansion

QUICK_ENV = os.environ.get("OVERSQUASH_QUICK") == "1"
COPY_PROMPT = "What is the last digit in this sequence? 3 8 1 9 4 7 2 6. Answer: "
INDUCTION_PROMPT = "3 8 1 9 4 7 2 6 5 0 3 8 1 9 4 7 2 "  # repeated: next digit is 6


def _rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def measured(fn, *args, **kwargs):
    """``(result, wall seconds, CPU seconds, peak RSS above the starting RSS in MiB)``."""
    start, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        out = fn(*args, **kwargs)
    finally:
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        done.set()
        thread.join()
    return out, seconds, cpu, max(0, max(peak[0], _rss()) - start) / 2**20


def top_tokens(model, tokens, k=5) -> str:
    with torch.no_grad():
        logits = model(tokens)[0, -1]
    top = logits.topk(k)
    return ", ".join(
        f"{model.tokenizer.decode([i])!r} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices)
    )


def show_expansion(model, text: str, answer: str, k_comp=None) -> None:
    tokens = model.to_tokens(text)
    exp, seconds, cpu, mib = measured(path_expansion, model, tokens, max_order=2, mlp_order=1)
    top = top_tokens(model, tokens)
    print(f"\nprompt {text!r} ({tokens.shape[1]} tokens); next-token top-5: {top}")
    print(
        f"path expansion (max_order=2, mlp_order=1): {len(exp.paths)} terms, {seconds:.1f} s "
        f"wall / {cpu:.1f} s CPU, peak +{mib:.0f} MiB, reconstruction error "
        f"{exp.reconstruction_error:.1e}"
    )
    with torch.no_grad():
        best = int(model(tokens)[0, -1].argmax())
    rival = model.tokenizer.decode([best])
    versus = [None] + ([best] if best != exp.token_id(answer) else [])
    for vs in versus:
        name = f"logit({answer!r})" + (f" − logit({rival!r})" if vs is not None else "")
        parts = exp.logit_breakdown(answer, versus=vs)
        print(f"\n{name}: " + ", ".join(f"{k} {v:+.2f}" for k, v in parts.items()))
        frame = exp.logit_contributions(answer, versus=vs)
        groups = (
            (
                "single heads (from the embedding)",
                (frame["source"] == "embed") & (frame.order == 1),
            ),
            (
                "virtual heads (from the embedding)",
                (frame["source"] == "embed") & (frame.order == 2),
            ),
            ("MLP writes (direct)", (frame["source"] != "embed") & (frame.order == 0)),
            ("MLP → head", (frame["source"] != "embed") & (frame.order == 1)),
        )
        for title, mask in groups:
            sub = frame[mask]
            rows = pd.concat([sub.head(5), sub.tail(2)])
            cells = "; ".join(f"{r.term} {r.logit:+.2f}" for r in rows.itertuples())
            print(f"  {title}: {cells}")
    pos = exp.by_source_position(answer)
    moved = pos[pos["order"] > 0].groupby(["source", "pos", "token"], sort=False)["logit"].sum()
    print(f"\nlogit({answer!r}) moved through >= 1 head, by source position (largest five):")
    print(moved.sort_values(ascending=False).head(5).to_string(float_format="{:+.2f}".format))
    answer_id = exp.token_id(answer)
    seen = (tokens[0, :-1] == answer_id).nonzero().flatten().tolist()
    if seen:  # the answer occurs earlier: which heads look at it from the target?
        show_readers(model, tokens, seen[-1], exp, answer, k_comp)


def show_readers(model, tokens, source: int, exp, answer: str, k_comp) -> None:
    """Heads attending most from the target to ``source``, what their listed paths add to the
    answer's logit, and (with K-composition scores) which earlier heads write their keys."""
    n_heads = model.cfg.n_heads
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    grid = torch.stack(
        [
            cache[f"blocks.{b}.attn.hook_pattern"][0, :, -1, source]
            for b in range(model.cfg.n_layers)
        ]
    )
    frame = exp.logit_contributions(answer)
    print(f"\nheads attending from the target to position {source} (the earlier {answer!r}):")
    for flat in grid.flatten().topk(3).indices.tolist():
        layer, head = divmod(flat, n_heads)
        name = f"L{layer}H{head}"
        ends_here = frame["term"].str.split(" → ").str[-1] == name
        listed = frame[ends_here]["logit"].sum()
        attention = float(grid[layer, head])
        line = f"  {name}: attention {attention:.2f}, listed paths ending there add {listed:+.2f}"
        if k_comp is not None and layer > 0:
            into = k_comp.scores[:layer, :, layer, head]
            top = into.flatten().topk(2)
            cells = [
                f"L{i // n_heads}H{i % n_heads} {float(v) / k_comp.baseline:.1f}×"
                for v, i in zip(top.values, top.indices.tolist())
            ]
            line += "; K-composition into its keys from " + ", ".join(cells)
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF folder or hub name (default: embedded)")
    parser.add_argument("--prompt", default=COPY_PROMPT, help="copy prompt to expand")
    parser.add_argument("--answer", default="6", help="the token the prompt should produce")
    parser.add_argument("--quick", action="store_true", default=QUICK_ENV, help="short run (CI)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    model = osl.load_model(args.model)
    cfg = model.cfg
    print(
        f"{cfg.n_layers} layers × {cfg.n_heads} heads, d_model {cfg.d_model}, d_head "
        f"{cfg.d_head} (load {time.perf_counter() - t0:.1f} s, {torch.get_num_threads()} threads)"
    )

    if not args.quick:  # first, so the peak-RSS reading starts from a fresh heap
        with torch.no_grad():
            model(model.to_tokens("warm up"))
        digits = " ".join(str(i % 10) for i in range(7, 500, 3))
        tokens = model.to_tokens(f"What is the last digit in this sequence? {digits}")[:, :64]
        for mlp_order in (None, 1):
            exp, seconds, cpu, mib = measured(
                path_expansion, model, tokens, max_order=2, mlp_order=mlp_order
            )
            held = exp.vectors.numel() + sum(v.numel() for v in exp.by_position.values())
            print(
                f"\n64 tokens, max_order=2, mlp_order={mlp_order}: {seconds:.1f} s wall / "
                f"{cpu:.1f} s CPU, peak RSS +{mib:.0f} MiB (result holds "
                f"{held * exp.vectors.element_size() / 2**20:.0f} MiB), {len(exp.paths)} terms, "
                f"reconstruction error {exp.reconstruction_error:.1e}"
            )

    comps = {}
    for kind in ("V",) if args.quick else ("V", "K", "Q"):
        comp, seconds, cpu, mib = measured(composition, model, kind)
        comps[kind] = comp
        frame = comp.to_dataframe()
        share = (frame["relative"] > 2).mean()
        print(
            f"\n{kind}-composition: {len(frame)} pairs in {seconds:.1f} s wall / {cpu:.1f} s CPU "
            f"(peak +{mib:.0f} MiB); "
            f"random baseline {comp.baseline:.4f} ± {comp.baseline_std:.4f}; median "
            f"{frame['score'].median():.4f}; {share:.1%} of pairs above 2× baseline"
        )
        cols = ["source", "dest", "score", "relative", "z"]
        print(frame.head(8)[cols].to_string(index=False, float_format="{:.3f}".format))

    table, seconds, _, _ = measured(circuit_summaries, model)
    cols = ["name", "ov_copying", "ov_neg_fraction", "qk_self", "qk_eig_positive", "ov_norm"]
    print(f"\ncircuit summaries ({seconds:.1f} s): highest qk_self (diagonal candidates)")
    print(table.nlargest(5, "qk_self")[cols].to_string(index=False, float_format="{:.3f}".format))
    print("most negative OV spectra (erasure candidates)")
    print(
        table.nlargest(5, "ov_neg_fraction")[cols].to_string(
            index=False, float_format="{:.3f}".format
        )
    )

    show_expansion(model, args.prompt, args.answer, comps.get("K"))
    if not args.quick:
        show_expansion(model, INDUCTION_PROMPT, args.answer, comps.get("K"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
