"""``oversquash_lens.viz``: the documented name of
:mod:`oversquash_lens.views` (the views).

This module *is* that module (the same object in ``sys.modules``), so attributes, patches
and ``isinstance`` checks agree whichever name a notebook imports.
"""

import importlib
import sys
from typing import TYPE_CHECKING

sys.modules[__name__] = importlib.import_module("oversquash_lens.views")

if TYPE_CHECKING:  # type checkers see the real module's names
    from .views import *  # noqa: F403
