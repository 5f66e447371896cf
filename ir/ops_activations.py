"""Op-table entries: the activations around the sigmoid gates (GELU, softplus, the hard
and leaky family), and the decompositions of the ones that need no primitive.

Part of the one table (``ir.ops``); see ``ir.opdef.OpDef`` for the fields.
Primitives here need one for a reason written beside them (an accuracy or a
gradient that no composition of existing entries gives); the others are
DECOMPOSITIONS into existing entries, exact as torch computes them, so they
fuse with whatever surrounds them:

    glu(x, dim)        a * sigmoid(b), a and b the two halves of x along dim (narrow views)
    hardsigmoid(x)     hardtanh(x + 3, 0, 6) / 6                  (torch's formula)
    hardswish(x)       where(x < -3, -0, x * hardsigmoid(x))
    leaky_relu(x, s)   where(x > 0, x, x * s)
    elu/selu/celu      where(x <= 0, alpha scale expm1(input_scale min(x, 0)), scale x)
    logsigmoid(x)      -softplus(-x, beta=1, threshold=inf) = min(x, 0) - log1p(exp(-|x|))
    relu6(x)           hardtanh(x, 0, 6)                          (an alias: torch's definition)
    clamp_min/max      clamp with one bound
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ir.opdef import DECOMPOSITIONS, OpKind, op
from ir.triton_exprs import clamp_expr, float_literal
from ir.types import elementwise

INF = float("inf")


# ---- arguments: one reader for functionals, Dynamo's spellings and modules ----------------

def read_arguments(target, args, kwargs, params: tuple) -> dict:
    """The values of ``params`` ((name, default) pairs, after the tensor) in a call
    ``target(*args, **kwargs)``, or read from ``target`` when it is an nn.Module.
    ``inplace=True`` is refused: an in-place activation mutates its input, which only
    the functionalization pass may rewrite into this out-of-place form."""
    if isinstance(target, nn.Module):
        values = {name: getattr(target, name, default) for name, default in params}
    else:
        names = [name for name, _ in params]
        if len(args) - 1 > len(names) or set(kwargs) - set(names):
            raise NotImplementedError(f"arguments {args[1:]} {dict(kwargs)} are not understood")
        values = dict(params)
        values.update(zip(names, args[1:]))
        values.update(kwargs)
    if values.pop("inplace", False):
        raise NotImplementedError("inplace=True is not fused (it mutates its input)")
    for name, v in values.items():
        if not isinstance(v, (int, float, str, type(None))) or isinstance(v, bool):
            raise NotImplementedError(f"{name}={v!r} is not a Python number")
    return values


def parser(*params, fixed: dict | None = None):
    """``OpDef.parse`` for an op whose attrs are the call's arguments ``params``."""
    def parse(alias, args, kwargs):
        values = read_arguments(None, args, kwargs, params)
        return args[:1], {**{k: (float(v) if isinstance(v, int) else v) for k, v in values.items()},
                          **(fixed or {})}
    return parse


def _unary(name, promotion, eager, triton, vjp, **kw):
    return op(name, OpKind.POINTWISE, elementwise(promotion), eager, vjp, triton=triton,
              promotion=promotion, **kw)


# ---- clamp and hardtanh: the same forward, torch's two gradients ------------------------------

def _clamp_rule(op_name, inputs, attrs):
    """torch.clamp promotes with its scalar bounds (an int tensor clamped at 0.5 is float)."""
    bounds = [v for v in (attrs["min"], attrs["max"]) if v is not None]
    return elementwise("common")(op_name, (*inputs, *bounds), attrs)


def _clamp_vjp(bwd, out, g, x, min, max):  # torch's argument names
    # torch's clamp_backward: the gradient passes where min <= x <= max, bounds included
    # (NaN compares false: its gradient is 0)
    if min is not None:
        g = bwd.call("where", bwd.call("ge", x, min), g, 0.0)
    if max is not None:
        g = bwd.call("where", bwd.call("le", x, max), g, 0.0)
    return (g,)


def _parse_clamp(alias, args, kwargs):
    values = read_arguments(None, args, kwargs, (("min", None), ("max", None)))
    if values["min"] is None and values["max"] is None:
        raise NotImplementedError("clamp needs a min or a max")
    return args[:1], values


op("clamp", OpKind.POINTWISE, _clamp_rule,
   lambda x, min, max: torch.clamp(x, min, max),
   _clamp_vjp, triton=lambda args, attrs, ctype: clamp_expr(args[0], attrs["min"], attrs["max"], ctype),
   promotion="common", aliases=(torch.clamp, torch.clip, "clamp", "clip"), parse=_parse_clamp,
   sample_attrs=lambda shape: ({"min": -0.5, "max": 1.0}, {"min": 0.0, "max": None},
                               {"min": None, "max": 0.5}))


