"""How a generated kernel reads each input: the layout kinds emitters and layout planners share.

The planners (``fusion/layout.py``, ``fusion/matmul_layout.py``) decide a kind per
input from its strides at run time; the emitters (``codegen/pointwise.py``,
``codegen/matmul.py``) spell the load for it.
"""
from __future__ import annotations

from enum import Enum


class InputLayout(str, Enum):
    """A pointwise kernel's input over its (collapsed) iteration space."""
    FLAT = "flat"          # contiguous with the iteration space: x_ptr + offs
    STRIDED = "strided"    # per-dimension strides (0 broadcasts): x_ptr + i0 * s0 + ...
    SCALAR = "scalar"      # one element, broadcast: tl.load(x_ptr)

    def __str__(self) -> str:
        return self.value


class EpilogueLayout(str, Enum):
    """A matmul epilogue's input over the [M, N] output tile."""
    TILE = "tile"          # an [M, N] tile
    ROW = "row"            # a row over N, broadcast down M (a bias)
    COL = "col"            # a column over M, broadcast along N
    SCALAR = "scalar"      # one value

    def __str__(self) -> str:
        return self.value
