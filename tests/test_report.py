"""The HTML report: its measurements equal the library's, its findings quote what was
measured, one and two models, display names, and the page in headless Chromium."""

import base64
import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from oversquash_lens import OversquashError, oversquash_profile, testing, token_sensitivity, viz
from oversquash_lens.report import ReportConfig, build_report
from oversquash_lens.report import config as defaults
from oversquash_lens.report import findings as fnd
from oversquash_lens.report.measure import (
    STEPS,
    last_layer_sensitivity,
    measure_model,
    report_profile,
    with_routes,
)
from oversquash_lens.report.names import display_name, unique_names

from .browser import inspect_page

SMALL = ReportConfig(lengths=(4, 8, 16), n_probes=2)


@pytest.fixture(scope="module")
def tiny_pair():
    return testing.tiny_model("llama", n_ctx=256), testing.tiny_model("gemma", n_ctx=256)


@pytest.fixture(scope="module")
def llama_run(tiny_pair):
    return measure_model(tiny_pair[0], "tiny-llama", SMALL, lambda step: None)


# --- the measurements are the library's ----------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["estimate", "exact"])
def test_last_layer_sensitivity_is_token_sensitivity(arch, method):
    from .conftest import build

    model = build(arch)
    ours = last_layer_sensitivity(model, "1 2 3 4 5 6 7", method=method, n_probes=8)
    ref = token_sensitivity(model, "1 2 3 4 5 6 7", method=method, n_probes=8)
    assert torch.equal(ours.values[-1], ref.values[-1])  # the same probes, bitwise
    assert torch.isnan(ours.values[:-1]).all()  # other depths are not measured
    assert (ours.target, ours.method, ours.labels) == (ref.target, ref.method, ref.labels)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "neox"])
def test_report_profile_is_oversquash_profile(arch):
    from .conftest import build

    model = build(arch)
    toks = "what is the last digit 3 1 4 1 5 9 2 6 answer :"
    ours = report_profile(model, toks, method="estimate", n_probes=4)
    ours, note = with_routes(ours, model, torch.as_tensor(ours.tokens)[None])
    ref = oversquash_profile(model, toks, method="estimate", n_probes=4, route_tau=0.0)
    assert note == ""
    pd.testing.assert_frame_equal(ours.to_dataframe(), ref.to_dataframe())
    pd.testing.assert_frame_equal(ours.agreement(n_boot=50), ref.agreement(n_boot=50))


# --- findings quote the numbers measured ---------------------------------------------------


def test_crossing_phrases():
    grid = (8, 16, 512)
    assert "not reached on n ≤ 512" in fnd.crossing_phrase(None, grid, "identical")
    end = fnd.crossing_phrase(512, grid, "collapsed")
    assert "≥ 512" in end and "last length of the grid" in end and "<b>collapsed</b>" in end
    assert "reached at n = 16, holds to 512" in fnd.crossing_phrase(16, grid, "identical")


def test_collapse_findings_use_both_criteria(llama_run):
    curve = llama_run.curves["repeat"]
    by_topic = {f.topic: f for f in fnd.findings(llama_run)}
    for precision in ("bfloat16", "float16"):
        f = by_topic[precision]
        assert "<b>identical</b>" in f.html and "<b>collapsed</b>" in f.html
        for criterion in ("identical", "collapsed"):
            got = curve.crossing_length(precision, -1, mode="rounded", criterion=criterion)
            assert f.values["rounded"][criterion] == got
    assert "native" in by_topic["bfloat16"].values  # bfloat16 runs natively on CPU
    gap = curve.frame.query("layer == @curve.n_layers and precision == 'float32'")
    assert by_topic["gap"].values["last"] == pytest.approx(float(gap["rel_linf"].iloc[-1]))
    sep = llama_run.curves["repeat-sep"].frame.query(
        "layer == @curve.n_layers and precision == 'float32' and length == 16"
    )
    ratio = float(sep["rel_linf"].iloc[0]) / float(gap["rel_linf"].iloc[-1])
    assert by_topic["separators"].values["ratio"] == pytest.approx(ratio)
    assert all(f.section in ("collapse", "heads", "profile") for f in by_topic.values())


