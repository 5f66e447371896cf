"""Op-table entries for losses and full reductions (part of the one table in ir.ops).

``sum``/``mean`` over all elements fuse into the kernel that produces their
input (each program writes a partial sum). Binary cross-entropy comes in the
two forms torch has: on probabilities (``bce``, torch's clamp of log at -100
included) and on logits (``bce_logits``, stable for any z). A pass rewrites
``bce(sigmoid(z), y)`` into ``bce_logits(z, y)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ir.graph import Node
from ir.opdef import DECOMPOSITIONS, OpKind, ValueCheck, checked, op
from ir.types import describe, elementwise


def _full_reduction_rule(op_name, inputs, attrs):
    (x,) = inputs
    dtype = x.dtype if x.dtype.is_floating_point else (torch.int64 if op_name == "sum" else None)
    if dtype is None:
        raise TypeError(f"fusion: mean: needs a floating point input, got {x.type_str()}")
    return (), dtype, x.device


def _no_dims(alias, args, kwargs):
    if len(args) > 1 or kwargs:
        raise NotImplementedError("only the full reduction (no dim, dtype or keepdim) is fused")
    return args, {}


# Full reductions: the gradient is the incoming 0-d gradient itself (sum) or scaled
# by 1/n (mean); autodiff broadcasts it where it meets an input.
op("sum", OpKind.REDUCTION, _full_reduction_rule, torch.sum, lambda bwd, out, g, x: (g,),
   aliases=(torch.sum, "sum"), parse=_no_dims, combine=lambda partials, n: partials.sum())
op("mean", OpKind.REDUCTION, _full_reduction_rule, torch.mean,
   lambda bwd, out, g, x: (bwd.call("mul", g, 1.0 / max(x.numel, 1)),),
   aliases=(torch.mean, "mean"), parse=_no_dims,
   combine=lambda partials, n: partials.sum() / n if n else partials.new_tensor(float("nan")))


def _bce_vjp(bwd, out, g, p, y):
    # torch's rule: d/dp = (p - y) / max(p (1 - p), 1e-12); d/dy = log(1-p) - log(p), clamped
    denom = bwd.call("maximum", bwd.call("mul", p, bwd.call("sub", 1.0, p)), 1e-12)
    gp = bwd.call("div", bwd.call("mul", g, bwd.call("sub", p, y)), denom)
    log_p = bwd.call("maximum", bwd.call("log", p), -100.0)
    log_q = bwd.call("maximum", bwd.call("log", bwd.call("sub", 1.0, p)), -100.0)
    return gp, bwd.call("mul", g, bwd.call("sub", log_q, log_p))


def _same_shape(op_name, inputs, attrs):
    """torch's losses do not broadcast the target: different shapes are refused (ValueError)."""
    p, y = inputs
    if not (isinstance(p, Node) and isinstance(y, Node)) or p.shape != y.shape:
        raise ValueError(f"fusion: {op_name}: target {describe(y)} and input {describe(p)} must be "
                         "tensors of the same size, as torch's binary cross-entropy requires")
    return elementwise("float")(op_name, inputs, attrs)


# eager's run-time checks on binary cross-entropy's operands (CPU: RuntimeError; CUDA: a
# device-side assert, which we turn into the same RuntimeError)
BCE = "binary_cross_entropy"
PROBABILITY_INPUT = ValueCheck(BCE, 0, 0.0, 1.0, RuntimeError, "all elements of input should be between 0 and 1")
PROBABILITY_TARGET = ValueCheck(BCE, 1, 0.0, 1.0, RuntimeError, "all elements of target should be between 0 and 1")

# internal: reached through DECOMPOSITIONS (F.binary_cross_entropy, nn.BCELoss, ...)
op("bce", OpKind.POINTWISE, _same_shape,
   lambda p, y: F.binary_cross_entropy(p, y, reduction="none"), _bce_vjp,
   triton=lambda args, attrs, ctype: f"bce({args[0]}, {args[1]})", promotion="float", domain="probability", arity=2,
   internal=True, live_values=3, checks=(PROBABILITY_INPUT, PROBABILITY_TARGET))

def _sigmoid_minus(bwd, z, y):
    """sigmoid(z) - y without cancellation: for z >= 0 it is (1 - y) - sigmoid(-z),
    exact for y = 1 where sigmoid(z) itself has rounded to 1."""
    pos = bwd.call("sub", bwd.call("sub", 1.0, y), bwd.call("sigmoid", bwd.call("neg", z)))
    neg = bwd.call("sub", bwd.call("sigmoid", z), y)
    return bwd.call("where", bwd.call("ge", z, 0.0), pos, neg)


def _bce_logits_op(name, eager, checks=()):
    return op(name, OpKind.POINTWISE, _same_shape, eager,
              lambda bwd, out, g, z, y: (bwd.call("mul", g, _sigmoid_minus(bwd, z, y)),
                                         bwd.call("mul", g, bwd.call("neg", z))),
              triton=lambda args, attrs, ctype: f"bce_logits({args[0]}, {args[1]})", promotion="float",
              arity=2, domain=("real", "probability"), internal=True, live_values=3, checks=checks)


_bce_logits_op("bce_logits", lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="none"))
# bce(sigmoid(z), y) as the rewrite pass leaves it: the logits form, with the checks eager makes
# on the probability (sigmoid(z) is outside [0, 1] only for z = NaN) and on the target
SIGMOID_BCE_CHECKS = (ValueCheck(BCE, 0, -math.inf, math.inf, RuntimeError, PROBABILITY_INPUT.message),
                      PROBABILITY_TARGET)
_bce_logits_op("bce_logits_checked", checked(SIGMOID_BCE_CHECKS, lambda z, y: (
    F.binary_cross_entropy_with_logits(z, y, reduction="none"))), SIGMOID_BCE_CHECKS)


def _bce_decomposition(elementwise_op):
    def build(graph, target, args, kwargs):
        if isinstance(target, torch.nn.Module):  # nn.BCELoss / nn.BCEWithLogitsLoss
            opts = {"weight": target.weight, "reduction": target.reduction,
                    "pos_weight": getattr(target, "pos_weight", None)}
        else:
            names = ("weight", "size_average", "reduce", "reduction")
            if elementwise_op == "bce_logits":
                names = names + ("pos_weight",)
            opts = dict(zip(names, args[2:]), **kwargs)
        if any(opts.get(k) is not None for k in ("weight", "pos_weight", "size_average", "reduce")):
            raise NotImplementedError("weights and the legacy size_average/reduce are not fused")
        loss = graph.call(elementwise_op, args[0], args[1])
        reduction = opts.get("reduction", "mean")
        return loss if reduction == "none" else graph.call(reduction, loss)
    return build


for _alias in (F.binary_cross_entropy, torch.nn.BCELoss):
    DECOMPOSITIONS[_alias] = _bce_decomposition("bce")
for _alias in (F.binary_cross_entropy_with_logits, torch.nn.BCEWithLogitsLoss):
    DECOMPOSITIONS[_alias] = _bce_decomposition("bce_logits")