def _hardtanh_vjp(bwd, out, g, x, min_val, max_val):
    # torch's hardtanh_backward: 0 at and beyond the bounds (relu6'(0) = 0, as relu'(0)),
    # where clamp passes the gradient at them; NaN passes it, as in torch
    inside = bwd.call("where", bwd.call("ge", x, max_val), 0.0, g)
    return (bwd.call("where", bwd.call("le", x, min_val), 0.0, inside),)


def _parse_hardtanh(alias, args, kwargs):
    if alias in (F.relu6, torch._C._nn.relu6):  # relu6 is hardtanh(x, 0, 6) in torch
        return parser(("inplace", False), fixed={"min_val": 0.0, "max_val": 6.0})(alias, args, kwargs)
    return parser(("min_val", -1.0), ("max_val", 1.0), ("inplace", False))(alias, args, kwargs)


# a primitive only for its gradient at the bounds: clamp's forward, hardtanh_backward's rule
_unary("hardtanh", "common", lambda x, min_val, max_val: F.hardtanh(x, min_val, max_val),
       lambda args, attrs, ctype: clamp_expr(args[0], attrs["min_val"], attrs["max_val"], ctype),
       _hardtanh_vjp, aliases=(F.hardtanh, torch._C._nn.hardtanh, nn.Hardtanh, F.relu6,
                               torch._C._nn.relu6, nn.ReLU6),
       parse=_parse_hardtanh, module_attrs=("min_val", "max_val", "inplace"),
       sample_attrs=lambda shape: ({"min_val": -1.0, "max_val": 1.0}, {"min_val": 0.0, "max_val": 6.0},
                                   {"min_val": -0.5, "max_val": 0.5}))

# ---- exp-like primitives: accurate where the obvious composition is not ------------------

# expm1: exp(x) - 1 loses all digits as x -> 0 (elu near 0-); d/dx = exp(x), from x
_unary("expm1", "float", torch.expm1, lambda args, attrs, ctype: f"expm1({args[0]})",
       lambda bwd, out, g, x: (bwd.call("mul", g, bwd.call("exp", x)),),
       aliases=(torch.expm1, torch.special.expm1, "expm1"), live_values=3)
# rsqrt: as pow(x, -0.5) its gradient would be pow(x, -1.5) = exp(-1.5 log x), ~|1.5 log x|
# ulps off; here g · d/dx = (g · -rsqrt(x) / 2) / |x|: the halving is exact, so only the product
# and the division round, and nothing overflows before the result does: not x^-1.5 (1e60 at
# x = 1e-40) before a small g scales it back (torch: -g · r^3 / 2, r^3 overflows there).
# |x|, not x: at x = -0.0, r = -inf and torch's -r^3 / 2 is +inf (fuzzer seed 300027)
_unary("rsqrt", "float", torch.rsqrt, lambda args, attrs, ctype: f"rsqrt({args[0]})",
       lambda bwd, out, g, x: (bwd.call("div", bwd.call("mul", g, bwd.call("mul", out, -0.5)),
                                        bwd.call("abs", x)),),
       aliases=(torch.rsqrt, "rsqrt"), domain="positive", live_values=3)


# softplus: the stable log1p(exp(-|z|)) form and torch's threshold (x where beta x > threshold);
# a primitive because no composition of entries has the right gradient at z = 0 (relu'(0) = 0)
def _softplus_vjp(bwd, out, g, x, beta, threshold):
    # torch's rule, d/dx = sigmoid(beta x), computed from x (tail-accurate: never 1 - e^z/(1+e^z))
    z = bwd.call("mul", x, beta)
    return (bwd.call("where", bwd.call("gt", z, threshold), g, bwd.call("mul", g, bwd.call("sigmoid", z))),)


_unary("softplus", "float", lambda x, beta, threshold: F.softplus(x, beta, threshold),
       lambda args, attrs, ctype: (f"softplus_beta({args[0]}, {float_literal(attrs['beta'])}, "
                                   f"{float_literal(attrs['threshold'])})"),
       _softplus_vjp, aliases=(F.softplus, nn.Softplus), module_attrs=("beta", "threshold"),
       parse=parser(("beta", 1.0), ("threshold", 20.0)), live_values=3,
       sample_attrs=lambda shape: ({"beta": 1.0, "threshold": 20.0}, {"beta": 2.0, "threshold": 1.0},
                                   {"beta": 0.5, "threshold": 100.0}))


# ---- GELU: x Phi(x); a primitive because Phi needs erf (codegen/prelude_activations.py) ------

