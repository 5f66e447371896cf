"""Which fx nodes may mutate, and the functional twin of the in-place ops that have one.

``may_mutate`` is a syntactic scan on the fast path of every compile: it must be
conservative (a graph it calls pure must be pure) and cheap (a few dict and
attribute look-ups per node, cached per target). ``functional_twin`` names the
out-of-place op that computes an in-place op's new value (``x.add_(y)`` ->
``x.add(y)``), so the functionalized graph stays fusable; ops without a twin
(setitem, copy_, random fills, batch_norm's running stats) are run by a
clone-then-mutate helper instead (see ir/functionalize.py).

Imports only torch and the standard library: the pass runs before our IR exists.
"""
from __future__ import annotations

import functools
import inspect
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

# operator.iadd(x, y) is x += y: in place when x is a tensor, plain add otherwise
INPLACE_OPERATORS = {
    operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
    operator.itruediv: operator.truediv, operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod, operator.ipow: operator.pow, operator.iand: operator.and_,
    operator.ior: operator.or_, operator.ixor: operator.xor, operator.ilshift: operator.lshift,
    operator.irshift: operator.rshift, operator.imatmul: operator.matmul,
}

# In-place methods whose out-of-place namesake computes the same new value, with the
# same arguments, for a self of the result's shape (checked on fake tensors before use;
# the dtype is cast back, as in-place ops keep it). Not here on purpose: ops whose
# namesake means something else (bernoulli_(p) fills, bernoulli() samples from self),
# fills without a namesake (copy_, fill_, zero_, normal_, ...) and metadata mutations
# (t_, unsqueeze_, resize_, set_): they go through the clone-then-mutate helper or are refused.
POINTWISE_INPLACE = frozenset("""
    add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow
    clamp clamp_min clamp_max clip relu sigmoid tanh exp exp2 expm1 log log2 log10 log1p
    sqrt rsqrt abs absolute neg negative reciprocal sin cos tan asin acos atan sinh cosh
    asinh acosh atanh arcsin arccos arctan arcsinh arccosh arctanh atan2 arctan2 erf erfc
    erfinv floor ceil round trunc fix frac sign sgn lerp hypot logit nan_to_num square
    masked_fill masked_scatter index_fill index_add index_copy index_put index_reduce
    scatter scatter_add scatter_reduce put addcmul addcdiv addmm addmv addr baddbmm addbmm
    bitwise_and bitwise_or bitwise_xor bitwise_not bitwise_left_shift bitwise_right_shift
    logical_and logical_or logical_xor logical_not digamma lgamma i0 sinc xlogy copysign
    nextafter heaviside deg2rad rad2deg tril triu cumsum cumprod renorm ldexp polygamma
    mvlgamma eq ne lt le gt ge greater greater_equal less less_equal not_equal
    leaky_relu elu celu selu hardtanh rrelu threshold dropout alpha_dropout feature_dropout
    feature_alpha_dropout
""".split())

# in-place activation modules -> (functional, attributes passed as keywords)
_MODULE_TWINS = {
    nn.ReLU: (F.relu, ()), nn.ReLU6: (F.relu6, ()), nn.SiLU: (F.silu, ()),
    nn.Hardswish: (F.hardswish, ()), nn.Hardsigmoid: (F.hardsigmoid, ()), nn.Mish: (F.mish, ()),
    nn.SELU: (F.selu, ()), nn.LeakyReLU: (F.leaky_relu, ("negative_slope",)),
    nn.ELU: (F.elu, ("alpha",)), nn.CELU: (F.celu, ("alpha",)),
    nn.Hardtanh: (F.hardtanh, ("min_val", "max_val")),
    nn.Threshold: (F.threshold, ("threshold", "value")),
    nn.RReLU: (F.rrelu, ("lower", "upper", "training")),
    nn.Dropout: (F.dropout, ("p", "training")), nn.Dropout1d: (F.dropout1d, ("p", "training")),
    nn.Dropout2d: (F.dropout2d, ("p", "training")), nn.Dropout3d: (F.dropout3d, ("p", "training")),
    nn.AlphaDropout: (F.alpha_dropout, ("p", "training")),
    nn.FeatureAlphaDropout: (F.feature_alpha_dropout, ("p", "training")),
}

# functions that update running statistics in place when training (argument 5), with no
# version-counter bump and no mutable annotation in native_batch_norm's schema
_NORM_FUNCTIONS = frozenset({"batch_norm", "instance_norm", "native_batch_norm",
                             "cudnn_batch_norm", "miopen_batch_norm", "_batch_norm_impl_index"})
