"""Op-table entries: pointwise arithmetic, transcendental, selection, comparison, cast.

Part of the one table (``ir.ops``); see ``ir.opdef.OpDef`` for the fields.
"""
from __future__ import annotations

import dataclasses
import math
import operator

import torch
import torch.nn.functional as F

from ir.opdef import OPS, OpKind, op
from ir.triton_exprs import cast_expr, minmax_expr, pow_expr
from ir.types import cast_rule, describe, elementwise


def _pointwise(name, promotion, eager, triton, vjp, **kw):
    return op(name, OpKind.POINTWISE, elementwise(promotion), eager, vjp, triton=triton,
              promotion=promotion, **kw)


# ---- pointwise: arithmetic ------------------------------------------------
# bool + bool is logical or in torch (True + True is True), not a 1-bit sum
_pointwise("add", "common", lambda x, y: torch.add(x, y), lambda args, attrs, ctype: (
               f"{args[0]} | {args[1]}" if ctype == "tl.int1" else f"{args[0]} + {args[1]}"),
           lambda bwd, out, g, x, y: (g, g), aliases=(torch.add, operator.add, "add", "__add__", "__radd__"), arity=2)
_pointwise("sub", "common", lambda x, y: torch.sub(x, y), lambda args, attrs, ctype: f"{args[0]} - {args[1]}",
           lambda bwd, out, g, x, y: (g, bwd.call("neg", g)),
           aliases=(torch.sub, operator.sub, "sub", "__sub__"), arity=2)
_pointwise("mul", "common", torch.mul, lambda args, attrs, ctype: f"{args[0]} * {args[1]}",
           lambda bwd, out, g, x, y: (bwd.call("mul", g, y), bwd.call("mul", g, x)),
           aliases=(torch.mul, operator.mul, "mul", "__mul__", "__rmul__"), arity=2)
def _div_vjp(bwd, out, g, x, y):
    # d/dy = -(g / y) · (x / y): two ratios, each as large as a gradient or the output, so it
    # overflows only where one of those does; torch's -g · ((x / y) / y) overflows where
    # x / y² > 3.4e38 even when g is tiny and the product is not (x = -0.5y, y = -9.2e-41,
    # g = y: 5.4e39 in fp32 for a gradient of 0.5; fuzzer seed 363447). Where the ratios' form
    # is not finite (g / y = inf with x / y = 0: inf · 0), torch's form, whose y · y is never
    # formed (it would underflow for tiny y). g / y is the gradient of x as well.
    g_over_y = bwd.call("div", g, y)
    ratios = bwd.call("neg", bwd.call("mul", g_over_y, out))
    torch_form = bwd.call("neg", bwd.call("mul", g, bwd.call("div", out, y)))
    finite = bwd.call("lt", bwd.call("abs", ratios), math.inf)
    return g_over_y, bwd.call("where", finite, ratios, torch_form)


_pointwise("div", "float", torch.div, lambda args, attrs, ctype: f"{args[0]} / {args[1]}", _div_vjp,
           aliases=(torch.div, torch.true_divide, operator.truediv, "div", "__truediv__"),
           arity=2, domain=("real", "nonzero"))
_pointwise("neg", "common", torch.neg, lambda args, attrs, ctype: f"-{args[0]}",
           lambda bwd, out, g, x: (bwd.call("neg", g),),
           aliases=(torch.neg, operator.neg, "neg", "__neg__"))
_pointwise("abs", "common", torch.abs, lambda args, attrs, ctype: f"tl.abs({args[0]})",
           lambda bwd, out, g, x: (bwd.call("mul", g, bwd.call("sign", x)),),
           aliases=(torch.abs, operator.abs, "abs", "__abs__"))
_pointwise("sign", "common", torch.sign, lambda args, attrs, ctype: f"sign({args[0]})",
           lambda bwd, out, g, x: (bwd.call("zeros_like", g),), aliases=(torch.sign, "sign"))
# a zero gradient, whatever g holds (g * 0 would turn an inf into NaN; eager returns zeros)
_pointwise("zeros_like", "common", torch.zeros_like,
           lambda args, attrs, ctype: f"tl.full({args[0]}.shape, 0, {ctype})",
           lambda bwd, out, g, x: (None,), internal=True, differentiable=False)


