import pytest

from oversquash_lens import cli, testing


@pytest.mark.parametrize("command", [[], ["report"], ["collapse"], ["heads"], ["sensitivity"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: oversquash-lens" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return str(testing.save_tiny_model("llama", tmp_path_factory.mktemp("tiny"), n_ctx=256))


def test_tables_json(tiny_folder, capsys):
    import json

    assert (
        cli.main(
            [
                "sensitivity",
                "--model",
                tiny_folder,
                "--prompt",
                "1 1 1 1",
                "--json",
                "--probes",
                "4",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 * 5  # 2 layers x 5 positions (BOS + 4 tokens)
    assert (
        cli.main(
            ["heads", "--model", tiny_folder, "--text", "the cat sat on the mat", "--all", "--json"]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 2 * 4
    assert (
        cli.main(
            [
                "collapse",
                "--model",
                tiny_folder,
                "--lengths",
                "4",
                "8",
                "--precisions",
                "float32",
                "bfloat16",
            ]
        )
        == 0
    )
    assert "bfloat16" in capsys.readouterr().out


def test_bad_input_is_a_clean_error(tiny_folder, capsys):
    assert (
        cli.main(["sensitivity", "--model", tiny_folder, "--target", "99", "--prompt", "1 1"]) == 2
    )
    assert "target=99" in capsys.readouterr().err


def test_report_on_tiny_model(tiny_folder, tmp_path):
    out = tmp_path / "r.html"
    assert (
        cli.main(
            [
                "report",
                "--model",
                tiny_folder,
                "--output",
                str(out),
                "--lengths",
                "4",
                "8",
                "16",
                "--probes",
                "4",
            ]
        )
        == 0
    )
    text = out.read_text()
    for section in (
        "Representational collapse",
        "Over-squashing",
        "Attention heads",
        "Crossing lengths",
        "Timings",
    ):
        assert section in text


def test_json_keeps_tiny_gaps(tmp_path, capsys):
    """DataFrame.to_json keeps 10 decimals (3e-11 -> 0.0); the CLI's JSON must round-trip."""
    import json

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


def test_report_lengths(tiny_folder, tmp_path, capsys):
    """Lengths you choose are used as given: one beyond n_ctx is a clean error, not a
    traceback or a silent drop; the default grid is cut to what fits, and the report says so."""
    out = tmp_path / "r.html"
    base = ["report", "--model", tiny_folder, "--output", str(out), "--probes", "2"]
    assert cli.main([*base, "--lengths", "8", "250"]) == 2
    assert "n_ctx=256" in capsys.readouterr().err and not out.exists()
    from oversquash_lens.report import ReportConfig, build_report

    build_report(testing.tiny_model("llama", n_ctx=256), out, config=ReportConfig(n_probes=2),
                 progress=False)  # fmt: skip
    assert "Lengths [256, 512] are skipped" in out.read_text()
