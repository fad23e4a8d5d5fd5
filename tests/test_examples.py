"""The example scripts, run as users run them: a subprocess in quick mode, offline.

Each test parses the script's printed tables and checks their content (shapes, ranges and
invariants such as "rollout sums to 1" or "the target has exactly one path to itself"), not
only the exit code. The autouse network guard of conftest does not reach a subprocess, so the
scripts run through a small runner that installs the same guard, with ``HF_HUB_OFFLINE=1``.
Tests marked ``embedded`` use the real SmolLM2 model; the others use tiny random models.
"""

import math
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from oversquash_lens import _tl, testing
from oversquash_lens.models import embedded as _embedded

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|NaN"
LABELS = ("diagonal-noop", "diagonal-eraser", "diagonal", "bos-sink", "previous-token", "mixing")
EPS = {"float32": 2**-23, "bfloat16": 2**-7, "float16": 2**-10}
PRECISIONS = tuple(EPS)

# Runs ``sys.argv[1]`` as __main__ with every non-local socket connection refused.
_RUNNER = """
import runpy, socket, sys
def refuse(self, address, *args, **kwargs):
    if getattr(self, "family", None) == socket.AF_UNIX:
        return real(self, address, *args, **kwargs)
    raise RuntimeError(f"network access attempted: {address!r}")
real = socket.socket.connect
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_example(script: str, *args: str, expect_rc: int = 0) -> str:
    """Run ``examples/<script>`` in quick mode, offline; return its stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(OVERSQUASH_QUICK="1", TQDM_DISABLE="1", PYTHONIOENCODING="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == expect_rc, (
        f"{script} {' '.join(args)} exited {done.returncode}\n"
        f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    return done.stdout


def block(text: str, start: str, end: str | None = None) -> list[str]:
    """Lines after the line containing ``start`` up to the one containing ``end`` (or a blank)."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if start in line) + 1
    out = []
    for line in lines[i:]:
        if (end is not None and end in line) or (end is None and not line.strip()):
            break
        out.append(line)
    return out


def numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(NUM, line)]


def _need_embedded() -> None:
    pytest.importorskip("gguf", reason="pip install gguf")
    try:
        metadata.distribution(_embedded.WHEEL)
    except metadata.PackageNotFoundError:
        pytest.skip(_embedded.INSTALL_WHEEL)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    """A tiny random Llama saved as an HF folder: the ``--model PATH`` route, no download."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    return str(testing.save_tiny_model("llama", folder, n_ctx=256))


# --- checks shared by the embedded and the tiny runs ------------------------------------------


def check_collapse_sweep(out: str, n_layers: int) -> None:
    m = re.search(r"task='repeat', n=\[([\d, ]+)\], layer (\d+) of (\d+)", out)
    assert m, out
    lengths = [int(x) for x in m.group(1).split(",")]
    assert lengths == [2, 4, 8, 16]  # the quick grid
    assert (int(m.group(2)), int(m.group(3))) == (n_layers, n_layers)
    table = block(out, "relative L-inf gap", "crossing length")
    assert table[0].split() == ["precision", *sorted(PRECISIONS)]
    rows = {int(line.split()[0]): numbers(line)[1:] for line in table if re.match(r"\d", line)}
    assert sorted(rows) == lengths
    for gaps in rows.values():  # relative L-inf gap lies in [0, 2]
        assert len(gaps) == 3 and all(0 <= g <= 2 for g in gaps), rows
    crossings = {}
    for line in block(out, "crossing length"):
        c = re.match(r"\s*(\w+) rounded \(eps ([\d.e-]+)\): (?:n = (\d+)|none up to n = 16)$", line)
        assert c, line
        crossings[c.group(1)] = int(c.group(3)) if c.group(3) else None
        assert math.isclose(float(c.group(2)), EPS[c.group(1)], rel_tol=0.05)
    assert set(crossings) == set(PRECISIONS)
    assert all(n is None or n in lengths for n in crossings.values())
    collapsed = block(out, "in which the pair is collapsed")
    assert collapsed[0].split() == ["length", *map(str, lengths)]
    counts = {line.split()[0]: [int(x) for x in line.split()[2:]] for line in collapsed[2:]}
    assert set(counts) == set(PRECISIONS)
    for p, per_n in counts.items():
        # Layer 0 holds the same last-token embedding for both (no absolute positions in
        # these Llama models): always collapsed; from the crossing on, the last layer too.
        assert all(1 <= k <= n_layers + 1 for k in per_n), (p, per_n)
        if crossings[p] is not None:
            assert all(k >= 2 for n, k in zip(lengths, per_n) if n >= crossings[p]), (p, per_n)


def check_sensitivity_profile(out: str, n_layers: int) -> None:
    m = re.search(r"(\d+) tokens, target (\d+), depth (\d+) of (\d+), sensitivity estimate", out)
    assert m, out
    n, target = int(m.group(1)), int(m.group(2))
    assert target == n - 1 and (int(m.group(3)), int(m.group(4))) == (n_layers, n_layers)
    lines = block(out, "log_paths_residual")
    assert len(lines) == n
    rows = [(int(line.split()[0]), numbers(line)[-5:]) for line in lines]
    assert [pos for pos, _ in rows] == list(range(n))
    log_paths, _, rollout, bound, sens = zip(*(values for _, values in rows))
    assert abs(log_paths[-1]) < 1e-6  # the target has exactly one path to itself
    assert all(a > b for a, b in zip(log_paths, log_paths[1:]))  # earlier: more paths
    assert all(0 <= r <= 1 for r in rollout) and math.isclose(sum(rollout), 1, abs_tol=1e-2)
    assert all(b > 0 for b in bound) and all(s > 0 for s in sens)
    corr = block(out, "Spearman correlation")
    assert corr[0].split() == ["log_paths", "rollout", "bound", "sensitivity"]
    matrix = [numbers(line) for line in corr[1:]]
    assert len(matrix) == 4 and all(math.isclose(matrix[i][i], 1) for i in range(4))
    assert all(-1 <= v <= 1 for row in matrix for v in row)
    share = re.search(r"first (\d+) tokens: ([\d.]+)% \(even spread ([\d.]+)%\)", out)
    assert share and 0 < float(share.group(2)) <= 100
    assert math.isclose(float(share.group(3)), 100 * int(share.group(1)) / n, abs_tol=0.06)


def check_head_table(out: str, n_layers: int, n_heads: int) -> dict[str, int]:
    m = re.search(r"(\d+) layers x (\d+) heads, (\d+) tokens, clean loss ([\d.]+)", out)
    assert m and (int(m.group(1)), int(m.group(2))) == (n_layers, n_heads), out
    assert 0 < float(m.group(4)) < 20  # nats
    counts = {line.split()[0]: int(line.split()[1]) for line in block(out, "heads per label:")}
    assert list(counts) == list(LABELS) and sum(counts.values()) == n_layers * n_heads
    flagged = re.search(r"flagged heads \((\d+)\):", out)
    assert flagged and int(flagged.group(1)) == n_layers * n_heads - counts["mixing"]
    top = block(out, "most diagonal heads:")
    assert top[0].split()[:3] == ["block", "head", "label"] and len(top) == 6
    diag = [float(line.split()[3]) for line in top[1:]]
    assert diag == sorted(diag, reverse=True) and all(0 <= d <= 1 for d in diag)
    halves = re.search(r"first half of layers ([\d.]+), second half ([\d.]+)", out)
    assert halves and all(0 <= float(x) <= 1 for x in halves.groups())
    return counts


def accuracy_table(out: str, lengths: list[int]) -> dict[int, list[float]]:
    lines = block(out, "accuracy:")
    assert lines[1].split() == ["remedy", "none", "repeat-final", "separators"], lines
    rows = {int(line.split()[0]): numbers(line)[1:] for line in lines[3:]}
    assert sorted(rows) == lengths
    assert all(len(v) == 3 and all(0 <= a <= 1 for a in v) for v in rows.values())
    return rows


# --- the embedded SmolLM2-135M-Instruct (30 layers, 9 heads) ---------------------------------


@pytest.mark.embedded
def test_collapse_sweep_embedded():
    _need_embedded()
    check_collapse_sweep(run_example("collapse_sweep.py"), n_layers=30)


@pytest.mark.embedded
def test_sensitivity_profile_embedded():
    _need_embedded()
    check_sensitivity_profile(run_example("sensitivity_profile.py"), n_layers=30)


@pytest.mark.embedded
def test_head_table_embedded():
    _need_embedded()
    counts = check_head_table(run_example("head_table.py"), n_layers=30, n_heads=9)
    assert counts["bos-sink"] > 0  # the trained model has first-token sinks (random ones not)


@pytest.mark.embedded
def test_counting_accuracy_embedded():
    _need_embedded()
    out = run_example("counting_accuracy.py")
    assert "task='copy-last', chat format: True" in out
    accuracy = accuracy_table(out, [2, 4, 8])
    # One deterministic prompt per cell: accuracy is 1 exactly when the answer is the odd digit.
    predictions = block(out, "most common prediction:")
    assert predictions[1].split() == ["remedy", "none", "repeat-final", "separators"]
    for line in predictions[3:]:
        n, *answers = line.split()
        assert [a == "7" for a in answers] == [acc == 1.0 for acc in accuracy[int(n)]], line


# --- tiny random models (fast, no embedded model) ---------------------------------------------


def test_collapse_sweep_on_a_folder(tiny_folder):
    check_collapse_sweep(run_example("collapse_sweep.py", "--model", tiny_folder), n_layers=2)


def test_sensitivity_profile_on_a_folder(tiny_folder):
    out = run_example("sensitivity_profile.py", "--model", tiny_folder)
    check_sensitivity_profile(out, n_layers=2)


def test_head_table_on_a_folder(tiny_folder):
    check_head_table(run_example("head_table.py", "--model", tiny_folder), n_layers=2, n_heads=4)


def test_counting_accuracy_on_a_folder(tiny_folder):
    out = run_example("counting_accuracy.py", "--model", tiny_folder)
    assert "chat format: False" in out  # the tiny tokenizer has no chat template
    accuracy_table(out, [2, 4, 8])


@pytest.mark.parametrize("tiny", ["llama", "neox", "native"])
def test_bring_your_own_model(tiny):
    out = run_example("bring_your_own_model.py", "--tiny", tiny)
    m = re.search(r"model: (\w+), 4 layers, 4 heads, d_model 64, n_ctx 1024, tokenizer: (\w+)", out)
    assert m and m.group(1) == "TransformerBridge", out
    assert m.group(2) == str(tiny != "native")
    table = block(out, "no separators", "crossing length")
    rows = [numbers(line) for line in table]
    assert [int(r[0]) for r in rows] == [2, 8, 32, 128]
    assert all(len(r) == 3 and all(0 <= g <= 2 for g in r[1:]) for r in rows)
    crossing = dict(re.findall(r"^crossing length (\w+): (\d+|none up to n = 128)$", out, re.M))
    assert set(crossing) == set(PRECISIONS)
    if tiny == "neox":  # no BOS, identical tokens, rotary: nothing can depend on n
        assert all(r[1] < 1e-5 for r in rows) and crossing["bfloat16"] == "2"
    corr = re.search(r"log_paths ([-+][\d.]+), rollout ([-+][\d.]+), bound ([-+][\d.]+)", out)
    assert corr and all(-1 <= float(x) <= 1 for x in corr.groups())
    heads = re.search(r"heads \((\d+), [\d.]+ s\): (.*)", out)
    assert heads and int(heads.group(1)) == 16
    counts = dict(re.findall(r"([a-z-]+) (\d+)", heads.group(2)))
    assert list(counts) == list(LABELS) and sum(map(int, counts.values())) == 16


def test_bring_your_own_model_hooked():
    """The legacy HookedTransformer exists only on transformer-lens < 4: a clear exit there."""
    if _tl.tl_major_version() >= 4:
        out = run_example("bring_your_own_model.py", "--tiny", "hooked", expect_rc=2)
        assert "cannot build --tiny hooked here" in out
    else:
        out = run_example("bring_your_own_model.py", "--tiny", "hooked")
        assert "model: HookedTransformer, 4 layers" in out and "crossing length bfloat16" in out