def _pow_rule(op_name, inputs, attrs):
    """torch.pow's type: the base's promoted with the scalar exponent (int ** 2 stays int)."""
    exponent = attrs["exponent"]
    shape, dtype, device = elementwise("common")(op_name, (*inputs, exponent), attrs)
    if not dtype.is_floating_point and exponent < 0:
        raise RuntimeError(f"fusion: pow: integers to negative integer powers are not allowed "
                           f"({describe(inputs[0])} ** {exponent}), as in torch")
    return shape, dtype, device


op("pow", OpKind.POINTWISE, _pow_rule, lambda x, exponent: torch.pow(x, exponent),
   lambda bwd, out, g, x, exponent: (
       bwd.call("mul", g, bwd.call("mul", bwd.call("pow", x, exponent=exponent - 1), exponent))
       if exponent != 0 else  # exactly 0 as torch (x ** -1 * 0 is NaN at x = 0)
       bwd.call("mul", bwd.call("pow", x, exponent=0), 0.0),),
   triton=lambda args, attrs, ctype: pow_expr(args[0], attrs["exponent"], ctype), promotion="common",
   live_values=3,
   aliases=(torch.pow, operator.pow, "pow", "__pow__"), parse=lambda alias, args, kwargs: (
       _scalar_exponent(args, kwargs)),
   # every branch of pow_expr: 0, products, 1/products, sqrt, exp/log (odd, even, fractional)
   domain="positive", sample_attrs=lambda shape: tuple(
       {"exponent": p} for p in (0, 1, 2, 3, -2, 0.5, 2.5, -1.5, 5, -6, 17)))



def _scalar_exponent(args, kwargs):
    exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
    if not isinstance(exponent, (int, float)) or isinstance(exponent, bool):
        raise NotImplementedError("pow with a tensor exponent is not fused (scalar exponents only)")
    return args[:1], {"exponent": exponent}


def _parse_where(alias, args, kwargs):
    if kwargs or len(args) != 3:
        raise NotImplementedError("only where(condition, x, y) with positional operands is fused")
    if alias == "where":  # the method x.where(condition, y) takes from the tensor it is called on
        args = (args[1], args[0], args[2])
    return tuple(args), {}


def _no_kwargs_but(*allowed):
    """A parser for unary ops whose other arguments are only harmless flags
    (``inplace=False``, keyword or positional as in ``F.relu(x, False)``)."""
    def parse(alias, args, kwargs):
        flags = dict(zip(allowed, args[1:]), **kwargs)
        bad = {k: v for k, v in flags.items() if k not in allowed or v}
        if bad or len(args) > 1 + len(allowed):
            raise NotImplementedError(f"arguments {bad or args[1:]} are not fused")
        return args[:1], {}
    return parse


# ---- pointwise: transcendental ----------------------------------------------
def _helper(name):
    """The Triton expression of a tiered op: its prelude helper, given the precision tier."""
    return lambda args, attrs, ctype: f'{name}({", ".join(args)}, "{attrs["tier"]}")'


_pointwise("exp", "float", torch.exp, _helper("exp"),
           lambda bwd, out, g, x: (bwd.call("mul", g, bwd.call("exp", x)),),
           aliases=(torch.exp, "exp"), tiered=True, live_values=3)
_pointwise("log", "float", torch.log, lambda args, attrs, ctype: f"tl.log({args[0]})",
           lambda bwd, out, g, x: (bwd.call("div", g, x),),
           aliases=(torch.log, "log"), domain="positive")
_pointwise("sigmoid", "float", torch.sigmoid, _helper("sigmoid"),
           lambda bwd, out, g, x: (bwd.call("mul", g, bwd.call("sigmoid_grad", x)),),
           aliases=(torch.sigmoid, F.sigmoid, "sigmoid", torch.nn.Sigmoid), tiered=True,
           live_values=3)
# dσ/dx as its own primitive, for accuracy: recomputed from x as q(1-q), q = σ(-|x|),
# accurate in both tails where eager's σ(1-σ) from the rounded output is 0 (x >= 17 in fp32).
_pointwise("sigmoid_grad", "float",
           lambda x: torch.sigmoid(x) * torch.sigmoid(-x), _helper("sigmoid_grad"),
           lambda bwd, out, g, x: (bwd.call("mul", g, bwd.call("mul", out, bwd.call(
               "neg", bwd.call("tanh", bwd.call("mul", x, 0.5))))),), internal=True, tiered=True,
           live_values=3)