def _heads_run(first_mass, ov, attention=None):
    n = len(first_mass)
    frame = pd.DataFrame({
        "block": [i // 2 for i in range(n)], "head": [i % 2 for i in range(n)],
        "attention": attention or ["global"] * n, "first_mass": first_mass,
        "diag_mass": np.linspace(0.1, 0.9, n), "prev_mass": np.linspace(0.5, 0.2, n),
        "write_ratio": np.linspace(0.2, 0.01, n), "ov_copying": ov, "label": "mixing",
    })  # fmt: skip
    return SimpleNamespace(heads=SimpleNamespace(to_dataframe=lambda: frame.copy()))


def test_sink_finding_counts_both_thresholds():
    run = _heads_run([0.1, 0.2, 0.5, 0.9, 0.95, 0.4], [0.1] * 6)
    f = fnd.sink_finding(run)
    assert f.values[0.3] == (4, 4 / 6) and f.values[0.8] == (2, 2 / 6)
    assert f.values["first_block_0.3"] == 1 and f.values["first_block_0.8"] == 1
    assert "4 of 6 (66.7%) above ε = 0.3" in f.html and "2 of 6 (33.3%) above ε = 0.8" in f.html
    local = _heads_run([0.9, 0.9, 0.1, 0.1], [0.1] * 4, ["local", "local", "global", "global"])
    assert (
        "Global layers: 0.0%, local (sliding-window) layers: 100.0%" in fnd.sink_finding(local).html
    )
    none = fnd.sink_finding(_heads_run([0.1, 0.2], [0.1, 0.2]))
    assert "No sinks were measured" in none.html and none.values["first_block_0.3"] is None


def test_top_heads_finding():
    run = _heads_run([0.1] * 6, [0.3, 0.2, 0.5, 0.1, 0.4, 0.6])
    f = fnd.top_heads_finding(run)
    assert f.values["diag_mass"] == (2, 1, 0.9)  # the last head, block 2 head 1
    assert f.values["prev_mass"] == (0, 0, 0.5)
    assert f.values["write_ratio"] == (2, 1, pytest.approx(0.01))
    assert f.values["ov_copying"] == (1, 1, 0.1)
    assert "no head has a negative (erasing) OV spectrum" in f.html
    assert "most diagonal L2H1 (diag_mass 0.9)" in f.html


def test_sensitivity_findings(llama_run):
    prof = llama_run.profile
    sens = prof.sensitivity.values[-1, : prof.target + 1].double().numpy()
    k = int(np.ceil(0.1 * len(sens)))
    share, pred = fnd.sensitivity_findings(llama_run)
    assert share.values["first"] == pytest.approx(sens[:k].sum() / sens.sum())
    assert share.values["last"] == pytest.approx(sens[-k:].sum() / sens.sum())
    assert f"{100 * share.values['first']:.1f}% of it on the first 10%" in share.html
    table = prof.agreement(n_boot=fnd.N_BOOT)
    assert set(pred.values) == set(table["predictor"]) >= {"log_paths", "rollout", "bound"}
    assert "routes" in pred.values  # the information-flow routes are measured too
    for row in table.itertuples():
        assert pred.values[row.predictor] == pytest.approx(row.spearman, nan_ok=True)


# --- names ---------------------------------------------------------------------------------


def test_display_names(tmp_path):
    assert display_name(None) == "SmolLM2-135M-Instruct"
    assert display_name(source="gemma-3-270m") == "Gemma 3 270M"
    cache = tmp_path / "smollm2-135m-instruct-0.1.2-tf5"
    cache.mkdir()
    assert display_name(source=str(cache)) == "SmolLM2-135M-Instruct"
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "org/Cool-LM-1B"}))
    assert display_name(source=str(folder)) == "Cool-LM-1B"
    (folder / "config.json").write_text(json.dumps({"_name_or_path": str(tmp_path)}))
    assert display_name(source=str(folder)) == "my-model"
    assert display_name(source="gpt2") == "gpt2"
    model = SimpleNamespace(cfg=SimpleNamespace(model_name=str(folder)))
    assert display_name(model) == "my-model"
    assert unique_names(["a", "b", "a"]) == ["a (1)", "b", "a (2)"]


