"""The op table: every op the compiler knows, declared once.

Each entry holds, side by side: its kind (what fusion reads), its shape/dtype
rule, its eager reference (a torch callable: the oracle and the CPU fallback),
its Triton expression (pointwise ops), its derivative rule written in IR ops
(a vector-Jacobian product per input), and the torch spellings capture maps
to it. Adding an op means adding one entry here; the tests sweep this table.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ir.shape_rules import (addmm_rule, expand_rule, linear_rule, matmul_rule, narrow_rule,
                            pad_to_rule, permute_rule, reshape_rule, transpose_rule, unsqueeze_rule)
from ir.triton_exprs import cast_expr, minmax_expr, pow_expr
from ir.types import cast_rule, describe, elementwise, sum_to_rule

# reduction: a full sum/mean that can end a pointwise kernel; reduce: sum_to, run by torch
KINDS = ("pointwise", "matmul", "view", "reduction", "reduce", "extern")


@dataclass(frozen=True)
class OpDef:
    """Everything about one op. ``vjp(b, out, g, *xs, **attrs)`` returns one
    gradient per input (``None`` where it has none), built with ``b.call``."""
    name: str
    kind: str
    infer: Callable            # (op, inputs, attrs) -> (shape, dtype, device)
    eager: Callable            # torch reference
    vjp: Callable | None       # derivative rule; None only for non-differentiable ops
    triton: Callable | None = None   # (arg exprs, attrs, compute type) -> expression
    promotion: str = "common"  # how operands are typed before the expression
    aliases: tuple = ()        # torch callables / method names capture maps here
    parse: Callable | None = None   # (alias, args, kwargs) -> (inputs, attrs); None: positional only
    domain: str | tuple = "real"    # sample inputs the tests draw, one for all operands or one
                                    # per operand: real, positive, nonzero, bool (see SAMPLE_DOMAINS)
    arity: int = 1             # tensor operands (pointwise and view ops); attrs come on top
    sample_attrs: Callable = lambda shape: ({},)   # input shape -> the attrs the tests try
    internal: bool = False     # no torch spelling maps to it: made only by derivative rules,
                               # DECOMPOSITIONS or passes (the tests then need no aliases)
    differentiable: bool = True
    combine: Callable | None = None  # full reductions: (per-program partial sums, n) -> result
    wide_fp32: bool = False    # fp32 results computed in fp64 and rounded once (the sigmoids)
    form: MatmulForm | None = None  # matmul ops: which operand is A, B and the bias

    def operand_domains(self) -> tuple:
        """The sample domain of each tensor operand."""
        return self.domain if isinstance(self.domain, tuple) else (self.domain,) * self.arity


# what each sample domain means, for the tests that draw inputs from the table
SAMPLE_DOMAINS = {
    "real": "any finite value (normal draws, plus exact 0, ±0.5, ±1, 2 for ties and kinks)",
    "positive": "values in [0.5, 2]: log, fractional powers",
    "nonzero": "values with |x| in [0.5, 2]: divisors",
    "probability": "values in [0.05, 0.95]: probabilities and targets",
    "bool": "True/False",
}


OPS: dict[str, OpDef] = {}


def op(name, kind, infer, eager, vjp, **kw) -> OpDef:
    """Declare an op: its entry in the one table, ``OPS[name]``."""
    d = OpDef(name, kind, infer, eager, vjp, **kw)
    OPS[name] = d
    return d


def _pointwise(name, promotion, eager, triton, vjp, **kw):
    return op(name, "pointwise", elementwise(promotion), eager, vjp, triton=triton,
              promotion=promotion, **kw)


# ---- pointwise: arithmetic ------------------------------------------------
_pointwise("add", "common", lambda x, y: torch.add(x, y), lambda a, at, ct: f"{a[0]} + {a[1]}",
           lambda b, out, g, x, y: (g, g), aliases=(torch.add, operator.add, "add", "__add__", "__radd__"), arity=2)
_pointwise("sub", "common", lambda x, y: torch.sub(x, y), lambda a, at, ct: f"{a[0]} - {a[1]}",
           lambda b, out, g, x, y: (g, b.call("neg", g)),
           aliases=(torch.sub, operator.sub, "sub", "__sub__"), arity=2)
_pointwise("mul", "common", torch.mul, lambda a, at, ct: f"{a[0]} * {a[1]}",
           lambda b, out, g, x, y: (b.call("mul", g, y), b.call("mul", g, x)),
           aliases=(torch.mul, operator.mul, "mul", "__mul__", "__rmul__"), arity=2)
_pointwise("div", "float", torch.div, lambda a, at, ct: f"{a[0]} / {a[1]}",
           lambda b, out, g, x, y: (
               b.call("div", g, y),
               # torch's -g * ((x / y) / y): y * y would underflow for tiny y
               b.call("neg", b.call("mul", g, b.call("div", b.call("div", x, y), y)))),
           aliases=(torch.div, torch.true_divide, operator.truediv, "div", "__truediv__"),
           arity=2, domain=("real", "nonzero"))
_pointwise("neg", "common", torch.neg, lambda a, at, ct: f"-{a[0]}",
           lambda b, out, g, x: (b.call("neg", g),),
           aliases=(torch.neg, operator.neg, "neg", "__neg__"))
_pointwise("abs", "common", torch.abs, lambda a, at, ct: f"tl.abs({a[0]})",
           lambda b, out, g, x: (b.call("mul", g, b.call("sign", x)),),
           aliases=(torch.abs, operator.abs, "abs", "__abs__"))
_pointwise("sign", "common", torch.sign, lambda a, at, ct: f"sign({a[0]})",
           lambda b, out, g, x: (b.call("zeros_like", g),), aliases=(torch.sign, "sign"))
# a zero gradient, whatever g holds (g * 0 would turn an inf into NaN; eager returns zeros)
_pointwise("zeros_like", "common", torch.zeros_like,
           lambda a, at, ct: f"tl.full({a[0]}.shape, 0, {ct})",
           lambda b, out, g, x: (None,), internal=True, differentiable=False)


def _pow_rule(op_name, inputs, attrs):
    """torch.pow's type: the base's promoted with the scalar exponent (int ** 2 stays int)."""
    exponent = attrs["exponent"]
    shape, dtype, device = elementwise("common")(op_name, (*inputs, exponent), attrs)
    if not dtype.is_floating_point and exponent < 0:
        raise RuntimeError(f"fusion: pow: integers to negative integer powers are not allowed "
                           f"({describe(inputs[0])} ** {exponent}), as in torch")
    return shape, dtype, device


op("pow", "pointwise", _pow_rule, lambda x, exponent: torch.pow(x, exponent),
   lambda b, out, g, x, exponent: (
       b.call("mul", g, b.call("mul", b.call("pow", x, exponent=exponent - 1), exponent))
       if exponent != 0 else  # exactly 0 as torch (x ** -1 * 0 is NaN at x = 0)
       b.call("mul", b.call("pow", x, exponent=0), 0.0),),
   triton=lambda a, at, ct: pow_expr(a[0], at["exponent"], ct), promotion="common",
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
    """A parser for ops whose keyword arguments are only harmless ones (inplace=False...)."""
    def parse(alias, args, kwargs):
        bad = {k: v for k, v in kwargs.items() if k not in allowed or v}
        if bad:
            raise NotImplementedError(f"keyword arguments {bad} are not fused")
        return args, {}
    return parse


# ---- pointwise: transcendental ----------------------------------------------
_pointwise("exp", "float", torch.exp, lambda a, at, ct: f"accurate_exp({a[0]})",
           lambda b, out, g, x: (b.call("mul", g, b.call("exp", x)),),
           aliases=(torch.exp, "exp"))
_pointwise("log", "float", torch.log, lambda a, at, ct: f"tl.log({a[0]})",
           lambda b, out, g, x: (b.call("div", g, x),),
           aliases=(torch.log, "log"), domain="positive")
_pointwise("sigmoid", "float", torch.sigmoid, lambda a, at, ct: f"sigmoid({a[0]})",
           lambda b, out, g, x: (b.call("mul", g, b.call("sigmoid_grad", x)),),
           aliases=(torch.sigmoid, F.sigmoid, "sigmoid", torch.nn.Sigmoid), wide_fp32=True)
# dσ/dx as its own primitive: recomputed from x as t(1-t), t = σ(-|x|),
# accurate in both tails where eager's σ(1-σ) rounds to 0 (x >= 17 in fp32).
_pointwise("sigmoid_grad", "float",
           lambda x: torch.sigmoid(x) * torch.sigmoid(-x),
           lambda a, at, ct: f"sigmoid_grad({a[0]})",
           lambda b, out, g, x: (b.call("mul", g, b.call("mul", out, b.call(
               "neg", b.call("tanh", b.call("mul", x, 0.5))))),), internal=True, wide_fp32=True)
_pointwise("tanh", "float", torch.tanh, lambda a, at, ct: f"tanh({a[0]})",
           lambda b, out, g, x: (b.call("mul", g, b.call("sub", 1.0, b.call("mul", out, out))),),
           aliases=(torch.tanh, F.tanh, "tanh", torch.nn.Tanh))
_pointwise("relu", "common", torch.relu, lambda a, at, ct: f"tl.where({a[0]} < 0, 0, {a[0]})",
           lambda b, out, g, x: (b.call("where", b.call("le", x, 0), 0.0, g),),
           aliases=(torch.relu, F.relu, "relu", torch.nn.ReLU), parse=_no_kwargs_but("inplace"))
_pointwise("silu", "float", F.silu, lambda a, at, ct: f"{a[0]} * sigmoid({a[0]})",
           lambda b, out, g, x: (b.call("mul", g, b.call("silu_grad", x)),),
           aliases=(F.silu, torch.nn.SiLU), parse=_no_kwargs_but("inplace"), wide_fp32=True)
# d silu/dx = σ(x) + x σ'(x) as one primitive, computed wide and rounded once: in fp32 the
# two terms cancel near the derivative's zero (x = -1.2785); the product chain x * σ(x)
# still gets its derivative from the rules.
_pointwise("silu_grad", "float", lambda x: torch.sigmoid(x) * (1 + x * torch.sigmoid(-x)),
           lambda a, at, ct: f"silu_grad({a[0]})",
           lambda b, out, g, x: (b.call("mul", g, b.call("mul", b.call("sigmoid_grad", x), b.call(
               "sub", 2.0, b.call("mul", x, b.call("tanh", b.call("mul", x, 0.5)))))),),
           internal=True, wide_fp32=True)

# ---- pointwise: selection and comparison --------------------------------------
def _pick(b, g, take):
    return b.call("where", take, g, 0.0)


def _minmax_vjp(greater):
    # torch's rule: the gradient goes to the winner, halved on ties
    def vjp(b, out, g, x, y):
        tie = b.call("eq", x, y)
        half = b.call("where", tie, b.call("mul", g, 0.5), g)
        x_wins = b.call("gt" if greater else "lt", x, y)
        y_wins = b.call("lt" if greater else "gt", x, y)
        return (b.call("where", y_wins, 0.0, half), b.call("where", x_wins, 0.0, half))
    return vjp


_pointwise("maximum", "common", torch.maximum, lambda a, at, ct: minmax_expr("maximum", a, ct),
           _minmax_vjp(True), aliases=(torch.maximum, "maximum"), arity=2)
_pointwise("minimum", "common", torch.minimum, lambda a, at, ct: minmax_expr("minimum", a, ct),
           _minmax_vjp(False), aliases=(torch.minimum, "minimum"), arity=2)
_pointwise("where", "select", torch.where, lambda a, at, ct: f"tl.where({a[0]}, {a[1]}, {a[2]})",
           lambda b, out, g, c, x, y: (None, _pick(b, g, c), b.call("where", c, 0.0, g)),
           aliases=(torch.where, "where"), parse=lambda alias, args, kwargs: _parse_where(alias, args, kwargs),
           arity=3, domain=("bool", "real", "real"))
for _name, _sym, _fn, _dunder in (("eq", "==", torch.eq, operator.eq), ("ne", "!=", torch.ne, operator.ne),
                                  ("lt", "<", torch.lt, operator.lt), ("le", "<=", torch.le, operator.le),
                                  ("gt", ">", torch.gt, operator.gt), ("ge", ">=", torch.ge, operator.ge)):
    _pointwise(_name, "bool", _fn, (lambda s: lambda a, at, ct: f"{a[0]} {s} {a[1]}")(_sym), None,
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


op("cast", "pointwise", cast_rule, lambda x, dtype: x.to(dtype),
   lambda b, out, g, x, dtype: (b.call("cast", g, dtype=x.dtype) if x.dtype.is_floating_point
                               else None,),
   triton=lambda a, at, ct: cast_expr(a[0], at["dtype"]), promotion="none",
   aliases=("to", "float", "half", "double", "bfloat16", "bool", "long", "int"), parse=_parse_cast,
   sample_attrs=lambda shape: tuple({"dtype": t} for t in (
       torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.bool, torch.int32)))

# ---- reductions (backward of broadcasting) ---------------------------------
op("sum_to", "reduce", sum_to_rule, lambda x, shape: x.sum_to_size(shape) if x.shape != tuple(shape)
   else x, lambda b, out, g, x, shape: (b.call("expand", g, shape=x.shape),), internal=True,
   sample_attrs=lambda shape: ({"shape": tuple(shape)}, {"shape": tuple(1 for _ in shape)}))

# ---- views: no data moves; kernels read them through strides ---------------------
def _sizes(args) -> tuple:
    """(2, 3), ((2, 3),) and ([2, 3],) all mean the sizes (2, 3)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        args = args[0]
    if not all(isinstance(a, int) for a in args):
        raise NotImplementedError(f"sizes {args} are not static integers")
    return tuple(args)


