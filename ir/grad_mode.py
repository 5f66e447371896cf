"""Grad mode inside a captured graph: what ``no_grad`` regions compute gets no gradient.

Dynamo records ``with torch.no_grad():`` (and ``set_grad_enabled``, ``enable_grad``) as
calls to ``torch._C._set_grad_enabled`` in the graph. Lowering (``ir.lower``) follows
them with a ``GradMode`` and wraps what such a region makes in ``detach`` views.
"""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from ir.capture import NotLowered
from ir.extern import is_tuple_node
from ir.graph import Graph, Node

# Dynamo's spelling of ``no_grad``/``enable_grad``/``set_grad_enabled`` regions (and of
# ``torch.set_grad_enabled(False)`` called as a function)
SET_GRAD_ENABLED = (torch._C._set_grad_enabled, torch.set_grad_enabled)


class GradMode:
    """Grad mode inside the graph. What a region with gradients off computes gets no
    gradient: each value it makes is wrapped in ``detach`` (as eager, where those tensors
    have ``requires_grad=False``; values it passes through unchanged keep theirs). The
    plan's key holds the grad mode of the call, so the graph starts in it."""

    def __init__(self):
        self.entry = self.enabled = torch.is_grad_enabled()
        self.off_tuples: set = set()  # tuple-valued externs made with gradients off
        self.leaves: set = set()      # inputs and parameters that require grad (the plan's key holds it)
        self._reached: dict = {}

    def set(self, enabled) -> bool:
        if not isinstance(enabled, bool):
            raise NotLowered(f"fusion: grad mode set to a traced value {enabled!r}")
        if enabled and not self.entry:
            raise NotLowered("fusion: gradients enabled inside a call made without them (enable_grad "
                             "under no_grad) are not recorded by fused kernels")
        self.enabled = enabled
        return enabled

    def reached(self, v: Node) -> bool:
        """Whether a gradient could flow into ``v`` from an input or parameter needing one."""
        def operands(n):
            return [i for i in n.inputs if isinstance(i, Node) and i.op != "detach"]
        stack = [v]  # iterative: a model's graph is deeper than Python's recursion limit
        while stack:
            n = stack[-1]
            if n in self._reached:
                stack.pop()
                continue
            pending = [i for i in operands(n) if i not in self._reached]
            if pending:
                stack.extend(pending)
                continue
            self._reached[n] = n in self.leaves or any(self._reached[i] for i in operands(n))
            stack.pop()
        return self._reached[v]

    def detach_new(self, g: Graph, value, first: int):
        """``value`` with the tensors made since node ``first`` with gradients off detached
        (an element taken later from a tuple made then counts as made then)."""
        def detach(v):
            if not isinstance(v, Node) or v.id < first:
                return v
            if is_tuple_node(v):
                if not self.enabled:
                    self.off_tuples.add(v)
                return v
            if v.op == "cast" and v.inputs[0].dtype == v.dtype:
                return v  # x.float(), x.to(x.dtype): eager returns x itself
            off = not self.enabled or (v.op == "getitem" and v.inputs[0] in self.off_tuples)
            # nothing to cut where no gradient can flow (rotary tables from buffers): the
            # detach, a torch view, would split the kernel around it
            return g.call("detach", v) if off and v.dtype.is_floating_point and self.reached(v) else v
        return pytree.tree_map(detach, value)
