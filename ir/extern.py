"""Extern nodes: calls the op table does not know, run by eager torch.

An extern node keeps its call as a template (target, args and kwargs with IR
nodes in place of tensors); its type is learnt by running it on meta tensors,
and at run time it is called on the real values. ``explain`` lists each with
its reason. An op that returns a tuple (``max(dim)``, ``topk``, ``nn.LSTM``)
becomes a node of no dtype whose ``structure`` records each element's type;
``element`` picks one (a ``getitem`` node, or a constant).

Where an op has no meta kernel, two probe runs (zeros, then random values)
must agree on the result's type, and the node is marked ``probed``: the
runtime checks its real result's type (``check_probed``), since a result
shape that depends on the values (``nonzero``) cannot be known from types.
A non-tensor result that needed a probe depends on tensor values (``.item()``,
``bool(t)``): that is data-dependent Python, which capture refuses.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ir.capture import CaptureError, rng_kept
from ir.graph import Graph, Node
from ir.types import meta


class ProbedTypeMismatch(RuntimeError):
    """A probed extern returned a type other than its probes did (data-dependent shape)."""


def make_extern(g: Graph, n: fx.Node, target, args, kwargs, reason: str):
    """A node run by eager torch (or the constant it returns, for results that
    depend only on types), typed by a meta run or by probes."""
    inputs = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, Node)]
    label = _target_name(n, target)
    attrs = {"target": target, "method": n.op == "call_method", "args": args, "kwargs": kwargs,
             "label": label, "reason": reason}
    device = inputs[0].device if inputs else torch.get_default_device()
    with rng_kept():  # a factory (torch.randn(3)) or a probe must not draw from the call's RNG
        try:
            with torch.device("meta") if not inputs else contextlib.nullcontext():
                out = _run_on(attrs, _meta_value)  # a factory on no tensor: typed on meta too
        except (NotImplementedError, RuntimeError):
            out = _probe(attrs, label)
            attrs["probed"] = True
            if not _has_tensor(out):
                raise CaptureError(f"fusion: {label} returns a Python value computed from tensor data "
                                   f"({type(out).__name__}); data-dependent Python cannot be captured. "
                                   "Pass fallback='eager' to run such a model eagerly.") from None
    if isinstance(out, torch.Tensor):
        where = device if out.is_meta else out.device
        return g.add_node("extern", inputs, attrs, out.shape, out.dtype, where, name=label)
    if isinstance(out, (tuple, list)) and _has_tensor(out):
        attrs.update(structure=_structure(out, device), fields=_fields(out))
        return g.add_node("extern", inputs, attrs, (), None, device, name=label)
    return out  # a value computed from types alone (shapes, dtypes: both guarded)


def element(g: Graph, node: Node, key):
    """Element ``key`` (an index, or a field name such as ``values``) of a tuple node."""
    index = node.attrs["fields"].index(key) if isinstance(key, str) else key
    entry = node.attrs["structure"][index]
    if entry[0] == "value":
        return entry[1]
    if entry[0] == "tensor":
        _, shape, dtype, device = entry
        return g.add_node("getitem", (node,), {"index": index}, shape, dtype, device)
    _, sub, fields = entry
    return g.add_node("getitem", (node,), {"index": index, "structure": sub, "fields": fields},
                      (), None, node.device)


def is_tuple_node(x) -> bool:
    return isinstance(x, Node) and x.dtype is None and "structure" in x.attrs


def check_probed(node: Node, value) -> None:
    """Raise ``ProbedTypeMismatch`` when a probed extern's real result has another type."""
    want = _structure(value, node.device) if node.dtype is None else None
    if node.dtype is None:
        ok = want == node.attrs["structure"]
    else:
        ok = isinstance(value, torch.Tensor) and tuple(value.shape) == node.shape and value.dtype == node.dtype
    if not ok:
        raise ProbedTypeMismatch(f"fusion: {node.attrs['label']} returned a result whose shape depends "
                                 "on the input values")