op("transpose", "view", transpose_rule, lambda x, dim0, dim1: x.transpose(dim0, dim1),
   lambda b, out, g, x, dim0, dim1: (b.call("transpose", g, dim0=dim0, dim1=dim1),),
   aliases=(torch.transpose, "transpose", torch.t, "t"), parse=lambda alias, args, kwargs: (
       (args[:1], {"dim0": 0, "dim1": 1}) if alias in (torch.t, "t")
       else (args[:1], {"dim0": args[1] if len(args) > 1 else kwargs["dim0"],
                        "dim1": args[2] if len(args) > 2 else kwargs["dim1"]})),
   sample_attrs=lambda shape: ({"dim0": 0, "dim1": -1},) if shape else ())
op("permute", "view", permute_rule, lambda x, dims: x.permute(dims),
   lambda b, out, g, x, dims: (b.call("permute", g, dims=tuple(sorted(range(len(dims)),
                                                                     key=lambda i: dims[i]))),),
   aliases=(torch.permute, "permute"), parse=lambda alias, args, kwargs: (
       args[:1], {"dims": _sizes(args[1:] or kwargs["dims"])}),
   sample_attrs=lambda shape: ({"dims": tuple(reversed(range(len(shape))))},))
op("reshape", "view", reshape_rule, lambda x, shape: x.reshape(shape),
   lambda b, out, g, x, shape: (b.call("reshape", g, shape=x.shape),),
   aliases=(torch.reshape, "reshape", "view"), parse=lambda alias, args, kwargs: (
       args[:1], {"shape": _sizes(args[1:] or kwargs["shape"])}),
   sample_attrs=lambda shape: ({"shape": (-1,)}, {"shape": tuple(reversed(shape))}))
