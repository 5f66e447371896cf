"""Extern nodes: calls the op table does not know, run by eager torch.

An extern node keeps its call as a template (target, args and kwargs with IR
nodes in place of tensors); its type is learnt by running it on meta tensors
(or, for ops without a meta kernel, on zeros of the real types), and at run
time it is called on the real values. ``explain`` lists each with its reason.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ir.graph import Graph, Node
from ir.types import meta


def make_extern(g: Graph, n: fx.Node, target, args, kwargs, reason: str) -> Node:
    """A node run by eager torch; its type comes from running it on meta tensors
    (or, where an op has no meta kernel, on zeros of the same types)."""
    inputs = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, Node)]
    label = _target_name(n, target)
    attrs = {"target": target, "method": n.op == "call_method", "args": args, "kwargs": kwargs,
             "label": label, "reason": reason}
    try:
        out = _run_on(attrs, meta)
        device = inputs[0].device if inputs else torch.device("cpu")
    except (NotImplementedError, RuntimeError):
        # no meta kernel (or a device move): learn the type from zeros of the real types
        out = _run_on(attrs, lambda x: torch.zeros(x.shape, dtype=x.dtype, device=x.device)
                      if isinstance(x, Node) and x.dtype is not None else x)
        device = out.device if isinstance(out, torch.Tensor) else torch.device("cpu")
    if isinstance(out, torch.Tensor):
        return g.add_node("extern", inputs, attrs, out.shape, out.dtype, device, name=label)
    return g.add_node("extern", inputs, attrs, (), None, inputs[0].device if inputs else "cpu",
                      name=label)


def run_extern(node: Node, values: dict) -> object:
    """Run an extern node on real values (``values`` maps its input nodes)."""
    return _run_on(node.attrs, lambda x: values[x] if isinstance(x, Node) else x)


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
