"""Op-table entries: views (no data moves; kernels read them through strides) and
``sum_to``, the reduction a broadcast's gradient needs.

Part of the one table (``ir.ops``); see ``ir.opdef.OpDef`` for the fields.
"""
from __future__ import annotations

import torch

from ir.opdef import DECOMPOSITIONS, OpKind, op
from ir.shape_rules import (
    expand_rule,
    narrow_rule,
    pad_to_rule,
    permute_rule,
    reshape_rule,
    transpose_rule,
    unsqueeze_rule,
    view_rule,
)
from ir.types import sum_to_rule

# ---- reductions (backward of broadcasting) ---------------------------------
op("sum_to", OpKind.SUM_TO, sum_to_rule, lambda x, shape: x.sum_to_size(shape) if x.shape != tuple(shape)
   else x, lambda bwd, out, g, x, shape: (bwd.call("expand", g, shape=x.shape),), internal=True,
   sample_attrs=lambda shape: ({"shape": tuple(shape)}, {"shape": tuple(1 for _ in shape)}))

# ---- views: no data moves; kernels read them through strides ---------------------
def _sizes(args) -> tuple:
    """(2, 3), ((2, 3),) and ([2, 3],) all mean the sizes (2, 3)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        args = args[0]
    if not all(isinstance(a, int) for a in args):
        raise NotImplementedError(f"sizes {args} are not static integers")
    return tuple(args)


op("transpose", OpKind.VIEW, transpose_rule, lambda x, dim0, dim1: x.transpose(dim0, dim1),
   lambda bwd, out, g, x, dim0, dim1: (bwd.call("transpose", g, dim0=dim0, dim1=dim1),),
   aliases=(torch.transpose, "transpose", torch.t, "t"), parse=lambda alias, args, kwargs: (
       (args[:1], {"dim0": 0, "dim1": 1}) if alias in (torch.t, "t")
       else (args[:1], {"dim0": args[1] if len(args) > 1 else kwargs["dim0"],
                        "dim1": args[2] if len(args) > 2 else kwargs["dim1"]})),
   sample_attrs=lambda shape: ({"dim0": 0, "dim1": -1},) if shape else ())
op("permute", OpKind.VIEW, permute_rule, lambda x, dims: x.permute(dims),
   lambda bwd, out, g, x, dims: (bwd.call("permute", g, dims=tuple(sorted(range(len(dims)),
                                                                     key=lambda i: dims[i]))),),
   aliases=(torch.permute, "permute"), parse=lambda alias, args, kwargs: (
       args[:1], {"dims": _sizes(args[1:] or kwargs["dims"])}),
   sample_attrs=lambda shape: ({"dims": tuple(reversed(range(len(shape))))},))
op("reshape", OpKind.VIEW, reshape_rule, lambda x, shape: x.reshape(shape),
   lambda bwd, out, g, x, shape: (bwd.call("reshape", g, shape=x.shape),),
   aliases=(torch.reshape, "reshape", "view"), parse=lambda alias, args, kwargs: (
       args[:1], {"shape": _sizes(args[1:] or kwargs["shape"])}),
   sample_attrs=lambda shape: ({"shape": (-1,)}, {"shape": tuple(reversed(shape))}))
op("unsqueeze", OpKind.VIEW, unsqueeze_rule, lambda x, dim: x.unsqueeze(dim),
   lambda bwd, out, g, x, dim: (bwd.call("reshape", g, shape=x.shape),),
   aliases=(torch.unsqueeze, "unsqueeze"), parse=lambda alias, args, kwargs: (
       args[:1], {"dim": args[1] if len(args) > 1 else kwargs["dim"]}),
   sample_attrs=lambda shape: ({"dim": 0}, {"dim": -1}))
op("expand", OpKind.VIEW, expand_rule, lambda x, shape: x.expand(shape),
   lambda bwd, out, g, x, shape: (bwd.call("sum_to", g, shape=x.shape),),
   aliases=("expand",), parse=lambda alias, args, kwargs: (
       args[:1], {"shape": _sizes(args[1:] or kwargs["size"])}),
   sample_attrs=lambda shape: ({"shape": (2, *shape)}, {"shape": tuple(-1 for _ in shape)}))

# torch.detach, and what a no_grad region computes (lowering wraps those values): the same
# storage with no gradient; torch makes it, so a write through it reaches the original
op("detach", OpKind.VIEW, view_rule(lambda shape: shape), torch.detach, lambda bwd, out, g, x: (None,),
   aliases=(torch.detach, "detach"), differentiable=False)

op("narrow", OpKind.VIEW, narrow_rule, lambda x, dim, start, length: x.narrow(dim, start, length),
   lambda bwd, out, g, x, dim, start, length: (bwd.call("pad_to", g, dim=dim, start=start, size=x.shape[dim]),),
   aliases=(torch.narrow, "narrow"), parse=lambda alias, args, kwargs: (
       args[:1], dict(zip(("dim", "start", "length"), args[1:]), **kwargs)),
   sample_attrs=lambda shape: ({"dim": -1, "start": 1, "length": shape[-1] - 2},)
   if shape and shape[-1] > 2 else ())
# the gradient of a narrow: zeros around the slice (torch's slice_backward)
op("pad_to", OpKind.VIEW, pad_to_rule,
   lambda g, dim, start, size: torch.nn.functional.pad(
       g, [0, 0] * (g.dim() - 1 - dim % g.dim()) + [start, size - start - g.shape[dim]]),
   lambda bwd, out, g, x, dim, start, size: (bwd.call("narrow", g, dim=dim, start=start,
                                                 length=x.shape[dim]),), internal=True,
   sample_attrs=lambda shape: ({"dim": -1, "start": 1, "size": shape[-1] + 3},) if shape else ())


def _chunk(graph, target, args, kwargs):
    """chunk/split become narrow views: strided reads of one buffer, never copies."""
    alias = target
    x, spec = args[0], (args[1] if len(args) > 1 else kwargs.get("chunks", kwargs.get("split_size_or_sections")))
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    size = x.shape[dim]
    if alias in (torch.chunk, "chunk"):
        step = -(-size // spec)
        lengths = [min(step, size - s) for s in range(0, size, step)]
    elif isinstance(spec, int):
        lengths = [min(spec, size - s) for s in range(0, size, spec)]
    else:
        lengths = list(spec)
    out, start = [], 0
    for n in lengths:
        out.append(graph.call("narrow", x, dim=dim, start=start, length=n))
        start += n
    return tuple(out)


# capture spellings that expand to several table ops
DECOMPOSITIONS.update({torch.chunk: _chunk, "chunk": _chunk, torch.split: _chunk, "split": _chunk})