# --- the page ------------------------------------------------------------------------------


def _csv_links(text):
    return {
        m.group(1): pd.read_csv(__import__("io").StringIO(base64.b64decode(m.group(2)).decode()))
        for m in re.finditer(r"download='([^']+)' href='data:text/csv;base64,([^']+)'", text)
    }


def test_report_one_model(tiny_pair, tmp_path, capsys):
    model = tiny_pair[0]
    config = ReportConfig(lengths=(4, 8, 16), n_probes=2)
    path = build_report(model, tmp_path / "one.html", names=["Tiny Llama"], config=config)
    text = path.read_text()
    assert "<title>oversquash_lens: Tiny Llama</title>" in text
    for anchor in ("findings", "model", "collapse", "profile", "heads", "timings"):
        assert f"id='{anchor}'" in text and f"href='#{anchor}'" in text
    assert text.count("→ collapse") >= 4 and "→ heads" in text and "→ profile" in text
    assert "float32, native" not in text  # the reference run is not drawn twice
    assert "bfloat16, native" in text and "float32 (the model" in text
    links = _csv_links(text)
    heads = links["heads-tiny-llama.csv"]
    assert len(heads) == model.cfg.n_layers * model.cfg.n_heads  # the full table, downloadable
    assert {"collapse-tiny-llama.csv", "profile-tiny-llama.csv"} <= set(links)
    assert text.count("CircuitsVis.render(") == 2  # colored tokens + attention heads
    assert set(config.timings) >= {*STEPS, "page", "total"}
    err = capsys.readouterr().err  # the outer bar names the model and the section
    assert "report [Tiny Llama]: collapse repeat" in err and "report [Tiny Llama]: heads" in err


def test_report_two_models(tiny_pair, tmp_path):
    names = ["Tiny Llama", "Tiny Gemma"]
    path = build_report(models=list(tiny_pair), path=tmp_path / "two.html", names=names,
                        config=SMALL, progress=False)  # fmt: skip
    text = path.read_text()
    assert "oversquash_lens report: Tiny Llama vs Tiny Gemma" in text
    table = text[text.index("<table class='findings'>") :]
    table = table[: table.index("</table>")]
    assert "<th>Tiny Llama</th><th>Tiny Gemma</th>" in table
    assert table.count("<tr>") == len(fnd.TOPICS) + 1  # every topic, one cell per model
    for name in ("Tiny Llama", "Tiny Gemma"):
        assert f"{name}: repeat" in text  # the collapse panels side by side
        assert f"heads-{name.lower().replace(' ', '-')}.csv" in text
    assert text.count("CircuitsVis.render(") == 4
    assert "class='columns'" in text


def test_report_arguments(tiny_pair, tmp_path):
    with pytest.raises(OversquashError, match="one or two"):
        build_report(models=[tiny_pair[0]] * 3, path=tmp_path / "x.html", config=SMALL)
    with pytest.raises(OversquashError, match="names"):
        build_report(tiny_pair[0], tmp_path / "x.html", names=["a", "b"], config=SMALL)
    with pytest.raises(OversquashError, match="not both"):
        build_report(tiny_pair[0], tmp_path / "x.html", models=[tiny_pair[1]], config=SMALL)


def test_quick_config_and_defaults():
    from oversquash_lens.collapse import collapse_curve
    from oversquash_lens.tasks import pair_tasks

    quick = ReportConfig.quick()
    assert tuple(quick.lengths) == defaults.QUICK_LENGTHS and not quick.native
    assert quick.default_grid and ReportConfig().default_grid
    assert not ReportConfig().head_ablation  # the report never ablates by default
    assert defaults.PAIR_TASKS == pair_tasks()
    import inspect

    default = inspect.signature(collapse_curve).parameters["precisions"].default
    assert tuple(default) == defaults.DEFAULT_PRECISIONS
    assert ReportConfig.quick(n_probes=3).n_probes == 3


