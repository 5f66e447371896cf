"""Lowering: an fx graph (from torch.fx or Dynamo) into the typed IR, per input signature.

Known ops (the op table's aliases) become IR nodes. Shape queries
(``x.shape[0]``, ``x.size(1)``) fold to constants: shapes are guarded, so
they cannot change under a compiled plan. Everything else becomes an
``extern`` node run by eager torch, with the reason recorded for ``explain``.
"""
from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ir.capture import CaptureError, NotLowered
from ir.eager_checks import call_checked, eager_error
from ir.extern import element, is_tuple_node, make_extern
from ir.functional_helpers import rebase_autograd
from ir.grad_mode import SET_GRAD_ENABLED, GradMode
from ir.graph import Graph, Node
from ir.ops import DECOMPOSITIONS, FUSIBLE, OPS
from ir.types import meta, require_kernel_types


def _alias_table() -> dict:
    table = {}
    for name, d in OPS.items():
        for a in d.aliases:
            table[a] = name
    return table


ALIASES = _alias_table()
_PASSTHROUGH_MODULES = (torch.nn.Identity,)
_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}
_SHAPE_METHODS = {"size", "dim", "numel", "get_device"}
_AUTOGRAD_METHODS = {"register_hook", "retain_grad", "register_post_accumulate_grad_hook"}


@dataclass
class Captured:
    """The IR graph of one call signature and how to rebuild the output structure."""
    graph: Graph
    out_spec: pytree.TreeSpec
    out_leaves: list  # per output leaf: a Node, or a constant to return as is
    modules: dict = field(default_factory=dict)  # qualname -> (submodule, its training flag) the graph was built with


def lower(gm: fx.GraphModule, args: tuple, root=None) -> Captured:
    """Lower the traced module to IR, typed by the example ``args``.

    Parameters are looked up on ``root`` (the user's module, default ``gm``) at
    every call, so replacing one is seen. Submodules are resolved here; the ones
    used, with their training flags, are recorded in ``Captured.modules`` for the
    runtime to guard on (a replaced submodule or a train/eval switch rebuilds).
    Tensors inside list/tuple/dict arguments become graph inputs too.
    """
    root = gm if not isinstance(root, torch.nn.Module) else root
    g = Graph()
    env: dict[fx.Node, object] = {}
    params: dict[str, Node] = {}
    modules: dict[str, tuple] = {}
    arg_iter = iter(args)
    grad_mode = GradMode()

    def submodule(qualname: str):
        mod = root.get_submodule(qualname)
        modules[qualname] = (mod, mod.training)
        return mod

    def input_node(value, name):
        node = g.add_node("input", (), {}, value.shape, value.dtype, value.device, name=name)
        if value.requires_grad:
            grad_mode.leaves.add(node)
        return node

    def param(qualname: str, value) -> object:
        if not isinstance(value, torch.Tensor):
            return value
        if qualname not in params:
            params[qualname] = g.add_node("param", (), {}, value.shape, value.dtype, value.device,
                                          name=qualname)
            if value.requires_grad:  # guarded (fusion.guards): a change rebuilds
                grad_mode.leaves.add(params[qualname])
        return params[qualname]

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            value = next(arg_iter)
            if isinstance(value, torch.Tensor):
                env[n] = input_node(value, n.target)
            else:  # Python values stay constants (guarded); tensors inside containers are inputs
                leaves, spec = pytree.tree_flatten(value)
                env[n] = pytree.tree_unflatten(
                    [input_node(v, f"{n.target}_{k}") if isinstance(v, torch.Tensor) else v
                     for k, v in enumerate(leaves)], spec)
        elif n.op == "get_attr":
            env[n] = param(n.target, fetch_attr(root, n.target))
        elif n.op == "output":
            leaves, spec = pytree.tree_flatten(_mutable(fx.node.map_arg(n.args[0], env.__getitem__)))
            g.outputs = [x for x in leaves if isinstance(x, Node)]
            return Captured(g, spec, leaves, modules)
        elif n.op == "call_function" and n.target in SET_GRAD_ENABLED:
            grad_mode.set(n.args[0] if n.args else n.kwargs["mode"])
            env[n] = None
        else:
            args_ = fx.node.map_arg(n.args, env.__getitem__)
            kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
            first = len(g.nodes)
            value = _lower_call(g, submodule, n, args_, kwargs, param)
            # rebase_autograd (functionalization's write under no_grad) keeps the written
            # tensor's autograd identity on purpose: its result is not the region's
            env[n] = value if n.target is rebase_autograd else grad_mode.detach_new(g, value, first)
    raise CaptureError("fusion: traced graph has no output")


