"""The op table: every op the compiler knows, declared once.

Each entry (``ir.opdef.OpDef``) holds, side by side: its kind (what fusion
reads), its shape/dtype rule, its eager reference (a torch callable: the
oracle and the CPU fallback), its Triton expression (pointwise ops), its
derivative rule written in IR ops (a vector-Jacobian product per input), and
the torch spellings capture maps to it. The entries live in one file per
family and register into ``OPS`` when imported here:

    ir/ops_pointwise.py   arithmetic, transcendental (the sigmoid family), selection, cast
    ir/ops_activations.py GELU, softplus, clamp/hardtanh, expm1, rsqrt; glu, hardswish... as decompositions
    ir/ops_views.py       views and sum_to
    ir/ops_matmul.py      matmul, linear, addmm
    ir/ops_loss.py        full reductions and binary cross-entropy

Adding an op means adding one entry; the tests sweep this table.
"""
from __future__ import annotations

import ir.ops_activations  # noqa: F401
import ir.ops_loss  # noqa: F401  (each family registers its entries into OPS)
import ir.ops_matmul  # noqa: F401
import ir.ops_pointwise  # noqa: F401
import ir.ops_views  # noqa: F401
from ir.opdef import (
                      DECOMPOSITIONS,
                      FUSIBLE,
                      OPS,
                      SAMPLE_DOMAINS,
                      STRUCTURAL,
                      MatmulForm,
                      OpDef,
                      OpKind,
                      op,
)

# structural nodes: a graph argument, and a module parameter or buffer read at every call
op("input", OpKind.INPUT, None, None, None, internal=True, differentiable=False)
op("param", OpKind.PARAM, None, None, None, internal=True, differentiable=False)
# anything else: run by eager torch (its type recorded at capture), reported by explain
op("extern", OpKind.EXTERN, None, None, None, internal=True)
# element ``index`` of an extern's tuple result; its type was recorded with the tuple
op("getitem", OpKind.ELEMENT, None, lambda t, index, **recorded: t[index], None, internal=True,
   differentiable=False)

__all__ = ["OPS", "DECOMPOSITIONS", "SAMPLE_DOMAINS", "OpDef", "OpKind", "MatmulForm", "FUSIBLE",
           "STRUCTURAL"]
