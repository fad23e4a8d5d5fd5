"""The HTML report (placeholder during the rewrite)."""
from .config import DEFAULT_COPY_PROMPT, DEFAULT_TEXT, ReportConfig
