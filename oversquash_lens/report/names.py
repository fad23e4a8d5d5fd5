"""Display names of models: "SmolLM2-135M-Instruct", not its cache folder's path.

:func:`display_name` derives the name people know a model by: the registry card's title for
the embedded model and other known real models (also when given their converted cache folder),
a folder's ``config.json`` ``_name_or_path`` (its last component) or the folder's own name,
and a hub name as given. Light: json and pathlib only.
"""

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["display_name", "unique_names", "registry_card"]

_VERSIONED = re.compile(r"^(?P<slug>.+?)-\d+(\.\d+)+")


def _registry_title(name: str) -> str | None:
    """The card title of a registry model named ``name`` (or an alias), else None."""
    card = registry_card(name)
    return card.title if card is not None else None


def registry_card(name: str) -> Any:
    """The registry ``ModelCard`` of a known real model (name, alias or title), else None."""
    try:
        from ..models.registry import model_card, resolve_name
    except ImportError:  # pragma: no cover - registry not installed
        return None
    resolved = resolve_name(name)
    return model_card(resolved) if resolved is not None else None


def _folder_name(folder: Path) -> str:
    """A folder's display name: a registry cache folder's card title, else the last part of
    ``config.json``'s ``_name_or_path`` when it names a hub model, else the folder name."""
    match = _VERSIONED.match(folder.name)
    if match:
        title = _registry_title(match.group("slug"))
        if title is not None:
            return title
    title = _registry_title(folder.name)
    if title is not None:
        return title
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    origin = str(config.get("_name_or_path") or "").rstrip("/")
    if origin and not origin.startswith((".", "/", "~")) and not Path(origin).exists():
        return origin.split("/")[-1]
    return folder.name or str(folder)


def display_name(model: Any = None, source: Any = None) -> str:
    """The name to show for a model.

    Args:
        model: a loaded model (its ``cfg.model_name`` is read when ``source`` is None), or None.
        source: what the user asked for: None (the embedded default), a registry name or
            alias (``"gemma-3-270m"``), a local folder, or a hub name.

    Example:
        >>> display_name(None)                     # the embedded default
        'SmolLM2-135M-Instruct'
        >>> display_name(source="~/models/my-gpt") # its config's _name_or_path, or 'my-gpt'
    """
    if source is None and model is None:
        return _registry_title("smollm2-135m-instruct") or "SmolLM2-135M-Instruct"
    if source is None:
        cfg = getattr(model, "cfg", None)
        source = str(getattr(cfg, "model_name", "") or "") or type(model).__name__
    text = str(source)
    title = None if text.startswith((".", "/", "~")) else _registry_title(text)
    if title is not None:
        return title
    path = Path(text).expanduser()
    if text.startswith((".", "/", "~")) or path.exists():
        return _folder_name(path.resolve() if path.exists() else path)
    return text


def unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats told apart: ``["a", "a"] -> ["a (1)", "a (2)"]``."""
    out = []
    for i, name in enumerate(names):
        if names.count(name) > 1:
            name = f"{name} ({names[: i + 1].count(name)})"
        out.append(name)
    return out