_SAFE_MODULES = frozenset({"_operator", "operator", "builtins", "math"})


@dataclass(frozen=True)
class Twin:
    """An out-of-place call computing an in-place node's new value; args hold fx nodes."""
    op: str  # "call_function" or "call_method"
    target: object
    args: tuple
    kwargs: dict

    def describe(self) -> str:
        name = self.target if isinstance(self.target, str) else getattr(self.target, "__name__", self.target)
        return f"{name}({_short_kwargs(self.kwargs)})"


def may_mutate(gm: fx.GraphModule) -> bool:
    """True when some node of ``gm`` may write a tensor in place (conservative).

    A syntactic scan for callers to skip ``functionalize`` on pure graphs: in-place
    methods (``add_``), ``operator.setitem`` and ``operator.i*``, ``torch.*_`` functions,
    ``inplace=True`` (keyword or positional), ``out=``, in-place and running-stat modules,
    batch/instance norm in training, mutable ``torch.ops`` overloads, ``F.embedding`` with
    ``max_norm``, and any callable from outside torch/operator/builtins/math (a user
    function kept as a leaf may mutate). False negatives are bugs; false positives cost
    one ``functionalize`` call. Runs in microseconds (one pass, cached per target).
    """
    for n in gm.graph.nodes:
        op = n.op
        if op == "call_method":
            if _mutating_method(n.target):
                return True
        elif op == "call_function":
            if _function_may_mutate(n):
                return True
        elif op == "call_module":
            if _module_may_mutate(gm.get_submodule(n.target)):
                return True
    return False


def _mutating_method(name: str) -> bool:
    if name.startswith("__"):  # __iadd__, __setitem__ called as methods
        return name == "__setitem__" or (name.startswith("__i") and name.endswith("__"))
    return name.endswith("_")


def _function_may_mutate(n: fx.Node) -> bool:
    kind = _classify_target(n.target)
    if kind == "pure":
        return "out" in n.kwargs
    if kind != "arguments":  # "mutating" or "unknown"
        return True
    target = n.target
    pos = inplace_position(target)
    if pos is not None and _arg(n, pos, "inplace", False) is not False:
        return True
    if target is F.batch_norm:
        return _arg(n, 1, "running_mean", None) is not None and \
            _arg(n, 5, "training", False) is not False
    if target is F.instance_norm:  # use_input_stats defaults to True
        return _arg(n, 1, "running_mean", None) is not None and \
            _arg(n, 5, "use_input_stats", True) is not False
    if target is F.embedding:  # max_norm renormalises the looked-up rows of the weight in place
        return _arg(n, 3, "max_norm", None) is not None
    return "out" in n.kwargs


def _classify_target(target) -> str:
    """'pure' (unless out=), 'mutating', 'unknown' (not from torch: may do anything) or
    'arguments' (an ``inplace`` parameter, or norm statistics: look at the arguments)."""
    try:
        return _classify_hashable(target)
    except TypeError:  # an unhashable callable: nothing known about it
        return "unknown"


@functools.lru_cache(maxsize=4096)
def _classify_hashable(target) -> str:
    if target in INPLACE_OPERATORS or target is operator.setitem:
        return "mutating"
    if isinstance(target, torch._ops.OpOverload):
        return "mutating" if target._schema.is_mutable or target.__name__.split(".")[0] in _NORM_FUNCTIONS \
            else "pure"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return "mutating" if any(getattr(target, o)._schema.is_mutable for o in target.overloads()) \
            or target.__name__ in _NORM_FUNCTIONS else "pure"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return "unknown"  # runs subgraphs we do not look into
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", "")
    if module in _SAFE_MODULES:
        return "pure"
    if not (module == "torch" or module.startswith("torch.") or _is_tensor_method(target)):
        return "unknown"
    if name.endswith("_") and not name.endswith("__"):
        return "mutating"
    if name == "__setitem__" or (name.startswith("__i") and name.endswith("__")):
        return "mutating"
    if name in _NORM_FUNCTIONS and target not in (F.batch_norm, F.instance_norm):
        return "mutating"  # torch.batch_norm, torch.native_batch_norm: other argument orders
    if inplace_position(target) is not None or target in (F.batch_norm, F.instance_norm, F.embedding):
        return "arguments"
    return "pure"


