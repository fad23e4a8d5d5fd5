"""The ``oversquash-lens`` command line: fast help, every option documented, bad arguments
refused in one line (exit 2) before any model loads, consistent defaults, tables and the
report on tiny offline models."""

import json
import re
import subprocess
import sys

import pytest

from oversquash_lens import cli, testing
from oversquash_lens.report import ReportConfig
from oversquash_lens.report import config as defaults

COMMANDS = ["report", "collapse", "heads", "sensitivity", "models"]


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: oversquash-lens" in capsys.readouterr().out


def _subparsers(parser):
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_documented_with_defaults():
    subs = _subparsers(cli.build_parser())
    assert set(subs) == set(COMMANDS)
    for name, sub in subs.items():
        for action in sub._actions:
            if action.dest == "help" or action.help == "==SUPPRESS==":
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            if action.default not in (None, False) or action.dest in ("lengths", "probes"):
                assert "default" in action.help, f"{name} {action.option_strings}"
    shown = {  # the options the issue names: choices and defaults in the help
        ("collapse", "--task"): ["repeat-sep", "default: repeat"],
        ("report", "--lengths"): ["default: 8 16 32 64 128 256 512", "--quick: 8 16 32 64 128"],
        ("report", "--precisions"): ["float8_e4m3fn", "default: float32 bfloat16 float16"],
        ("report", "--eps"): ["default: 0.1"],
        ("sensitivity", "--target"): ["default: -1"],
        ("report", "--probes"): ["default: 16"],
        ("sensitivity", "--probes"): ["default: 16"],
    }
    for (command, option), words in shown.items():
        text = subs[command].format_help().replace("\n", " ")
        text = " ".join(text.split())
        for word in words:
            assert word in text, (command, option, word)


def test_defaults_are_consistent():
    subs = _subparsers(cli.build_parser())
    parse = {c: subs[c].parse_args([]) for c in ("report", "collapse", "heads", "sensitivity")}
    assert parse["heads"].ablation is False and parse["report"].ablation is False
    assert not ReportConfig().head_ablation
    assert parse["report"].precisions == parse["collapse"].precisions
    assert tuple(parse["collapse"].precisions) == tuple(ReportConfig().precisions)
    assert parse["report"].eps == parse["heads"].eps == ReportConfig().head_eps
    assert parse["report"].probes is None and parse["sensitivity"].probes is None  # both 16
    assert parse["report"].prompt == parse["sensitivity"].prompt == ReportConfig().copy_prompt
    assert parse["report"].text == parse["heads"].text == ReportConfig().text
    assert tuple(ReportConfig().lengths) == defaults.DEFAULT_LENGTHS  # collapse's grid too
    assert ReportConfig().n_probes == defaults.DEFAULT_PROBES


def test_help_imports_nothing_heavy():
    """Parsing (and --help) needs the standard library only: no torch, pandas or numpy."""
    code = (
        "import sys, oversquash_lens.cli as c\n"
        "p = c.build_parser()\n"
        "for cmd in ('report', 'collapse', 'heads', 'sensitivity'): p.parse_args([cmd])\n"
        "print(sorted(m for m in ('torch', 'pandas', 'numpy', 'transformers')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return str(testing.save_tiny_model("llama", tmp_path_factory.mktemp("tiny"), n_ctx=256))


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model is loaded (bad arguments must be refused before)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "_load", refuse)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hf-cache")  # no cached hub models


