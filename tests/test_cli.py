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
