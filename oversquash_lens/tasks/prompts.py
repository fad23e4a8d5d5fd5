"""Prompt builders for the collapse probe and the task harness (docs/science.md §2 and §6).

Every sequence is built from *token ids*: each distinct piece (an item such as ``" 1"``, a
separator, the prompt text around the items) is tokenized once and the ids are concatenated.
So ``repeated_pair(model, n)`` differs from its extension by exactly one repeated item, also
for BPE tokenizers that would merge ``"1 1 1"`` differently if the whole string were
re-tokenized. Items are encoded as ``joiner + item`` (default ``" 1"``); separators are
encoded on their own (``","``).

Without a tokenizer (``model=None`` or a ``boot_native`` model) pieces may be token ids
(``int`` or a list of ints); the text symbols the built-in tasks use map to ids through
``symbols`` — given explicitly, or carried by the model as ``model.oversquash_symbols``
(the tiny test models do: :data:`oversquash_lens.testing.TINY_SYMBOLS`) — and the prompt text
around items is dropped. No ids are ever assumed: a symbol with no mapping raises.

Example:
    >>> pair = repeated_pair(model, 8)                 # v = [u, a], v* = [u, a, a]
    >>> pair.extended[: len(pair.base)].equal(pair.base)
    True
    >>> task_prompt(model, "count-ones", 5, remedy="separators").text
    'Count the ones: 1 1 1, 1 1. Answer:'
"""

import inspect
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from .. import _tl, _validate
from .._tl.protocol import HookedModel
from ..errors import InvalidArgumentError

__all__ = [
    "Pair", "Prompt", "REMEDIES", "RANDOM_TASKS", "repeated_pair",
    "alternating_pair", "copy_pair", "counting_prompt", "copying_prompt", "task_pair",
    "task_prompt", "pair_tasks", "prompt_tasks", "applicable_remedies", "MAX_ITEMS",
]  # fmt: skip

Piece = str | int | Sequence[int]
#: a model, or None to build token ids without one (pieces given as ids or symbols)
MaybeModel = HookedModel | None


REMEDIES = ("none", "separators", "hint", "interleave", "repeat-final")

_TEMPLATES = {
    "ones": "Count the ones: {items}. Answer:",
    "bernoulli": "Count the ones: {items}. Answer:",
    "word": "How many times does the word {word} appear in: {items}. Answer:",
    "sum": "{items} =",
    "last": "What is the last digit in this sequence: {items}? Answer:",
    "first": "What is the first digit in this sequence: {items}? Answer:",
}
_HINT = "Hint: go through the sequence one item at a time."
_WORDS = ("the", "cat", "sat", "on", "mat", "dog", "ran", "and", "a")
#: Most items a builder lays out when the model's context is shorter (every item is at least
#: one token, so a longer prompt could never run; refused before any list is built).
MAX_ITEMS = 1 << 20
#: Pieces that must not encode to the tokenizer's unknown token: the items, separators and
#: fillers (the prompt text around them, and a sum's built-in "+", may: they frame the items).
_CHECKED = ("item", "sep", "filler")


@dataclass(frozen=True)
class Pair:
    """Two sequences the last token must tell apart (docs/science.md §2: v and v*).

    ``length`` is n, the number of items in ``base``; for ``repeat`` tasks ``extended`` is
    ``base`` plus one more copy of its final item (and a separator where one falls due).
    """

    base: Int[Tensor, " base_pos"]
    extended: Int[Tensor, " ext_pos"]
    task: str
    length: int


@dataclass(frozen=True)
class Prompt:
    """A counting/copying prompt with its ground-truth answer (docs/science.md §6)."""

    tokens: Int[Tensor, " pos"]
    answer: str
    task: str
    length: int
    remedy: str = "none"
    text: str = ""