def _mutable(value):
    """fx's immutable_list/immutable_dict as the list/dict eager returns (the caller may
    change them: ``out["loss"] = ...``)."""
    if isinstance(value, dict):
        return {k: _mutable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mutable(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_mutable(v) for v in value)
    return value


def fetch_attr(root, qualname: str):
    """``root.a.b.c`` for ``qualname`` "a.b.c" (parameters, buffers, submodules)."""
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _lower_call(g: Graph, submodule, n: fx.Node, args, kwargs, param):
    target, alias = n.target, n.target
    if getattr(target, "__module__", "").startswith(("torch._functorch", "torch._C._functorch")):
        raise NotLowered(f"fusion: torch.func transforms (vmap, grad) are not fused: "
                           f"{getattr(target, '__name__', target)} in the graph")
    if "autocast" in getattr(target, "__name__", ""):  # Dynamo's _enter_autocast/_exit_autocast
        raise NotLowered("fusion: torch.autocast inside forward is not applied by fused kernels")
    if "inference_mode" in getattr(target, "__name__", ""):  # Dynamo's _enter_inference_mode
        raise NotLowered("fusion: torch.inference_mode inside forward is not applied by fused kernels")
    # Dynamo spells x.register_hook(fn) as a higher-order op named register_hook
    hook = n.target if n.op == "call_method" else str(getattr(target, "_name", ""))
    if hook in _AUTOGRAD_METHODS:
        raise NotLowered(f"fusion: {hook} in forward acts on autograd's graph, which fused kernels replace")
    if n.op == "call_module":
        mod = submodule(n.target)
        if isinstance(mod, _PASSTHROUGH_MODULES) or (isinstance(mod, torch.nn.Dropout) and not mod.training):
            return args[0]
        if isinstance(mod, torch.nn.Linear):
            w = param(f"{n.target}.weight", mod.weight)
            b = param(f"{n.target}.bias", mod.bias) if mod.bias is not None else None
            return g.call("linear", args[0], w, *([b] if b is not None else []))
        alias = type(mod)
        target = mod
    elif n.op == "call_method":
        if n.target.endswith("_") and not n.target.endswith("__"):
            raise CaptureError(
                f"fusion: in-place method .{n.target}() in forward is not supported "
                f"(it mutates {args[0]!r}); use the out-of-place .{n.target[:-1]}()")

    # shape queries and arithmetic on Python values fold to constants
    folded = _fold(n, target, args, kwargs)
    if folded is not _NOT_FOLDED:
        return folded

    if target is operator.getitem and isinstance(args[0], (tuple, list)):
        return args[0][args[1]]  # e.g. one chunk of x.chunk(4, 1)
    if target is operator.getitem and is_tuple_node(args[0]) and isinstance(args[1], int):
        return element(g, args[0], args[1])  # e.g. x.max(dim=1)[0], an LSTM's (h, c)
    if (target is builtins.getattr and is_tuple_node(args[0])
            and args[1] in args[0].attrs["fields"]):
        return element(g, args[0], args[1])  # e.g. torch.topk(x, 2).values
    if _hashable(alias) and alias in DECOMPOSITIONS and isinstance(args[0], Node):
        try:
            return DECOMPOSITIONS[alias](g, target, args, kwargs)
        except (NotImplementedError, TypeError) as e:
            return make_extern(g, n, target, args, kwargs, f"{alias}: {e}")

    if n.op == "call_function" and target is builtins.getattr and args[1] in ("T", "mT"):
        x = args[0]
        if args[1] == "T":
            return g.call("permute", x, dims=tuple(reversed(range(len(x.shape)))))
        return g.call("transpose", x, dim0=-2, dim1=-1)

    name = ALIASES.get(alias) if _hashable(alias) else None
    if name is not None and not (isinstance(alias, type) and kwargs):
        d = OPS[name]
        # a module's attributes are its functional's keyword arguments
        given = {a: getattr(target, a) for a in d.module_attrs} if isinstance(alias, type) else kwargs
        try:
            inputs, attrs = (d.parse(alias, args, given) if d.parse
                             else (_positional(args, given), {}))
            if all(not isinstance(i, Node) for i in inputs):
                raise NotImplementedError("no tensor operand")
            if any(not isinstance(i, (Node, bool, int, float)) for i in inputs):
                raise NotImplementedError(f"operands {inputs} are not tensors or scalars")
            if d.kind not in FUSIBLE:
                return g.call(name, *inputs, **attrs)
            require_kernel_types(name, inputs, attrs)
            return call_checked(g, name, inputs, attrs, eager_error(n, target, args, kwargs))
        except NotImplementedError as e:
            return make_extern(g, n, target, args, kwargs, f"{name}: {e}")
    if getattr(target, "__module__", "") == "ir.functional_helpers":
        return make_extern(g, n, target, args, kwargs, "a mutation, run eagerly on a copy "
                           "(functionalization: see the rewrites)")
    return make_extern(g, n, target, args, kwargs, "not in the op table")


# torch's names for the operands of its pointwise functions, in order:
# torch.mul(x, other=2), and functools.partial(torch.mul, other=2)
_OPERAND_KEYWORDS = ("input", "other")


def _positional(args, kwargs) -> tuple:
    """The operands of an op without a parser, keyword operands put in their place."""
    args = tuple(args)
    if not kwargs:
        return args
    names = _OPERAND_KEYWORDS[len(args):]
    if set(kwargs) - set(names) or list(names[:len(kwargs)]) != [k for k in names if k in kwargs]:
        raise NotImplementedError(f"keyword arguments {dict(kwargs)} are not fused")
    return args + tuple(kwargs[k] for k in names[:len(kwargs)])


def _hashable(x) -> bool:
    try:
        hash(x)
        return True
    except TypeError:
        return False


_NOT_FOLDED = object()


def _fold(n: fx.Node, target, args, kwargs):
    """Evaluate shape queries and pure-Python arithmetic at capture time."""
    flat = pytree.tree_leaves((args, kwargs))
    nodes = [x for x in flat if isinstance(x, Node)]
    if n.op == "call_method" and target in _SHAPE_METHODS:
        pass
    elif n.op == "call_function" and target is builtins.getattr and args[1] in _SHAPE_ATTRS:
        pass
    elif nodes or n.op == "call_module" or not callable(target):
        return _NOT_FOLDED
    elif getattr(target, "__module__", "") in ("_operator", "operator", "builtins", "math"):
        pass
    elif target is torch._assert:  # fx's guard on a specialised Python argument
        pass
    else:
        return _NOT_FOLDED
    m_args, m_kwargs = pytree.tree_map(meta, (args, kwargs))
    fn = getattr(m_args[0], target) if n.op == "call_method" else target
    value = fn(*(m_args[1:] if n.op == "call_method" else m_args), **m_kwargs)
    if isinstance(value, torch.device) and nodes:
        value = nodes[0].device  # meta tensors report "meta"; the real device is guarded
    return _NOT_FOLDED if isinstance(value, torch.Tensor) else value