def _is_tensor_method(target) -> bool:
    # torch.Tensor.add_ is a method descriptor whose __module__ is None
    return getattr(target, "__objclass__", None) in (torch.Tensor, torch._C.TensorBase)


def _module_may_mutate(mod: nn.Module) -> bool:
    if getattr(mod, "inplace", False):
        return True
    if mod._forward_pre_hooks or mod._forward_hooks:  # e.g. spectral_norm's power iteration
        return True
    if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        # eval mode reads the running stats; a train/eval switch re-runs the scan (guarded)
        return mod.training and mod.track_running_stats
    if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
        return mod.max_norm is not None
    module = type(mod).__module__
    # torch.nn's own modules are pure apart from the cases above; others may do anything
    return not module.startswith("torch.nn.")


def _arg(n: fx.Node, pos: int, name: str, default):
    if name in n.kwargs:
        return n.kwargs[name]
    return n.args[pos] if len(n.args) > pos else default


@functools.lru_cache(maxsize=1024)
def inplace_position(target) -> int | None:
    """Position of the ``inplace`` parameter of a Python function (F.relu: 1), else None."""
    try:
        params = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return None
    return params.index("inplace") if "inplace" in params else None


def functional_twin(n: fx.Node, module: nn.Module | None = None) -> Twin | None:
    """The out-of-place call computing the new value of ``n``'s first argument, if known.

    ``module`` is the submodule of a call_module node. None means: use the generic
    clone-then-mutate helper.
    """
    if n.op == "call_method":
        if n.target.endswith("_") and n.target[:-1] in POINTWISE_INPLACE:
            return Twin("call_method", n.target[:-1], n.args, dict(n.kwargs))
        return None
    if n.op == "call_module":
        twin = _MODULE_TWINS.get(type(module))
        if twin is None or not getattr(module, "inplace", False) or len(n.args) != 1 or n.kwargs:
            return None
        fn, attrs = twin
        return Twin("call_function", fn, n.args, {a: getattr(module, a) for a in attrs})
    if n.op != "call_function" or "out" in n.kwargs:
        return None
    target = n.target
    if target in INPLACE_OPERATORS:
        return Twin("call_function", INPLACE_OPERATORS[target], n.args, dict(n.kwargs))
    if _classify_target(target) not in ("arguments", "mutating"):
        return None
    namesake = _out_of_place_namesake(target)
    if namesake is not None:
        return Twin("call_function", namesake, n.args, dict(n.kwargs))
    pos = inplace_position(target)
    if pos is None:
        return None
    args, kwargs = list(n.args), dict(n.kwargs)
    if len(args) > pos:
        args[pos] = False
    else:
        kwargs["inplace"] = False
    return Twin("call_function", target, tuple(args), kwargs)


@functools.lru_cache(maxsize=1024)
def _out_of_place_namesake(target):
    """torch.relu_ -> torch.relu, F.relu_ -> F.relu, torch.Tensor.add_ -> torch.Tensor.add."""
    name = getattr(target, "__name__", "")
    if not name.endswith("_") or name.endswith("__") or name[:-1] not in POINTWISE_INPLACE:
        return None
    for namespace in (torch, F, torch.Tensor):
        if getattr(namespace, name, None) is target:
            return getattr(namespace, name[:-1], None)
    return None


def _short_kwargs(kwargs: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items() if not isinstance(v, fx.Node))


class InplaceProxy(fx.Proxy):
    """A Proxy recording ``x += y`` as ``operator.iadd`` and ``x[i] = v`` as
    ``operator.setitem``. Plain fx Proxies have no ``__iadd__`` (PyTorch 2.13), so
    Python falls back to ``x = x + y``: the write to ``x`` is silently lost (wrong when
    ``x`` is an input or has another name), and ``x[i] = v`` raises TypeError."""

    def __setitem__(self, index, value):
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})


def _inplace_magic(op):
    def method(self, other):
        return self.tracer.create_proxy("call_function", op, (self, other), {})
    method.__name__ = f"__{op.__name__}__"
    return method


for _op in INPLACE_OPERATORS:
    setattr(InplaceProxy, f"__{_op.__name__}__", _inplace_magic(_op))


class InplaceTracer(fx.Tracer):
    """``fx.Tracer`` whose proxies record in-place operators (see ``InplaceProxy``), and
    whose buffers are proxies: fx's default hands forward the real buffer, so
    ``self.steps.add_(1)`` runs once at trace time and is missing from the graph."""
    proxy_buffer_attributes = True

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return InplaceProxy(node, self)