def _gelu_vjp(bwd, out, g, x, approximate):
    grad = "gelu_grad" if approximate == "none" else "gelu_tanh_grad"
    return (bwd.call("mul", g, bwd.call(grad, x)),)


def _parse_gelu(alias, args, kwargs):
    values = read_arguments(None, args, kwargs, (("approximate", "none"),))
    if values["approximate"] not in ("none", "tanh"):
        raise NotImplementedError(f"approximate={values['approximate']!r}")
    return args[:1], values


_unary("gelu", "float", lambda x, approximate: F.gelu(x, approximate=approximate),
       lambda args, attrs, ctype: f"{'gelu' if attrs['approximate'] == 'none' else 'gelu_tanh'}({args[0]})",
       _gelu_vjp, aliases=(F.gelu, nn.GELU), module_attrs=("approximate",), parse=_parse_gelu,
       live_values=6,  # normal_tail_parts keeps t, exp(-t^2/2), its scale, G and H live, and x
       sample_attrs=lambda shape: ({"approximate": "none"}, {"approximate": "tanh"}))
# GELU' = Phi(x) + x phi(x), as its own primitive: the two terms cancel near x = -0.7518 and
# both vanish in the left tail, where eager's fp32 form is 0 (or NaN at -inf)
_unary("gelu_grad", "float", lambda x: torch.ops.aten.gelu_backward(torch.ones_like(x), x),
       lambda args, attrs, ctype: f"gelu_grad({args[0]})",
       # GELU'' = phi(x) (2 - x^2), x capped at +-40 where phi is 0 even in fp64: the limit 0
       # at +-inf, not 0 * inf
       lambda bwd, out, g, x: (bwd.call("mul", g, _gelu_second(bwd, bwd.call(
           "clamp", x, min=-40.0, max=40.0))),),
       internal=True, live_values=6)  # t, exp(-t^2/2), its scale, G, H and x


def _gelu_second(bwd, x):
    return bwd.call("mul", bwd.call("mul", bwd.call("exp", bwd.call("mul", bwd.call("mul", x, x), -0.5)),
                                    0.3989422804014327), bwd.call("sub", 2.0, bwd.call("mul", x, x)))


def _gelu_tanh_second(bwd, out, g, x):
    # d/dx [sigmoid(w) + x sigmoid'(w) w'] = sigmoid'(w) (2 w' + x w'' + x (1 - 2 sigmoid(w)) w'^2),
    # w = x (C1 + C3 x^2), w' = C1 + 3 C3 x^2, x w'' = 6 C3 x^2 (only double backward reads it);
    # x capped at +-40, where sigmoid'(w) is 0 even in fp64: the limit 0 at +-inf, not 0 * inf
    x = bwd.call("clamp", x, min=-40.0, max=40.0)
    x2 = bwd.call("mul", x, x)
    w = bwd.call("mul", x, bwd.call("add", bwd.call("mul", x2, 0.07135481627260025), 1.5957691216057308))
    dw = bwd.call("add", bwd.call("mul", x2, 0.21406444881780073), 1.5957691216057308)
    bend = bwd.call("sub", 1.0, bwd.call("mul", bwd.call("sigmoid", w), 2.0))
    curve = bwd.call("mul", bwd.call("mul", x, bend), bwd.call("mul", dw, dw))
    inner = bwd.call("add", bwd.call("add", bwd.call("mul", dw, 2.0), bwd.call("mul", x2, 0.42812889763560147)),
                     curve)
    return (bwd.call("mul", g, bwd.call("mul", bwd.call("sigmoid_grad", w), inner)),)


# the tanh form's derivative as a primitive for the same reason: its argument w carried in
# double-float (gelu_tanh_arg) keeps the left tail accurate; eager's is 0 below x = -9.1
_unary("gelu_tanh_grad", "float",
       lambda x: torch.ops.aten.gelu_backward(torch.ones_like(x), x, approximate="tanh"),
       lambda args, attrs, ctype: f"gelu_tanh_grad({args[0]})", _gelu_tanh_second,
       internal=True, live_values=6)


# ---- decompositions into the entries above and the pointwise/view ones -------------------------

def _glu(graph, target, args, kwargs):
    x, (dim,) = args[0], read_arguments(target, args, kwargs, (("dim", -1),)).values()
    if not isinstance(dim, int) or not x.shape or x.shape[dim] % 2:
        raise NotImplementedError("glu needs an even size along dim")  # eager then says so
    half = x.shape[dim] // 2
    a = graph.call("narrow", x, dim=dim, start=0, length=half)
    b = graph.call("narrow", x, dim=dim, start=half, length=half)
    return graph.call("mul", a, graph.call("sigmoid", b))


