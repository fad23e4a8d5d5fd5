"""Activation checkpointing per block for gradient analyses at long context
(docs/architecture.md, "Long contexts").

Within :func:`checkpointed_blocks` each transformer block's forward runs under
``torch.utils.checkpoint`` (non-reentrant): the forward pass keeps only every block's input,
and a backward pass recomputes one block at a time, so the autograd graph never holds more
than one block's attention scores and patterns. The recomputation repeats exactly the same
operations (eval mode: no dropout), so gradients equal the plain ones to float rounding; hooks
inside a block fire again during the recomputation.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointed_blocks"]


@contextlib.contextmanager
def checkpointed_blocks(model: Any) -> Iterator[None]:
    """Run every block of ``model`` checkpointed within the block; restored on exit."""
    blocks = list(getattr(model, "blocks", []))
    installed: list[Any] = []
    try:
        for block in blocks:
            plain = block.forward

            def forward(*args: Any, _plain: Any = plain, **kwargs: Any) -> Any:
                return checkpoint(_plain, *args, use_reentrant=False, **kwargs)

            block.__dict__["forward"] = forward
            installed.append(block)
        yield
    finally:
        for block in installed:
            block.__dict__.pop("forward", None)