# tanh' = sech²(x) = 4σ(2x)σ(-2x), i.e. 4·sigmoid_grad(2x) (2x and 4· are exact): accurate in
# the tails, where 1 - tanh(x)² from the rounded output is exactly 0 in fp32 for |x| >= 9
# (true value 6.1e-8 there, 1.7e-17 at 20) — a decomposition, no primitive of its own.
_pointwise("tanh", "float", torch.tanh, _helper("tanh"),
           lambda bwd, out, g, x: (bwd.call("mul", g, bwd.call(
               "mul", bwd.call("sigmoid_grad", bwd.call("mul", x, 2.0)), 4.0)),),
           aliases=(torch.tanh, F.tanh, "tanh", torch.nn.Tanh), tiered=True, live_values=3)
_pointwise("relu", "common", torch.relu, lambda args, attrs, ctype: f"tl.where({args[0]} < 0, 0, {args[0]})",
           lambda bwd, out, g, x: (bwd.call("where", bwd.call("le", x, 0), 0.0, g),),
           aliases=(torch.relu, F.relu, "relu", torch.nn.ReLU), parse=_no_kwargs_but("inplace"))
# silu is a primitive (not mul(x, sigmoid(x))) for its tails: x·σ(x) keeps its last bits down
# to x = -92, where σ(x) alone is already subnormal, and is 0 (not inf·0) at -inf
_pointwise("silu", "float", F.silu, _helper("silu"),
           lambda bwd, out, g, x: (bwd.call("mul", g, bwd.call("silu_grad", x)),),
           aliases=(F.silu, torch.nn.SiLU), parse=_no_kwargs_but("inplace"), tiered=True,
           live_values=3)
# d silu/dx = σ(x) + x σ'(x) as one primitive, for accuracy: the two terms cancel near the
# derivative's zero (x = -1.2785), where the helper's exact 1 - |x| keeps the error to that of σ,
# and it is 1 and 0 (not NaN) at ±inf; the product chain x * σ(x) gets its derivative from the rules.
_pointwise("silu_grad", "float", lambda x: torch.sigmoid(x) * (1 + x * torch.sigmoid(-x)),
           _helper("silu_grad"),
           lambda bwd, out, g, x: (bwd.call("mul", g, bwd.call("mul", bwd.call("sigmoid_grad", x), bwd.call(
               "sub", 2.0, bwd.call("mul", _capped(bwd, x), bwd.call("tanh", bwd.call("mul", x, 0.5)))))),),
           internal=True, tiered=True, live_values=3)


def _capped(bwd, x):
    """x within ±1e4, where σ'(x) is 0 in every dtype: the limit 0 of x σ'(x) at ±inf, not
    inf·0 = NaN (NaN stays NaN)."""
    return bwd.call("minimum", bwd.call("maximum", x, -1e4), 1e4)

# ---- pointwise: selection and comparison --------------------------------------
def _pick(bwd, g, take):
    return bwd.call("where", take, g, 0.0)


def _minmax_vjp(greater):
    # torch's rule: the gradient goes to the winner, halved on ties
    def vjp(bwd, out, g, x, y):
        tie = bwd.call("eq", x, y)
        half = bwd.call("where", tie, bwd.call("mul", g, 0.5), g)
        x_wins = bwd.call("gt" if greater else "lt", x, y)
        y_wins = bwd.call("lt" if greater else "gt", x, y)
        return (bwd.call("where", y_wins, 0.0, half), bwd.call("where", x_wins, 0.0, half))
    return vjp


def _with_scalars(fn):
    """``fn`` (torch.maximum/minimum, which take tensors only) with a Python scalar operand
    as a 0-d tensor: it promotes like the scalar (a 0-d tensor never decides the category's
    width), so the eager reference types results as the kernel does."""
    def eager(x, y):
        like = y if isinstance(x, (bool, int, float)) else x
        return fn(*[torch.tensor(a, device=like.device) if isinstance(a, (bool, int, float)) else a
                    for a in (x, y)])
    return eager


_pointwise("maximum", "common", _with_scalars(torch.maximum), lambda args, attrs, ctype: minmax_expr("maximum", args, ctype),
           _minmax_vjp(True), aliases=(torch.maximum, "maximum"), arity=2)
