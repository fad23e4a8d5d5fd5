"""Snapshot every public function's outputs on the fixture models, to prove a refactor changes
no number (issue "One concept, one subpackage").

    python benchmarks/api_snapshot.py record before.pt
    python benchmarks/api_snapshot.py record after.pt
    python benchmarks/api_snapshot.py compare before.pt after.pt   # bitwise equality

Each entry is a tensor or a DataFrame (stored as its numeric columns) computed with fixed
seeds on the tiny offline fixtures (GPT-2, GPT-NeoX, Llama, Gemma, TL-native). Not a timing.
"""

import inspect
import sys
from typing import Any

import pandas as pd
import torch

import oversquash_lens as osl
from oversquash_lens import testing


def _frame(df: pd.DataFrame) -> dict[str, Any]:
    df = df.reset_index(drop=True)
    out: dict[str, Any] = {}
    for col in df.columns:
        values = df[col]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            out[str(col)] = torch.tensor(values.to_numpy(dtype="float64"))
        else:
            out[str(col)] = [str(v) for v in values]
    return out


def _signatures() -> dict[str, str]:
    sigs = {}
    for name in osl.__all__:
        obj = getattr(osl, name)
        if callable(obj) and not isinstance(obj, type):
            sigs[name] = str(inspect.signature(obj))
    return sigs


def record() -> dict[str, Any]:
    torch.manual_seed(0)
    snap: dict[str, Any] = {"__signatures__": _signatures()}
    snap["path_counts"] = osl.path_counts(9, 4)
    snap["path_counts_log_res"] = osl.path_counts(9, 4, residual_edges=True, log=True)
    models = {a: testing.tiny_model(a) for a in testing.ARCHITECTURES}
    models["native"] = testing.tiny_native_model()
    for arch, model in models.items():
        toks = torch.arange(1, 13)[None] % model.cfg.d_vocab
        key = f"{arch}:"
        snap[key + "resid"] = osl.capture_residuals(model, toks).states
        snap[key + "resid_last"] = osl.capture_residuals(model, toks, positions=-1).states
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
        pats = torch.stack(
            [cache[f"blocks.{b}.attn.hook_pattern"][0] for b in range(model.cfg.n_layers)]
        )
        snap[key + "rollout"] = osl.attention_rollout(pats)
        snap[key + "rollout_head"] = osl.attention_rollout(pats, per_head=True, target=5)
        snap[key + "rollout_model"] = osl.attention_rollout_from_model(model, toks)
        snap[key + "bound"] = osl.oversquashing_bound(pats)
        snap[key + "sens_exact"] = osl.token_sensitivity(model, toks, progress=False).values
        snap[key + "sens_est"] = osl.token_sensitivity(
            model, toks, method="estimate", n_probes=8, progress=False
        ).values
        try:
            profile = osl.oversquash_profile(model, toks, n_probes=8).to_dataframe()
            snap[key + "profile"] = _frame(profile)
        except osl.OversquashError as exc:  # recorded too: an error must stay the same error
            snap[key + "profile"] = f"{type(exc).__name__}: {exc}"
        scores = osl.pattern_scores(pats)
        for name, value in scores.items():
            snap[key + "pattern_scores." + name] = value
        report = osl.classify_heads(model, toks)
        snap[key + "heads"] = _frame(report.to_dataframe())
        curve = osl.collapse_curve(model, [4, 8], progress=False)
        snap[key + "collapse"] = _frame(curve.to_dataframe())
        with osl.adaptive_temperature(model):
            snap[key + "adaptive_resid"] = osl.capture_residuals(model, toks, positions=-1).states
        if getattr(model, "tokenizer", None) is not None:
            acc = osl.task_accuracy(model, "count-ones", [3, 5], n_samples=2)
            snap[key + "accuracy"] = _frame(acc.to_dataframe())
    return snap


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and torch.equal(a.nan_to_num(1e300), b.nan_to_num(1e300))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def compare(path_a: str, path_b: str) -> int:
    a = torch.load(path_a, weights_only=False)
    b = torch.load(path_b, weights_only=False)
    keys = sorted(set(a) | set(b))
    bad = [k for k in keys if k not in a or k not in b or not _equal(a[k], b[k])]
    print(f"{len(keys)} entries compared, {len(keys) - len(bad)} bitwise equal, {len(bad)} differ")
    for k in bad:
        print("  differs:", k)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        torch.save(record(), sys.argv[2])
        print("recorded", sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        print(__doc__)
        sys.exit(2)