@pytest.mark.parametrize(
    "argv, words",
    [
        (["report", "--lengths", "-5"], ["--lengths", "-5 is not a positive integer"]),
        (["collapse", "--lengths", "8", "0"], ["0 is not a positive integer"]),
        (["report", "--probes", "0"], ["--probes"]),
        (["heads", "--eps", "1.5"], ["--eps", "not in (0, 1)"]),
        (["collapse", "--task", "nope"], ["invalid choice", "repeat-sep"]),
        (["collapse", "--precisions", "float12"], ["invalid choice", "bfloat16"]),
        (["report", "--dtype", "int8"], ["--dtype"]),
        (["report", "--prompt", " "], ["--prompt", "empty"]),
        (["report", "--model", "./no/such/folder"], ["no such folder"]),
        (["heads", "--model", "/"], ["no config.json"]),
        (["report", "--model", "a", "--model", "b", "--model", "c"], ["one or two"]),
        (
            ["sensitivity", "--model", "gpt2"],
            ["hub name", "internet", "local folder", "smollm2-135m-instruct"],
        ),  # fmt: skip
    ],
)
def test_bad_arguments_one_line_exit_2(argv, words, no_loading, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("oversquash-lens")
    for word in words:
        assert word in err, (word, err)


def test_target_checked_before_loading(tiny_folder, no_loading, capsys):
    argv = ["sensitivity", "--model", tiny_folder, "--target", "9999", "--prompt", "1 1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--target 9999" in err and "at most 3 tokens" in err and len(err.splitlines()) == 1


def test_tables_json(tiny_folder, capsys):
    argv = ["sensitivity", "--model", tiny_folder, "--prompt", "1 1 1 1", "--json", "--probes",
            "4"]  # fmt: skip
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 * 5  # 2 layers x 5 positions (BOS + 4 tokens)
    argv = ["heads", "--model", tiny_folder, "--text", "the cat sat on the mat", "--all", "--json"]
    assert cli.main(argv) == 0
    heads = json.loads(capsys.readouterr().out)
    assert len(heads) == 2 * 4
    assert all(row["delta_loss_zero"] is None for row in heads)  # no ablation by default
    argv = ["collapse", "--model", tiny_folder, "--lengths", "4", "8", "--precisions",
            "float32", "bfloat16"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "bfloat16" in capsys.readouterr().out


def test_collapse_default_grid_is_the_reports(tiny_folder, capsys):
    assert cli.main(["collapse", "--model", tiny_folder, "--json", "--precisions", "float32"]) == 0
    captured = capsys.readouterr()
    lengths = sorted({row["length"] for row in json.loads(captured.out)})
    assert lengths == [8, 16, 32, 64, 128]  # DEFAULT_LENGTHS cut to n_ctx=256, as the report
    assert "lengths [256, 512] skipped" in captured.err


def test_lengths_checked_before_loading(tiny_folder, no_loading, capsys):
    for command in ("collapse", "report"):
        assert cli.main([command, "--model", tiny_folder, "--lengths", "8", "300"]) == 2
        err = capsys.readouterr().err
        assert "--lengths 300" in err and "n_ctx=256" in err and len(err.splitlines()) == 1


def test_bad_input_is_a_clean_error(tiny_folder, capsys):
    """An error found only once the model runs is still one line, exit 2, no traceback."""
    argv = ["collapse", "--model", tiny_folder, "--lengths", "8", "250", "--task", "repeat-sep"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("oversquash-lens")]
    assert len(lines) == 1 and "n_ctx=256" in lines[0] and "Traceback" not in err


def test_report_on_tiny_model(tiny_folder, tmp_path, capsys):
    out = tmp_path / "r.html"
    argv = ["report", "--model", tiny_folder, "--output", str(out), "--lengths", "4", "8", "16",
            "--probes", "4", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    for section in ("Findings", "Representational collapse", "Over-squashing profile",
                    "Attention heads", "Crossing lengths", "Timings"):  # fmt: skip
        assert section in text
    assert "<title>oversquash_lens: tiny" in text  # the folder's name, not its path
    assert tiny_folder not in text.split("<body>")[0]


def test_report_two_models_and_quick(tiny_folder, tmp_path):
    other = testing.save_tiny_model("gpt2", tmp_path / "gpt2-tiny", n_ctx=256)
    out = tmp_path / "two.html"
    argv = ["report", "--model", tiny_folder, "--model", str(other), "--output", str(out),
            "--quick", "--lengths", "4", "8", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    text = out.read_text()
    assert re.search(r"report: tiny\d* vs gpt2-tiny</h1>", text)
    assert "routes skipped" in text  # --quick leaves the routes out


def test_report_lengths(tiny_folder, tmp_path, capsys):
    """Lengths you choose are used as given: one beyond n_ctx is a clean error, not a
    traceback or a silent drop; the default grid is cut to what fits, and the report says so."""
    out = tmp_path / "r.html"
    base = ["report", "--model", tiny_folder, "--output", str(out), "--probes", "2",
            "--no-progress"]  # fmt: skip
    assert cli.main([*base, "--lengths", "8", "250"]) == 2
    assert "n_ctx=256" in capsys.readouterr().err and not out.exists()
    from oversquash_lens.report import build_report

    build_report(testing.tiny_model("llama", n_ctx=256), out, config=ReportConfig(n_probes=2),
                 progress=False)  # fmt: skip
    assert "lengths [256, 512] skipped" in out.read_text()


def test_json_keeps_tiny_gaps(tmp_path, capsys):
    """DataFrame.to_json keeps 10 decimals (3e-11 -> 0.0); the CLI's JSON must round-trip."""
    from oversquash_lens import collapse_curve, load_model

    folder = testing.save_tiny_model("llama", tmp_path / "small", initializer_range=1e-4)
    args = ["collapse", "--model", str(folder), "--lengths", "4", "64", "--precisions",
            "float32", "--json", "--all-layers"]  # fmt: skip
    assert cli.main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    api = collapse_curve(load_model(folder), [4, 64], precisions=("float32",)).to_dataframe()
    assert len(rows) == len(api)
    assert float(api["linf"].min()) < 1e-9  # the case DataFrame.to_json rounds to 0.0
    for row, (_, ref) in zip(rows, api.iterrows()):
        assert row["l1"] == float(ref["l1"]) and row["linf"] == float(ref["linf"])
        assert row["identical"] == bool(ref["identical"])


def test_models_command(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "SmolLM2-135M-Instruct" in out