_pointwise("minimum", "common", _with_scalars(torch.minimum), lambda args, attrs, ctype: minmax_expr("minimum", args, ctype),
           _minmax_vjp(False), aliases=(torch.minimum, "minimum"), arity=2)
_pointwise("where", "select", torch.where, lambda args, attrs, ctype: f"tl.where({args[0]}, {args[1]}, {args[2]})",
           lambda bwd, out, g, c, x, y: (None, _pick(bwd, g, c), bwd.call("where", c, 0.0, g)),
           aliases=(torch.where, "where"), parse=lambda alias, args, kwargs: _parse_where(alias, args, kwargs),
           arity=3, domain=("bool", "real", "real"))
for _name, _sym, _fn, _dunder in (("eq", "==", torch.eq, operator.eq), ("ne", "!=", torch.ne, operator.ne),
                                  ("lt", "<", torch.lt, operator.lt), ("le", "<=", torch.le, operator.le),
                                  ("gt", ">", torch.gt, operator.gt), ("ge", ">=", torch.ge, operator.ge)):
    # the operator form: a Python scalar on either side, as torch.lt accepts on the right only
    _pointwise(_name, "bool", _dunder, (lambda s: lambda args, attrs, ctype: f"{args[0]} {s} {args[1]}")(_sym), None,
               aliases=(_fn, _dunder, _name, f"__{_name}__"), differentiable=False, arity=2)



def _parse_cast(alias, args, kwargs):
    fixed = {"float": torch.float32, "half": torch.float16, "double": torch.float64,
             "bfloat16": torch.bfloat16, "bool": torch.bool, "long": torch.int64, "int": torch.int32}
    if alias in fixed:
        return args[:1], {"dtype": fixed[alias]}
    if any(isinstance(a, (torch.device, str)) for a in list(args[1:]) + list(kwargs.values())):
        raise NotImplementedError(".to(device, ...) moves data between devices: not fused")
    dtypes = [a for a in list(args[1:]) + list(kwargs.values()) if isinstance(a, torch.dtype)]
    rest = [a for a in list(args[1:]) if not isinstance(a, (torch.dtype, torch.device, str))]
    if len(dtypes) != 1 or rest or set(kwargs) - {"dtype", "device"}:
        raise NotImplementedError(f".to{tuple(args[1:])} with {kwargs}: only .to(dtype) is fused")
    return args[:1], {"dtype": dtypes[0]}


op("cast", OpKind.POINTWISE, cast_rule, lambda x, dtype: x.to(dtype),
   lambda bwd, out, g, x, dtype: (bwd.call("cast", g, dtype=x.dtype) if x.dtype.is_floating_point
                               else None,),
   triton=lambda args, attrs, ctype: cast_expr(args[0], attrs["dtype"]), promotion="none",
   aliases=("to", "float", "half", "double", "bfloat16", "bool", "long", "int"), parse=_parse_cast,
   sample_attrs=lambda shape: tuple({"dtype": t} for t in (
       torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.bool, torch.int32)))


# ---- the tutorial spellings: only the cost baseline (OpDef.triton_reference) ------------------
# What a Triton user writes for these ops (tl.sigmoid is 1 / (1 + exp(-x)) on ex2.approx and a
# fast division): the reference kernel a generated kernel's SASS cost is compared with. Kept in
# one block so the entries above stay as their numerics need them.
_REFERENCE = {
    "exp": lambda a: f"tl.exp({a})",
    "sigmoid": lambda a: f"tl.sigmoid({a})",
    "sigmoid_grad": lambda a: f"(tl.sigmoid({a}) * (1.0 - tl.sigmoid({a})))",
    "silu": lambda a: f"({a} * tl.sigmoid({a}))",
    "silu_grad": lambda a: f"(tl.sigmoid({a}) * (1.0 + {a} * (1.0 - tl.sigmoid({a}))))",
    "tanh": lambda a: f"(2.0 * tl.sigmoid(2.0 * {a}) - 1.0)",
}
for _name, _spell in _REFERENCE.items():
    OPS[_name] = dataclasses.replace(OPS[_name], triton_reference=(
        lambda spell: lambda args, attrs, ctype: spell(args[0]))(_spell))