class _Codec:
    """Encodes pieces to ids with the model's tokenizer (cached), or maps ids/symbols."""

    def __init__(self, model: Any, *, bos: int | None | str, symbols: Mapping[str, Any] | None):
        self.tokenizer = _tl.text_tokenizer(model)
        if symbols is None:
            symbols = getattr(model, "oversquash_symbols", None) if model is not None else None
        self.symbols: Mapping[str, Any] = {} if symbols is None else symbols
        self._cache: dict[str, list[int]] = {}
        self.unk = _unknown_id(self.tokenizer)
        if bos == "auto":
            tok_bos = getattr(self.tokenizer, "bos_token_id", None)
            use = self.tokenizer is not None and _tl.prepends_bos(model)
            self.bos = [int(tok_bos)] if use and tok_bos is not None else []
        elif bos is None:
            self.bos = []
        elif isinstance(bos, int) and not isinstance(bos, bool):
            self.bos = [bos]
        else:
            raise InvalidArgumentError(f"bos={bos!r} must be 'auto', None or a token id")

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None

    def ids(self, piece: Piece, *, joiner: str = "", name: str = "item") -> list[int]:
        if isinstance(piece, bool):
            raise InvalidArgumentError(f"{name}={piece!r} is not text or token ids")
        if isinstance(piece, int):
            return [piece]
        if not isinstance(piece, str):
            try:
                ids = [int(t) for t in piece]
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"{name}={piece!r} is not text or token ids") from None
            if not ids:
                raise InvalidArgumentError(f"{name}={piece!r} is empty")
            return ids
        if self.tokenizer is None:
            if piece.strip() in self.symbols:
                return self.ids(self.symbols[piece.strip()], name=name)
            raise InvalidArgumentError(
                f"{name}={piece!r}: the model has no tokenizer and {piece!r} is not in "
                f"symbols {sorted(self.symbols)}; pass token ids, or map the task's symbols "
                "to ids with symbols={'1': id, ...} (task_options={'symbols': ...})"
            )
        text = joiner + piece if piece else ""
        if text not in self._cache:
            self._cache[text] = list(self.tokenizer.encode(text, add_special_tokens=False))
        if piece and not self._cache[text]:
            raise InvalidArgumentError(f"{name}={piece!r} encodes to no tokens")
        if self.unk is not None and name in _CHECKED and self.unk in self._cache[text]:
            unk = getattr(self.tokenizer, "unk_token", None)
            raise InvalidArgumentError(
                f"{name}={piece!r} encodes to the tokenizer's unknown token {unk!r} "
                f"(id {self.unk}): the model cannot tell it from any other unknown text; "
                "choose a piece in its vocabulary"
            )
        return self._cache[text]

    def text(self, text: Piece) -> list[int]:
        """Prompt text around the items (token ids kept; text dropped without a tokenizer)."""
        if not isinstance(text, str):
            return self.ids(text, name="prefix")
        return self.ids(text, name="template") if self.has_text and text else []


