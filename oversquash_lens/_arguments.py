"""Checks of ``oversquash-lens`` arguments that need more than argparse, made before any
model loads: the model argument (a missing folder, a folder without ``config.json``, a hub
name with no internet), ``--target`` against the prompt's token count and ``--lengths``
against the context length in the model's ``config.json``. Each failure is an
:class:`ArgumentCheckError` whose message the command line prints as one line (exit 2).

Only the standard library at import; the registry, ``huggingface_hub`` and the tokenizer are
imported inside the checks that need them.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ArgumentCheckError", "check_model", "check_target", "check_lengths", "online"]


class ArgumentCheckError(Exception):
    """A bad argument found after parsing (printed as one line, exit 2)."""


def _known_models() -> list[str]:
    try:
        from .models.registry import available_models

        return list(available_models().index)
    except Exception:  # pragma: no cover - registry missing
        return ["smollm2-135m-instruct"]


def online(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers (a TCP connection, in a thread so DNS cannot hang us)."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ) not in ("", "0"):
        return False
    import socket
    import threading

    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            result.append(True)
        except Exception:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _hub_cached(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:
        return None
    return Path(found).parent if isinstance(found, str) else None


def check_model(source: str | None) -> Path | None:
    """Reject a model argument that cannot load, before loading; return its folder when it is
    known without loading (for the target check), else None."""
    if source is None:
        return _registry_folder("smollm2-135m-instruct")
    if not source.strip():
        raise ArgumentCheckError("--model '' is empty")
    path = Path(source).expanduser()
    if source.startswith((".", "/", "~")) or path.exists():
        if not path.is_dir():
            raise ArgumentCheckError(f"--model {source}: no such folder")
        if not (path / "config.json").is_file():
            raise ArgumentCheckError(
                f"--model {source}: not a Hugging Face model folder (no config.json)"
            )
        return path
    from .models.registry import resolve_name

    if resolve_name(source) is not None:
        return _registry_folder(source)
    cached = _hub_cached(source)
    if cached is not None or online():
        return cached
    raise ArgumentCheckError(
        f"--model {source}: {source!r} is a Hugging Face hub name, and hub names need the "
        "internet, which is not reachable here; offline, give a local folder (with a "
        f"config.json) or one of the known real models: {', '.join(_known_models())} (see "
        "`oversquash-lens models`)"
    )


def _registry_folder(name: str) -> Path | None:
    try:
        from .models.registry import available_models, resolve_name

        folder = available_models().loc[resolve_name(name), "cache_folder"]
    except Exception:
        return None
    return Path(folder) if isinstance(folder, str) else None


def check_target(target: int, prompt: str, folder: Path | None) -> None:
    """``--target`` against the prompt's token count, read with the folder's tokenizer (at
    most one more position: a BOS token may be prepended)."""
    if folder is None:
        return
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        n = len(tok(prompt)["input_ids"]) + 1
    except Exception:  # no tokenizer here: the model checks the target itself
        return
    if not -n <= target < n:
        raise ArgumentCheckError(
            f"--target {target}: the prompt has at most {n} tokens (positions {-n}..{n - 1})"
        )


def check_lengths(lengths: Sequence[int] | None, folder: Path | None) -> None:
    """``--lengths`` against the context length in the folder's config.json: the pair of n
    items has n + 1 items of at least one token each (the model checks the exact count)."""
    if not lengths or folder is None:
        return
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    keys = ("max_position_embeddings", "n_positions", "n_ctx")
    n_ctx = next((config[k] for k in keys if isinstance(config.get(k), int)), None)
    longest = max(lengths)
    if n_ctx is not None and longest + 1 > n_ctx:
        raise ArgumentCheckError(
            f"--lengths {longest}: n = {longest} needs more than {longest} tokens (n + 1 items), "
            f"more than the model's n_ctx={n_ctx}"
        )
