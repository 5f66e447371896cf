"""Op-table entries: matmuls. Each anchors a matmul-epilogue kernel (``codegen/matmul.py``)
when pointwise ops consume its result; alone it runs in torch. ``form`` maps it onto
``A @ B (+ bias)``.

Part of the one table (``ir.ops``); see ``ir.opdef.OpDef`` for the fields.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from ir.opdef import MatmulForm, OpKind, op
from ir.shape_rules import addmm_rule, linear_rule, matmul_rule

op("matmul", OpKind.MATMUL, matmul_rule, torch.matmul,
   lambda bwd, out, g, x, y: (bwd.call("matmul", g, bwd.call("transpose", y, dim0=-1, dim1=-2)),
                            bwd.call("matmul", bwd.call("transpose", x, dim0=-1, dim1=-2), g)),
   aliases=(torch.matmul, operator.matmul, torch.mm, torch.bmm, "matmul", "mm", "bmm", "__matmul__"),
   form=MatmulForm(a=0, b=1))


def _linear_vjp(bwd, out, g, x, w, bias=None):
    # out = x @ w.T + bias, x of any leading shape [..., K]
    g2 = bwd.call("reshape", g, shape=(-1, w.shape[0]))
    x2 = bwd.call("reshape", x, shape=(-1, w.shape[1]))
    gx = bwd.call("matmul", g, w)
    gw = bwd.call("matmul", bwd.call("transpose", g2, dim0=0, dim1=1), x2)
    return (gx, gw) + ((bwd.call("sum_to", g, shape=bias.shape),) if bias is not None else ())


def _parse_linear(alias, args, kwargs):
    """``linear(x, w, bias=None)`` in any spelling; a None bias is no operand."""
    if set(kwargs) - {"input", "weight", "bias"}:
        raise NotImplementedError(f"keyword arguments {dict(kwargs)} are not fused")
    named = dict(zip(("input", "weight", "bias"), args), **kwargs)
    operands = (named["input"], named["weight"])
    return operands + ((named["bias"],) if named.get("bias") is not None else ()), {}


# F.linear is torch._C._nn.linear, the spelling Dynamo records (bias=None for nn.Linear(bias=False))
op("linear", OpKind.MATMUL, linear_rule, lambda x, w, bias=None: F.linear(x, w, bias),
   _linear_vjp, aliases=(F.linear, torch.nn.Linear), parse=_parse_linear,
   form=MatmulForm(a=0, b=1, bias=2, b_transposed=True))
op("addmm", OpKind.MATMUL, addmm_rule, lambda bias, x, w: torch.addmm(bias, x, w),
   lambda bwd, out, g, bias, x, w: (bwd.call("sum_to", g, shape=bias.shape),
                                  bwd.call("matmul", g, bwd.call("transpose", w, dim0=0, dim1=1)),
                                  bwd.call("matmul", bwd.call("transpose", x, dim0=0, dim1=1), g)),
   aliases=(torch.addmm, "addmm"), form=MatmulForm(a=1, b=2, bias=0))