def _unknown_id(tokenizer: Any) -> int | None:
    """The tokenizer's unknown-token id, unless it doubles as BOS/EOS/pad (GPT-2's
    ``<|endoftext|>``: then it only appears for that literal text, which is no accident)."""
    unk = getattr(tokenizer, "unk_token_id", None) if tokenizer is not None else None
    if not isinstance(unk, int):
        return None
    special = {getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
    return None if unk in special else unk


def _fits(model: Any, n: int, extra: int = 0, *, name: str = "n") -> None:
    """Refuse ``n + extra`` items beyond ``max(n_ctx, MAX_ITEMS)`` before building anything
    (longer prompts of a model may still be built: callers check them against n_ctx)."""
    cfg = getattr(model, "cfg", None) if model is not None else None
    n_ctx = getattr(cfg, "n_ctx", None)
    limit = max(n_ctx, MAX_ITEMS) if isinstance(n_ctx, int) else MAX_ITEMS
    if n + extra > limit:
        ctx = f"the model's n_ctx={n_ctx} and " if isinstance(n_ctx, int) else ""
        raise InvalidArgumentError(
            f"{name}={n}: {n + extra} items exceed {ctx}MAX_ITEMS={MAX_ITEMS} (every item is "
            "at least one token, so such a prompt could never run); choose a smaller length"
        )


def _split(template: Any) -> tuple[str, str]:
    _validate.text(template, "template")
    if template.count("{items}") != 1:
        raise InvalidArgumentError(f"template={template!r} must contain '{{items}}' exactly once")
    prefix, suffix = template.split("{items}")
    return prefix.rstrip(" "), suffix


def _sequence(
    codec: _Codec, items: Sequence[Piece], *, prefix: Piece = "", suffix: str = "",
    sep: Piece | None = None, every: int = 3, filler: Piece | None = None, joiner: str = " ",
    filler_name: str = "filler",
) -> list[int]:  # fmt: skip
    """BOS + prefix + items (a separator after every ``every``-th item but the last, or a
    filler between items) + suffix, concatenated from per-piece token ids."""
    _validate.integer(every, "every", minimum=1)
    _validate.text(joiner, "joiner")
    out = codec.bos + codec.text(prefix)
    for i, item in enumerate(items):
        if i and filler is not None:
            out += codec.ids(filler, joiner=joiner, name=filler_name)
        out += codec.ids(item, joiner=joiner)
        if sep is not None and (i + 1) % every == 0 and i + 1 < len(items):
            out += codec.ids(sep, name="sep")
    return out + codec.text(suffix)


def _check_n(n: Any, minimum: int = 1) -> int:
    return _validate.integer(n, "n", minimum=minimum)


def _pair(base: list[int], ext: list[int], task: str, n: int) -> Pair:
    return Pair(torch.tensor(base, dtype=torch.long), torch.tensor(ext, dtype=torch.long), task, n)


def repeated_pair(
    model: MaybeModel, n: int, *, item: Piece = "1", sep: Piece | None = None, every: int = 3,
    filler: Piece | None = None, prefix: Piece = "", joiner: str = " ",
    bos: int | None | str = "auto", symbols: Mapping[str, Any] | None = None, task: str = "repeat",
) -> Pair:  # fmt: skip
    """n copies of ``item`` vs n+1 copies (Thm 4.2's v = [u, a], v* = [u, a, a]).

    ``sep`` adds a separator after every ``every``-th item (the paper's commas); ``filler``
    interleaves a filler piece between items. The extension is verified to equal the base
    followed by exactly the ids of one more item (plus its due separator/filler).
    """
    n = _check_n(n)
    _fits(model, n, 1)  # the extension has n + 1 items
    codec = _Codec(model, bos=bos, symbols=symbols)
    kw: dict[str, Any] = dict(prefix=prefix, sep=sep, every=every, filler=filler, joiner=joiner)
    base = _sequence(codec, [item] * n, **kw)
    ext = _sequence(codec, [item] * (n + 1), **kw)
    unit = codec.ids(item, joiner=joiner)
    if ext[: len(base)] != base or ext[-len(unit) :] != unit or base[-len(unit) :] != unit:
        raise InvalidArgumentError(  # pragma: no cover - guaranteed by construction
            f"item={item!r}: extension is not the base plus one repeated item"
        )
    return _pair(base, ext, task, n)


def alternating_pair(
    model: MaybeModel, n: int, *, items: tuple[Piece, Piece] = ("1", "0"), prefix: Piece = "",
    joiner: str = " ", bos: int | None | str = "auto", symbols: Mapping[str, Any] | None = None,
) -> Pair:  # fmt: skip
    """``a b a b …`` vs ``b a b a …`` of n items each: Prop B.4's counter-example, whose
    last-token representations do not collapse."""
    n = _check_n(n, 2)
    _fits(model, n)
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) != 2:
        raise InvalidArgumentError(f"items={_validate.short(items)} must be a pair (a, b)")
    codec = _Codec(model, bos=bos, symbols=symbols)
    a, b = items
    base = _sequence(
        codec, [a if i % 2 == 0 else b for i in range(n)], prefix=prefix, joiner=joiner
    )
    ext = _sequence(codec, [b if i % 2 == 0 else a for i in range(n)], prefix=prefix, joiner=joiner)
    return _pair(base, ext, "alternating", n)


def copy_pair(
    model: MaybeModel, n: int, *, which: str = "last", item: Piece = "1", other: Piece = "0",
    prefix: Piece = "", joiner: str = " ", bos: int | None | str = "auto",
    symbols: Mapping[str, Any] | None = None,
) -> Pair:  # fmt: skip
    """Copying pairs. ``which="last"``: ``1…1 0`` vs ``1…1 0 0`` (Fig 1's ones followed by a
    zero, last token repeated); ``which="first"``: ``0 1…1`` vs ``1 1…1`` (same length)."""
    n = _check_n(n, 2)
    _fits(model, n, 1 if which == "last" else 0)
    codec = _Codec(model, bos=bos, symbols=symbols)
    kw: dict[str, Any] = dict(prefix=prefix, joiner=joiner)
    if which == "last":
        base = _sequence(codec, [item] * (n - 1) + [other], **kw)
        ext = _sequence(codec, [item] * (n - 1) + [other, other], **kw)
    elif which == "first":
        base = _sequence(codec, [other] + [item] * (n - 1), **kw)
        ext = _sequence(codec, [item] * n, **kw)
    else:
        raise InvalidArgumentError(f"which={which!r} must be 'last' or 'first'")
    return _pair(base, ext, f"copy-{which}", n)


def _remedy_kwargs(remedy: str, every: int, sep: Piece) -> dict[str, Any]:
    if remedy not in REMEDIES:
        raise InvalidArgumentError(f"remedy={remedy!r} is not one of {list(REMEDIES)}")
    return {"sep": sep, "every": every} if remedy == "separators" else {}


