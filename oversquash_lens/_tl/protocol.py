"""``HookedModel``: the type of every ``model`` argument of the public API.

Structurally, any TransformerLens model with the HookedRootModule API: a
``TransformerBridge`` (transformer-lens 3.9 / 4.x) or a legacy ``HookedTransformer``. For static
type checkers it is a :class:`typing.Protocol` with the members the package relies on. At run
time it is ``Any``: whether an object really is such a model is checked by
:func:`oversquash_lens._tl.model_info`, which raises :class:`~oversquash_lens.errors.
UnsupportedModelError` naming what is missing (a runtime Protocol check would instead raise a
type checker's own error and hide that message).
"""

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

__all__ = ["HookedModel"]


class _HookedModelProtocol(Protocol):
    """The HookedRootModule surface oversquash_lens uses (docs/architecture.md, "Data flow")."""

    cfg: Any
    blocks: Any
    tokenizer: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(
        self, fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = ..., **kwargs: Any
    ) -> Any: ...

    def to_tokens(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = ...) -> Iterator[torch.nn.Parameter]: ...

    def modules(self) -> Iterator[torch.nn.Module]: ...


if TYPE_CHECKING:
    HookedModel = _HookedModelProtocol
else:
    HookedModel = Any
