"""Views: circuitsvis and plotly pictures of the results, saved self-contained (offline).
``oversquash_lens.viz`` is the same module under its documented name."""

from .circuits import MAX_ATTENTION_TOKENS as MAX_ATTENTION_TOKENS
from .circuits import View as View
from .circuits import attention_heads as attention_heads
from .circuits import colored_tokens as colored_tokens
from .circuits import colored_tokens_multi as colored_tokens_multi
from .circuits import html_document as html_document
from .circuits import save_html as save_html

__all__ = [
    "View",
    "colored_tokens",
    "colored_tokens_multi",
    "attention_heads",
    "save_html",
    "html_document",
    "MAX_ATTENTION_TOKENS",
]
