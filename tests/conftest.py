"""Shared fixtures: tiny offline models of several architectures, and no network."""

import contextlib
import socket

import pytest
import torch

from oversquash_lens import _tl, testing

TL_MAJOR = _tl.tl_major_version()
# Every architecture runs as a TransformerBridge; on transformer-lens 3.x the legacy
# HookedTransformer (absolute and rotary/GQA variants) runs through the same tests.
ARCHS = [*testing.ARCHITECTURES, "native"]
if TL_MAJOR < 4:
    ARCHS += ["hooked", "hooked-rotary"]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail any attempt to open a network connection: analysis must never reach out."""

    def refuse(self, address, *args, **kwargs):
        family = getattr(self, "family", None)
        if family == socket.AF_UNIX:
            return _real_connect(self, address, *args, **kwargs)
        raise RuntimeError(f"network access attempted: {address!r}")

    _real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a[0] if a else k))


_CACHE: dict[str, torch.nn.Module] = {}


def build(arch: str) -> torch.nn.Module:
    """Session-cached tiny model of ``arch`` (GPT-2, GPT-NeoX, Llama, Gemma or TL-native)."""
    if arch not in _CACHE:
        if arch == "native":
            _CACHE[arch] = testing.tiny_native_model()
        elif arch == "hooked":
            _CACHE[arch] = testing.tiny_hooked_model()
        elif arch == "hooked-rotary":
            _CACHE[arch] = testing.tiny_hooked_model(
                positional_embedding_type="rotary", n_key_value_heads=2
            )
        else:
            _CACHE[arch] = testing.tiny_model(arch)
    return _CACHE[arch]


@pytest.fixture(params=ARCHS)
def arch_model(request):
    """Each of the five fixture architectures in turn."""
    return build(request.param)


@pytest.fixture
def llama():
    return build("llama")


@pytest.fixture
def gpt2():
    return build("gpt2")


def state_snapshot(model):
    """Everything a call must leave unchanged: parameters (bitwise), modes, flags, hooks."""
    from oversquash_lens import _tl

    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        _tl.count_hooks(model),
    )


def assert_unchanged(model, snapshot):
    params, modes, grads, hooks = snapshot
    after = state_snapshot(model)
    assert after[1] == modes, "train/eval mode changed"
    assert after[2] == grads, "requires_grad changed"
    assert after[3] == hooks, f"hooks leaked: {hooks} before, {after[3]} after"
    for key, value in params.items():
        assert torch.equal(after[0][key], value), f"parameter {key} changed"


@contextlib.contextmanager
def without_runtime_type_checks():
    """Call the package as users do, without the test suite's jaxtyping/beartype import hook:
    wrong-typed arguments (``strict='no'``) must then reach the package's own validation and
    raise its OversquashError (under the hook, beartype would reject them first)."""
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)