op("unsqueeze", "view", unsqueeze_rule, lambda x, dim: x.unsqueeze(dim),
   lambda b, out, g, x, dim: (b.call("reshape", g, shape=x.shape),),
   aliases=(torch.unsqueeze, "unsqueeze"), parse=lambda alias, args, kwargs: (
       args[:1], {"dim": args[1] if len(args) > 1 else kwargs["dim"]}),
   sample_attrs=lambda shape: ({"dim": 0}, {"dim": -1}))
op("expand", "view", expand_rule, lambda x, shape: x.expand(shape),
   lambda b, out, g, x, shape: (b.call("sum_to", g, shape=x.shape),),
   aliases=("expand",), parse=lambda alias, args, kwargs: (
       args[:1], {"shape": _sizes(args[1:] or kwargs["size"])}),
   sample_attrs=lambda shape: ({"shape": (2, *shape)}, {"shape": tuple(-1 for _ in shape)}))

op("narrow", "view", narrow_rule, lambda x, dim, start, length: x.narrow(dim, start, length),
   lambda b, out, g, x, dim, start, length: (b.call("pad_to", g, dim=dim, start=start, size=x.shape[dim]),),
   aliases=(torch.narrow, "narrow"), parse=lambda alias, args, kwargs: (
       args[:1], dict(zip(("dim", "start", "length"), args[1:]), **kwargs)),
   sample_attrs=lambda shape: ({"dim": -1, "start": 1, "length": shape[-1] - 2},)
   if shape and shape[-1] > 2 else ())
