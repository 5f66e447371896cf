"""What a functionalized graph's caller does after running it: the write-backs.

Kept apart from ``ir.functionalize`` (whose fake-tensor analysis costs ~0.15 s to
import) so that the runtime can apply a ``Functionalized`` result cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.multiprocessing.reductions import StorageWeakRef


@dataclass
class Functionalized:
    """The result of ``functionalize``.

    ``gm`` has no mutation; its placeholders are the original ones and its outputs are
    the original output (when a tuple, its elements) followed by one extra output per
    entry of ``writebacks``: ``("input", placeholder_index)`` or ``("attr", qualname)``,
    where the value must be ``copy_``-ed after the call, in grad mode
    ``writeback_grad[i]`` (None: the caller's mode; a bool: the graph set that mode
    around the write). ``output_aliases`` has, per leaf of the original output (pytree
    order), None or ``(kind, where, view)``: eager returns the caller's tensor itself
    (``view`` None) or ``view(that tensor)``. ``modules`` are the submodules whose
    attributes (``inplace``, ``p``, ``training``) the rewrite baked in: guard them.
    """
    gm: fx.GraphModule
    writebacks: list = field(default_factory=list)
    output_aliases: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    writeback_grad: list = field(default_factory=list)
    modules: dict = field(default_factory=dict)
    output_is_tuple: bool = True

    def split_outputs(self, values):
        """(original output structure, extra write-back values) from ``gm``'s result."""
        k = len(self.writebacks)
        if not k:
            return values, ()
        values = tuple(values)
        original = values[:-k] if self.output_is_tuple else values[0]
        return original, values[-k:]


def write_back(f: Functionalized, root, args, result):
    """After ``f.gm`` gave ``result``: copy the write-backs into the caller's tensors
    (inputs in ``args``, attributes on ``root``) and return eager's output structure,
    aliased outputs being the caller's tensors (or views of them)."""
    original, extras = f.split_outputs(result)
    for (kind, where), value, grad in zip(f.writebacks, extras, f.writeback_grad):
        target = args[where] if kind == "input" else _fetch(root, where)
        # eager records its in-place ops in autograd (unless the graph turned grad off)
        with torch.set_grad_enabled(torch.is_grad_enabled() if grad is None else grad):
            target.copy_(value)
    if not any(f.output_aliases):
        return original
    leaves, spec = pytree.tree_flatten(original)
    for k, alias in enumerate(f.output_aliases):
        if alias is not None:
            kind, where, view = alias
            t = args[where] if kind == "input" else _fetch(root, where)
            leaves[k] = t if view is None else view(t)
    return pytree.tree_unflatten(leaves, spec)


def inputs_alias(args) -> bool:
    """True when two tensors among ``args`` (nested too) share a storage: a graph with
    write-backs was analysed with distinct inputs and must then run eagerly."""
    seen = set()
    for t in pytree.tree_leaves(args):
        if isinstance(t, torch.Tensor):
            key = StorageWeakRef(t.untyped_storage())
            if key in seen:
                return True
            seen.add(key)
    return False


def _fetch(root, qualname: str):
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
