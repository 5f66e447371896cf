"""Autograd for fused kernels: one ``torch.autograd.Function`` per kernel launch.

Forward saves only the group inputs that its backward reads (often fewer than
all of them: ``x + y`` saves nothing) and never a pointwise intermediate: the
backward kernel recomputes them. A matmul group may keep its matmul result
when recomputing it would cost more (``MatmulKernel.keep_for_backward``). The
backward is the group's reverse-mode graph from the op table's rules,
compiled by the same pipeline into ONE pointwise kernel (plus ``sum_to``
reductions, run by torch, for inputs that were broadcast); for a matmul group
that kernel is a matmul kernel whose epilogue is the gradient w.r.t. the
matmul result (or a pointwise one, from the kept result), and the operand
gradients are matmuls.
"""
from __future__ import annotations

import functools

import torch

from ir.autodiff import backward_graph, differentiable
from ir.ops import OPS


class BackwardPlan:
    """The compiled backward of one group for one pattern of needed gradients."""

    def __init__(self, kernel, needs: tuple):
        from fusion.plan import Plan
        g = kernel.group
        # An input with no differentiable path to an output gets None, as in eager (not
        # zeros); an output reached from no input needing a gradient is non-differentiable.
        self.needs = tuple(need and _reaches(g, {x}) & set(g.outputs) != set()
                           for x, need in zip(g.inputs, needs))
        reached = _reaches(g, {x for x, need in zip(g.inputs, needs) if need})
        self.differentiable_outputs = [differentiable(o) and o in reached for o in g.outputs]
        # values the kernel can keep instead of the backward recomputing them
        # (a matmul result with a large K, see fusion.matmul_kernel); none for pointwise
        keep = tuple(getattr(kernel, "keep_for_backward", ()))
        graph = backward_graph(g.nodes, g.inputs, g.outputs, self.needs, saved=keep)
        self.plan = Plan(graph, kernel.mode, role="backward")
        # which forward inputs and kept values the backward reads: only those are saved
        used = {i for grp in self.plan.groups for i in grp.inputs} | set(self.plan.graph.outputs)
        ins = self.plan.graph.inputs
        self.saved = [k for k in range(len(g.inputs)) if ins[k] in used]
        self.n_inputs = len(g.inputs)
        self.n_keep = len(keep)
        self.kept_slots = [k for k in range(len(keep)) if ins[len(g.inputs) + k] in used]
        self.kept = tuple(keep[k] for k in self.kept_slots)  # the forward kernel writes these
        self.grad_outputs = [k for k, o in enumerate(g.outputs) if differentiable(o)]

    def run(self, saved: list, grads: list) -> list:
        """``saved``: the saved inputs, then the kept values, as ``FusedKernelFunction`` saves them."""
        inputs = [None] * self.n_inputs
        for k, t in zip(self.saved, saved):
            inputs[k] = t
        kept = [None] * self.n_keep
        for k, t in zip(self.kept_slots, saved[len(self.saved):]):
            kept[k] = t
        return self.plan.run(inputs + kept + [grads[k] for k in self.grad_outputs])


def _reaches(group, sources: set) -> set:
    """The group values a gradient can flow to from ``sources`` (forward direction):
    only through differentiable ops and float operands."""
    reached = set(sources)
    for n in group.nodes:
        if OPS[n.op].differentiable and any(i in reached and differentiable(i) for i in n.operands()):
            reached.add(n)
    return reached


DOUBLE_BACKWARD = (b"fusion: double backward through a fused kernel is not supported: its backward "
                   b"is a generated kernel with no derivative of its own. Compute higher-order "
                   b"gradients with the uncompiled model.")


def first_order_only(backward):
    """torch's ``once_differentiable``, raising our message when a gradient of the
    gradient is asked for. Unlike it, the results are marked whenever the graph is
    being recorded (``create_graph=True``), even when the incoming gradients are
    constants: otherwise the second backward fails with an unrelated "does not
    require grad" error."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            outs = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return outs
        marked = [None if t is None else t.detach().requires_grad_(t.is_floating_point())
                  for t in outs]
        return torch._C._functions.DelayedError(DOUBLE_BACKWARD, len(marked))(*marked)
    return wrapper


class FusedKernelFunction(torch.autograd.Function):
    """Forward: the fused kernel. Backward: its generated backward kernel."""

    @staticmethod
    def forward(ctx, kernel, *inputs):
        needs = tuple(ctx.needs_input_grad[1:])
        bwd = kernel.backward_plan(needs)
        outs = kernel(list(inputs), keep=bwd.kept) if bwd.kept else kernel(list(inputs))
        outs, kept = outs[:len(kernel.group.outputs)], outs[len(kernel.group.outputs):]
        ctx.bwd = bwd
        ctx.save_for_backward(*[inputs[k] for k in bwd.saved], *kept)
        ctx.mark_non_differentiable(*[o for o, d in zip(outs, bwd.differentiable_outputs) if not d])
        return tuple(outs)

    @staticmethod
    @first_order_only
    def backward(ctx, *grads):
        bwd = ctx.bwd
        grads_in = iter(bwd.run(list(ctx.saved_tensors), list(grads)))
        return (None, *[next(grads_in) if need else None for need in bwd.needs])