# the gradient of a narrow: zeros around the slice (torch's slice_backward)
op("pad_to", "view", pad_to_rule,
   lambda g, dim, start, size: torch.nn.functional.pad(
       g, [0, 0] * (g.dim() - 1 - dim % g.dim()) + [start, size - start - g.shape[dim]]),
   lambda b, out, g, x, dim, start, size: (b.call("narrow", g, dim=dim, start=start,
                                                 length=x.shape[dim]),), internal=True,
   sample_attrs=lambda shape: ({"dim": -1, "start": 1, "size": shape[-1] + 3},) if shape else ())


def _chunk(b, target, args, kwargs):
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
        out.append(b.call("narrow", x, dim=dim, start=start, length=n))
        start += n
    return tuple(out)


# capture spellings that expand to several table ops
DECOMPOSITIONS = {torch.chunk: _chunk, "chunk": _chunk, torch.split: _chunk, "split": _chunk}


# ---- matmuls: each anchors a matmul-epilogue kernel (codegen/matmul.py) when pointwise
# ops consume its result; alone it runs in torch. ``form`` maps it onto A @ B (+ bias).
@dataclass(frozen=True)
class MatmulForm:
    """How a matmul op maps onto ``out = A @ B (+ bias)``, by operand index.

    ``b_transposed``: B is given as [N, K] (linear's weight); the kernel reads
    it through swapped strides, never a copy. ``bias`` is added in the
    epilogue, broadcast over the output like any pointwise operand.
    """
    a: int
    b: int
    bias: int | None = None
    b_transposed: bool = False


