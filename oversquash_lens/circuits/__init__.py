"""The circuits framework (Elhage et al. 2021) on the path view: composition scores between
heads, per-head OV/QK circuit summaries, and the path expansion of one token's final residual
into direct, single-head and virtual-head terms (docs/science.md §"Circuits framework")."""

from .composition import KINDS as KINDS
from .composition import Composition as Composition
from .composition import composition as composition
from .composition import composition_scores as composition_scores
from .composition import composition_table as composition_table
from .composition import random_composition_baseline as random_composition_baseline
from .expansion import count_paths as count_paths
from .expansion import path_expansion as path_expansion
from .plots import composition_heatmap as composition_heatmap
from .plots import top_paths_bar as top_paths_bar
from .result import PathExpansion as PathExpansion
from .summaries import circuit_summaries as circuit_summaries

__all__ = [
    "KINDS",
    "Composition",
    "PathExpansion",
    "circuit_summaries",
    "composition",
    "composition_heatmap",
    "composition_scores",
    "composition_table",
    "count_paths",
    "path_expansion",
    "random_composition_baseline",
    "top_paths_bar",
]
