"""Counting / copying accuracy vs length (docs/science.md §6), with and without the "glasses":
separators, hints, interleaving, repeating the final item, adaptive temperature.

    python examples/counting_accuracy.py                          # copy-last on the embedded model
    python examples/counting_accuracy.py --task count-ones --adaptive
    python examples/counting_accuracy.py --model path/to/hf_folder --quick --no-chat

Chat models (a tokenizer with a chat template) are prompted in their chat format, with the
assistant's answer started ("The last digit is", "There are") so the next token is the answer.
"""

import argparse
import os
import time
from typing import Any

import pandas as pd

import oversquash_lens as osl
from oversquash_lens.tasks import REMEDIES, prompt_tasks

QUESTIONS = {
    "copy-last": ("What is the last digit in this sequence: {items}?", "The last digit is"),
    "copy-first": ("What is the first digit in this sequence: {items}?", "The first digit is"),
    "count-ones": ("How many ones are in this sequence: {items}?", "There are"),
    "count-bernoulli": ("How many ones are in this sequence: {items}?", "There are"),
    "count-word": ("How many times does the word {word} appear in: {items}?", "It appears"),
    "sum-ones": ("What is {items}?", "The sum is"),
}

QUICK_ENV = os.environ.get("OVERSQUASH_QUICK") == "1"


def chat_options(model: Any, task: str) -> dict[str, Any]:
    """Task options that wrap the question in the model's own chat template (BOS left to the
    prompt builder when the template starts with it)."""
    question, prefill = QUESTIONS[task]
    tok = model.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    options: dict[str, Any] = {"template": text + prefill}
    bos = tok.bos_token or ""
    if bos and text.startswith(bos):
        options["template"] = text[len(bos) :] + prefill
    else:
        options["bos"] = None
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF folder or hub name (default: embedded)")
    parser.add_argument("--task", default="copy-last", choices=prompt_tasks())
    parser.add_argument("--lengths", type=int, nargs="+")
    parser.add_argument("--remedies", nargs="+", default=["none", "separators", "repeat-final"],
                        choices=REMEDIES)  # fmt: skip
    parser.add_argument("--adaptive", action="store_true", help="also run adaptive temperature")
    parser.add_argument("--samples", type=int, default=4, help="prompts per length (random tasks)")
    parser.add_argument("--other", default="7", help="the odd digit of copy tasks")
    parser.add_argument("--no-chat", action="store_true", help="plain prompt, no chat template")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=QUICK_ENV,
        help="short lengths (CI); also OVERSQUASH_QUICK=1",
    )
    args = parser.parse_args(argv)

    lengths = args.lengths or ([2, 4, 8] if args.quick else [2, 4, 8, 16, 32, 64])
    t0 = time.perf_counter()
    model = osl.load_model(args.model)
    use_chat = not args.no_chat and getattr(model.tokenizer, "chat_template", None)
    options = chat_options(model, args.task) if use_chat else {}
    if args.task.startswith("copy"):
        options["other"] = args.other
    runs = {"plain": {}}
    if args.adaptive:
        runs["adaptive temperature"] = {"adaptive_temperature": True}
    frames = []
    for name, extra in runs.items():
        rep = osl.task_accuracy(
            model, args.task, lengths, remedies=tuple(args.remedies), n_samples=args.samples,
            task_options=options, progress=False, **extra,
        )  # fmt: skip
        frames.append(rep.to_dataframe().assign(attention=name))
        if rep.skipped:
            print(f"skipped remedies for {args.task}: {list(rep.skipped)}")
    frame = pd.concat(frames)
    print(f"task={args.task!r}, chat format: {bool(use_chat)}, {time.perf_counter() - t0:.1f} s")
    with pd.option_context("display.width", 160):
        print("\naccuracy:")
        print(frame.pivot_table(index="length", columns=["attention", "remedy"], values="accuracy"))
        print("\nmost common prediction:")
        print(frame.pivot(index="length", columns=["attention", "remedy"],
                          values="most_common_prediction"))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