def counting_prompt(
    model: MaybeModel, n: int, *, kind: str = "ones", p: float = 0.7, word: str = "cat",
    seed: int = 0,
    remedy: str = "none", every: int = 3, sep: Piece = ",", filler: Piece = "and",
    hint: str = _HINT, template: str | None = None, bos: int | None | str = "auto",
    symbols: Mapping[str, Any] | None = None,
) -> Prompt:  # fmt: skip
    """Counting prompts of n items (docs/science.md §6): ``kind="ones"`` (all ones), ``"bernoulli"``
    (0/1 digits, P(1) = p, seeded), ``"word"`` (count ``word`` among n words drawn from a
    small list) or ``"sum"`` (``1 + 1 + … =``). ``remedy`` is one of :data:`REMEDIES`
    except ``"repeat-final"`` (it would change the count) and, for sums, ``"interleave"`` and
    ``"separators"`` (either would sit between an item and its "+")."""
    n = _check_n(n)
    _fits(model, n)
    _validate.integer(seed, "seed")
    _validate.text(word, "word")
    if kind not in ("ones", "bernoulli", "word", "sum"):
        raise InvalidArgumentError(f"kind={kind!r} must be 'ones', 'bernoulli', 'word' or 'sum'")
    if remedy == "repeat-final" or (kind == "sum" and remedy in _BREAK_SUMS):
        raise InvalidArgumentError(
            f"remedy={remedy!r} does not apply to counting task {kind!r} "
            f"(it would change the answer or the '+' between items)"
        )
    rng = random.Random(seed)
    if kind == "bernoulli":
        _validate.number(p, "p", minimum=0.0, maximum=1.0)
        items = ["1" if rng.random() < p else "0" for _ in range(n)]
        answer = items.count("1")
    elif kind == "word":
        if word not in _WORDS:
            raise InvalidArgumentError(
                f"word={_validate.short(word)} is not one of the words drawn {list(_WORDS)}: "
                "its count would always be 0"
            )
        items = [rng.choice(_WORDS) for _ in range(n)]
        answer = items.count(word)
    else:
        items, answer = ["1"] * n, n
    between = "+" if kind == "sum" else (filler if remedy == "interleave" else None)
    tmpl = _validate.text(template or _TEMPLATES[kind], "template").replace("{word}", word)
    name = "sum-ones" if kind == "sum" else f"count-{kind}"
    opts: dict[str, Any] = dict(every=every, sep=sep, filler=between, hint=hint)
    if kind == "sum":
        opts["filler_name"] = "operator"  # the built-in "+": not a user piece, not checked
    return _prompt(model, items, str(answer), name, n, remedy, tmpl, bos, symbols, **opts)


def copying_prompt(
    model: MaybeModel, n: int, *, which: str = "last", item: str = "1", other: str = "0",
    remedy: str = "none", every: int = 3, sep: Piece = ",", filler: Piece = "and",
    hint: str = _HINT, repeat: int = 2, template: str | None = None,
    bos: int | None | str = "auto", symbols: Mapping[str, Any] | None = None,
) -> Prompt:  # fmt: skip
    """Copying prompts (docs/science.md §6): the last digit of ``1…1 0`` or the first of ``0 1…1``.
    ``remedy="repeat-final"`` (last only) writes the final item ``repeat`` more times."""
    n = _check_n(n, 2)
    repeat = _validate.integer(repeat, "repeat", minimum=0)
    _fits(model, n, repeat if remedy == "repeat-final" else 0)
    if which not in ("last", "first"):
        raise InvalidArgumentError(f"which={which!r} must be 'last' or 'first'")
    items = [item] * (n - 1) + [other] if which == "last" else [other] + [item] * (n - 1)
    if remedy == "repeat-final":
        if which != "last":
            raise InvalidArgumentError("remedy='repeat-final' applies to copy-last only")
        items += [other] * repeat
    tmpl = template or _TEMPLATES[which]
    between = filler if remedy == "interleave" else None
    opts: dict[str, Any] = dict(every=every, sep=sep, filler=between, hint=hint)
    return _prompt(model, items, other, f"copy-{which}", n, remedy, tmpl, bos, symbols, **opts)