def _hardsigmoid_form(graph, x):
    # torch: min(max(x + 3, 0), 6) / 6, gradient 1/6 on -3 < x < 3 only (hardtanh's rule)
    return graph.call("div", graph.call("hardtanh", graph.call("add", x, 3.0), min_val=0.0, max_val=6.0), 6.0)


def _hardsigmoid(graph, target, args, kwargs):
    read_arguments(target, args, kwargs, (("inplace", False),))
    return _hardsigmoid_form(graph, args[0])


def _hardswish(graph, target, args, kwargs):
    read_arguments(target, args, kwargs, (("inplace", False),))
    x = args[0]
    # x * hardsigmoid(x): torch's hardswish_backward (0 at -3, x/3 + 1/2 inside, 1 at 3) comes
    # from the rules; -0 below -3 as torch, and at -inf too (the limit; x * 0 would be NaN
    # there, forward and backward)
    return graph.call("where", graph.call("lt", x, -3.0), -0.0, graph.call("mul", x, _hardsigmoid_form(graph, x)))


def _leaky_relu(graph, target, args, kwargs):
    (slope,) = read_arguments(target, args, kwargs, (("negative_slope", 0.01), ("inplace", False))).values()
    x = args[0]
    # torch: x > 0 ? x : x * slope, and the same split for the gradient (slope at 0)
    return graph.call("where", graph.call("gt", x, 0.0), x, graph.call("mul", x, float(slope)))


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _elu_form(graph, x, alpha: float, scale: float = 1.0, input_scale: float = 1.0):
    """torch's elu: x <= 0 ? alpha scale (exp(input_scale x) - 1) : scale x, with expm1 (no
    cancellation near 0-); its gradient alpha scale input_scale exp(input_scale x) from x.
    expm1 reads min(x, 0) (clamp: the gradient passes at 0): the branch where() drops must
    not see exp(x) = inf, or its zero gradient times inf is NaN (x > 88.7 in fp32)."""
    inner = graph.call("clamp", x, min=None, max=0.0)
    inner = inner if input_scale == 1.0 else graph.call("mul", inner, input_scale)
    negative = graph.call("mul", graph.call("expm1", inner), alpha * scale)
    positive = x if scale == 1.0 else graph.call("mul", x, scale)
    return graph.call("where", graph.call("le", x, 0.0), negative, positive)


def _elu(graph, target, args, kwargs):
    params = (("alpha", 1.0), ("scale", 1.0), ("input_scale", 1.0)) if target is torch._C._nn.elu \
        else (("alpha", 1.0), ("inplace", False))
    return _elu_form(graph, args[0], *map(float, read_arguments(target, args, kwargs, params).values()))


def _selu(graph, target, args, kwargs):
    read_arguments(target, args, kwargs, (("inplace", False),))
    return _elu_form(graph, args[0], SELU_ALPHA, SELU_SCALE)


def _celu(graph, target, args, kwargs):
    (alpha,) = read_arguments(target, args, kwargs, (("alpha", 1.0), ("inplace", False))).values()
    return _elu_form(graph, args[0], float(alpha), 1.0, 1.0 / alpha)


def _logsigmoid(graph, target, args, kwargs):
    read_arguments(target, args, kwargs, ())
    # -softplus(-x) with no threshold: min(x, 0) - log1p(exp(-|x|)) exactly, and the
    # gradient sigmoid(-x) from softplus' rule
    return graph.call("neg", graph.call("softplus", graph.call("neg", args[0]), beta=1.0, threshold=INF))


def _clamp_one_side(side: str):
    def build(graph, target, args, kwargs):
        (bound,) = read_arguments(target, args, kwargs, ((side, None),)).values()
        if bound is None:
            raise NotImplementedError(f"clamp_{side} needs a Python number")
        bounds = {"min": None, "max": None, side: bound}
        return graph.call("clamp", args[0], **bounds)
    return build


for _aliases, _build in (
        ((F.glu, torch._C._nn.glu, nn.GLU), _glu),
        ((F.hardsigmoid, torch._C._nn.hardsigmoid, nn.Hardsigmoid), _hardsigmoid),
        ((F.hardswish, torch._C._nn.hardswish, nn.Hardswish), _hardswish),
        ((F.leaky_relu, torch._C._nn.leaky_relu, nn.LeakyReLU), _leaky_relu),
        ((F.elu, torch._C._nn.elu, nn.ELU), _elu),
        ((F.selu, torch.selu, nn.SELU), _selu),
        ((F.celu, torch.celu, nn.CELU), _celu),
        ((F.logsigmoid, nn.LogSigmoid), _logsigmoid),
        ((torch.clamp_min, "clamp_min"), _clamp_one_side("min")),
        ((torch.clamp_max, "clamp_max"), _clamp_one_side("max"))):
    for _alias in _aliases:
        DECOMPOSITIONS[_alias] = _build