def test_colored_tokens_multi_scales_each_measure():
    tokens = ["a", "b", "c"]
    view = viz.colored_tokens_multi(
        tokens, {"big": [0.0, 50.0, 100.0], "tiny": [1e-8, 1e-4, 1.0]}, log=["tiny"],
        selected="tiny",
    )  # fmt: skip
    body = view.body()
    payload = json.loads(re.search(r'"values": (\[\[.*?\]\])', body).group(1))
    assert np.allclose(payload, [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]])  # [token][measure]
    labels = json.loads(re.search(r'"labels": (\[.*?\])', body).group(1))
    assert labels[0].startswith("tiny (log 1e-08") and labels[1] == "big (÷ 100)"  # selected 1st
    with pytest.raises(OversquashError, match="log"):
        viz.colored_tokens_multi(tokens, {"a": [1, 2, 3]}, log=["b"])
    with pytest.raises(OversquashError, match="selected"):
        viz.colored_tokens_multi(tokens, {"a": [1, 2, 3]}, selected="b")
    shared = viz.colored_tokens_multi(tokens, {"a": [1, 2, 3]}, scale="shared").body()
    assert '"labels": ["a"]' in shared


# --- in the browser ------------------------------------------------------------------------

_ZOOM = "xpath=//h3[contains(., 'Zoomed')]/following-sibling::div[1]"
_VISIBLE = """Array.from(document.querySelectorAll('h2[id]')).map(h => {
  let n = h.nextElementSibling, size = 0;
  while (n && !(n.tagName === 'H2' && n.id)) { size += n.getBoundingClientRect().height;
                                              n = n.nextElementSibling; }
  return [h.id, size]; })"""


def _check_page(path, tmp_path, n_models):
    page = inspect_page(path, selectors=[".js-plotly-plot", _ZOOM, ".colored-tokens"],
                        evaluate=_VISIBLE, sections_dir=tmp_path / "shots")  # fmt: skip
    assert page["errors"] == [] and page["external"] == []
    sections = dict(page["value"])
    assert set(sections) == {"findings", "model", "collapse", "profile", "heads", "timings"}
    assert all(height > 40 for height in sections.values()), sections
    plots = page["ink"][".js-plotly-plot"]
    assert len(plots) == 5  # 2 collapse, gap map, profile, head maps; panels per model inside
    assert all(p["colour"] > 0.002 for p in plots), plots  # data drawn, not empty axes
    zooms = page["ink"][_ZOOM]
    assert len(zooms) == n_models and all(z["colour"] > 0.002 for z in zooms), zooms
    tokens = page["ink"][".colored-tokens"]
    assert len(tokens) == n_models and all(t["ink"] > 0.02 for t in tokens), tokens
    assert len(page["sections"]) == 6
    return page


@pytest.mark.browser
def test_report_in_chromium_one_model(tiny_pair, tmp_path):
    path = build_report(tiny_pair[0], tmp_path / "one.html", config=SMALL, progress=False)
    page = _check_page(path, tmp_path, 1)
    assert "Findings" in page["text"] and "Head Selector" in page["text"]


@pytest.mark.browser
def test_report_in_chromium_two_models(tiny_pair, tmp_path):
    path = build_report(models=list(tiny_pair), path=tmp_path / "two.html", config=SMALL,
                        names=["Tiny Llama", "Tiny Gemma"], progress=False)  # fmt: skip
    page = _check_page(path, tmp_path, 2)
    assert "Tiny Gemma" in page["text"]


def test_window_note():
    from oversquash_lens.report.page import _window_note

    run = SimpleNamespace(name="g", windows=(512, None), profile=SimpleNamespace(tokens=[0] * 77))
    assert "equal the full ones" in _window_note(run)
    run.windows = (16, None)
    assert "assume full attention" in _window_note(run)