def _prompt(
    model: Any, items: list[str], answer: str, task: str, n: int, remedy: str, template: str,
    bos: Any, symbols: Mapping[str, Any] | None, *, every: int, sep: Piece,
    filler: Piece | None, hint: str, filler_name: str = "filler",
) -> Prompt:  # fmt: skip
    codec = _Codec(model, bos=bos, symbols=symbols)
    kw = _remedy_kwargs(remedy, every, sep)
    prefix, suffix = _split(template)
    if remedy == "hint":
        prefix = f"{hint} {prefix}".strip()
    ids = _sequence(
        codec, items, prefix=prefix, suffix=suffix, filler=filler, filler_name=filler_name, **kw
    )
    tok = codec.tokenizer
    text = tok.decode(ids[len(codec.bos) :]) if tok is not None else ""
    return Prompt(torch.tensor(ids, dtype=torch.long), answer, task, n, remedy, text)


# --------------------------------------------------------------------------- registry
def _prompt_pair(model: Any, n: int, *, task: str, **kw: Any) -> Pair:
    """Prompts of n and n+1 items: the pair the model must tell apart to answer right."""
    _fits(model, _check_n(n), 1)
    a, b = task_prompt(model, task, n, **kw), task_prompt(model, task, n + 1, **kw)
    name = task if kw.get("remedy", "none") == "none" else f"{task}-{kw['remedy']}"
    return Pair(a.tokens, b.tokens, name, n)


_PAIRS: dict[str, Callable[..., Pair]] = {
    "repeat": repeated_pair,
    "repeat-sep": partial(repeated_pair, sep=",", task="repeat-sep"),
    "repeat-interleave": partial(repeated_pair, filler="and", task="repeat-interleave"),
    "alternating": alternating_pair,
    "copy-last": partial(copy_pair, which="last"),
    "copy-first": partial(copy_pair, which="first"),
    "count-ones": partial(_prompt_pair, task="count-ones"),
    "count-ones-sep": partial(_prompt_pair, task="count-ones", remedy="separators"),
}
_PROMPTS: dict[str, Callable[..., Prompt]] = {
    "count-ones": partial(counting_prompt, kind="ones"),
    "count-bernoulli": partial(counting_prompt, kind="bernoulli"),
    "count-word": partial(counting_prompt, kind="word"),
    "sum-ones": partial(counting_prompt, kind="sum"),
    "copy-last": partial(copying_prompt, which="last"),
    "copy-first": partial(copying_prompt, which="first"),
}
#: Prompt tasks whose items are drawn at random (``seed`` matters).
RANDOM_TASKS = frozenset({"count-bernoulli", "count-word"})


def pair_tasks() -> tuple[str, ...]:
    """Names accepted by :func:`task_pair` and ``collapse_curve(task=...)``."""
    return tuple(_PAIRS)


def prompt_tasks() -> tuple[str, ...]:
    """Names accepted by :func:`task_prompt` and ``task_accuracy``."""
    return tuple(_PROMPTS)


#: Remedies that would break ``1 + 1 + … =``: a filler or a separator between an item and
#: its "+" ("1 + 1 + 1, + 1 …" is not a sum).
_BREAK_SUMS = ("interleave", "separators")


def applicable_remedies(task: str) -> tuple[str, ...]:
    """Remedies that keep the answer of prompt ``task`` unchanged and the prompt well formed
    (``repeat-final`` only for ``copy-last``; no filler or separator inside a sum)."""
    _lookup(_PROMPTS, task)
    return tuple(
        r
        for r in REMEDIES
        if (r != "repeat-final" or task == "copy-last")
        and (r not in _BREAK_SUMS or task != "sum-ones")
    )


def _lookup(
    table: Mapping[str, Callable[..., Any]], task: Any, options: Mapping[str, Any] | None = None
) -> Callable[..., Any]:
    if not isinstance(task, str) or task not in table:
        raise InvalidArgumentError(f"task={task!r} is not one of {list(table)}")
    params = inspect.signature(table[task]).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        known = set(params) - {"model", "n"}
        unknown = sorted(set(options or ()) - known)
        if unknown:
            raise InvalidArgumentError(
                f"task {task!r} has no option(s) {unknown}; its options are {sorted(known)}"
            )
    return table[task]


def task_pair(model: MaybeModel, task: str, n: int, **options: Any) -> Pair:
    """The :class:`Pair` of registered ``task`` at length n (see :func:`pair_tasks`)."""
    return _lookup(_PAIRS, task, options)(model, n, **options)


def task_prompt(model: MaybeModel, task: str, n: int, **options: Any) -> Prompt:
    """The :class:`Prompt` of registered ``task`` at length n (see :func:`prompt_tasks`)."""
    return _lookup(_PROMPTS, task, options)(model, n, **options)
