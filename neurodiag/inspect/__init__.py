"""Weight-only health checks, no data: dead, duplicate and ν-dead rows of every Linear and Conv
layer, and how far each moved from its initial weights (``neurodiag inspect``;
docs/inspect.md)."""

from neurodiag.inspect.layers import COLUMNS, LAYER_TYPES, clean_name, inspect
from neurodiag.inspect.report import FORMATS, render
from neurodiag.inspect.rows import CHUNK_ELEMENTS, DEAD_REL_TOL, DUPLICATE_COSINE, NU_DEAD_TOL

__all__ = [
    "CHUNK_ELEMENTS",
    "COLUMNS",
    "DEAD_REL_TOL",
    "DUPLICATE_COSINE",
    "FORMATS",
    "LAYER_TYPES",
    "NU_DEAD_TOL",
    "clean_name",
    "inspect",
    "render",
]