op("matmul", "matmul", matmul_rule, torch.matmul,
   lambda b, out, g, x, y: (b.call("matmul", g, b.call("transpose", y, dim0=-1, dim1=-2)),
                            b.call("matmul", b.call("transpose", x, dim0=-1, dim1=-2), g)),
   aliases=(torch.matmul, operator.matmul, torch.mm, torch.bmm, "matmul", "mm", "bmm", "__matmul__"),
   form=MatmulForm(a=0, b=1))


def _linear_vjp(b, out, g, x, w, bias=None):
    # out = x @ w.T + bias, x of any leading shape [..., K]
    g2 = b.call("reshape", g, shape=(-1, w.shape[0]))
    x2 = b.call("reshape", x, shape=(-1, w.shape[1]))
    gx = b.call("matmul", g, w)
    gw = b.call("matmul", b.call("transpose", g2, dim0=0, dim1=1), x2)
    return (gx, gw) + ((b.call("sum_to", g, shape=bias.shape),) if bias is not None else ())


op("linear", "matmul", linear_rule, lambda x, w, bias=None: F.linear(x, w, bias),
   _linear_vjp, aliases=(F.linear, torch.nn.Linear), form=MatmulForm(a=0, b=1, bias=2, b_transposed=True))
op("addmm", "matmul", addmm_rule, lambda bias, x, w: torch.addmm(bias, x, w),
   lambda b, out, g, bias, x, w: (b.call("sum_to", g, shape=bias.shape),
                                  b.call("matmul", g, b.call("transpose", w, dim0=0, dim1=1)),
                                  b.call("matmul", b.call("transpose", x, dim0=0, dim1=1), g)),
   aliases=(torch.addmm, "addmm"), form=MatmulForm(a=1, b=2, bias=0))

# ---- anything else: run by eager torch, reported by explain ------------------------
op("extern", "extern", None, None, None, differentiable=True)


import ir.ops_loss  # noqa: E402,F401  (losses and full reductions register into OPS)