def _structure(out, device) -> tuple:
    entries = []
    for o in out:
        if isinstance(o, torch.Tensor):
            entries.append(("tensor", tuple(o.shape), o.dtype, device if o.is_meta else o.device))
        elif isinstance(o, (tuple, list)):
            entries.append(("tuple", _structure(o, device), _fields(o)))
        else:
            entries.append(("value", o))
    return tuple(entries)


def _fields(out) -> tuple:
    """Field names of a named tuple (``torch.return_types.max``: values, indices)."""
    return tuple(getattr(type(out), "_fields", None) or getattr(type(out), "__match_args__", ()) or ())


def _has_tensor(out) -> bool:
    return any(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(out))


def _meta_value(x):
    """An operand as a meta value: tensors of its type; tuple nodes element by element."""
    if is_tuple_node(x):
        return _rebuild(x.attrs["structure"], lambda shape, dtype, device: torch.empty(
            shape, dtype=dtype, device="meta"))
    return meta(x)


def _rebuild(structure, make) -> tuple:
    return tuple(make(*e[1:]) if e[0] == "tensor" else _rebuild(e[1], make) if e[0] == "tuple"
                 else e[1] for e in structure)


def _probe(attrs, label):
    """The result on zeros and on random values of the operands' types; they must agree."""
    gen = torch.Generator().manual_seed(0)

    def fill(random):
        def make(shape, dtype, device):
            if not random:
                return torch.zeros(shape, dtype=dtype, device=device)
            values = torch.randn(shape, generator=gen) if dtype.is_floating_point else \
                torch.randint(0, 2 if dtype == torch.bool else 3, shape, generator=gen)
            return values.to(device=device, dtype=dtype)
        return lambda x: (_rebuild(x.attrs["structure"], make) if is_tuple_node(x) else
                          make(x.shape, x.dtype, x.device) if isinstance(x, Node) else x)
    if isinstance(attrs["target"], torch.nn.Module):  # its state (running stats) is the call's alone
        attrs = {**attrs, "target": copy.deepcopy(attrs["target"])}
    first, second = _run_on(attrs, fill(False)), _run_on(attrs, fill(True))
    if not _has_tensor(first):
        return first  # a Python value: make_extern refuses it
    if _type_of(first) != _type_of(second):
        raise CaptureError(f"fusion: {label} returns a result whose shape depends on the input values; "
                           "data-dependent shapes cannot be captured. Pass fallback='eager' to run "
                           "such a model eagerly.")
    return first


def _type_of(out):
    if isinstance(out, torch.Tensor):
        return ("tensor", tuple(out.shape), out.dtype)
    if isinstance(out, (tuple, list)):
        return tuple(_type_of(o) for o in out)
    return ("value", out)


def run_extern(node: Node, values: dict) -> object:
    """Run an extern node on real values (``values`` maps its input nodes)."""
    out = _run_on(node.attrs, lambda x: values[x] if isinstance(x, Node) else x)
    if node.attrs.get("probed"):
        check_probed(node, out)
    return out


def _run_on(attrs, convert):
    args, kwargs = pytree.tree_map(convert, (attrs["args"], attrs["kwargs"]),
                                   is_leaf=lambda x: isinstance(x, Node))
    target = attrs["target"]
    if attrs["method"]:
        return getattr(args[0], target)(*args[1:], **kwargs)
    if isinstance(target, torch.nn.Module):
        return _module_on_meta(target, args, kwargs) if _is_meta(args) else target(*args, **kwargs)
    return target(*args, **kwargs)


def _is_meta(args) -> bool:
    return any(isinstance(a, torch.Tensor) and a.is_meta for a in pytree.tree_leaves(args))


def _module_on_meta(mod, args, kwargs):
    # a module's own parameters are real tensors: run a meta copy to learn the output type
    return copy.deepcopy(mod).to("meta")(*args, **kwargs)


def _target_name(n: fx.Node, target) -> str:
    if n.op == "call_method":
        return f"Tensor.{target}"
    if n.op == "call_module":
        return f"{type(target).__name__} ({n.target})"
    mod = getattr(target, "__module__", None) or ""
    return f"{mod.replace('torch._C._nn', 'torch.nn.functional')}.{getattr(target, '__name__', target)}".lstrip(".")
