"""``oversquash_lens.synthetic``: the documented name of
:mod:`oversquash_lens.collapse.synthetic` (the synthetic reproductions).

This module *is* that module (the same object in ``sys.modules``), so attributes, patches
and ``isinstance`` checks agree whichever name a notebook imports.
"""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("oversquash_lens.collapse.synthetic")
