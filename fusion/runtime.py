"""The runtime: run a plan, with one ``torch.autograd.Function`` per fused kernel launch.

``run_plan`` walks the steps: graph inputs and parameters bind, fused steps
launch their kernel, every other step runs its nodes with the reference
interpreter (``ir.interpret``), so autograd sees those as usual.

A fused step whose inputs need gradients runs through ``FusedKernelFunction``:
its forward asks the step for the ``BackwardPlan`` of the gradients needed
(``fusion.plan``), launches the kernel writing what that plan keeps, and
saves only the inputs the backward reads (``x + y`` saves nothing) and never
a pointwise intermediate (the backward kernel recomputes them). Its backward
runs the backward plan, itself generated kernels (plus ``sum_to`` reductions
by torch for broadcast inputs).
"""
from __future__ import annotations

import functools

import torch

from fusion.plan import Plan, Step
from ir.interpret import eval_node
from ir.ops import OpKind


def run_plan(plan: Plan, inputs: list, params: dict | None = None) -> list:
    """Run ``plan`` on ``inputs`` (one per graph input, in order) and ``params``
    (parameter and buffer values by name); returns the graph's outputs."""
    env: dict = {}
    it = iter(inputs)
    for step in plan.steps:
        g = step.group
        if step.kernel is not None:
            env.update(zip(g.outputs, launch_step(step, [env[i] for i in g.inputs])))
            continue
        for n in g.nodes:
            if n.kind == OpKind.INPUT:
                env[n] = next(it)
            elif n.kind == OpKind.PARAM:
                env[n] = params[n.name]
            else:
                env[n] = eval_node(n, env)
    return [env[o] for o in plan.graph.outputs]


def launch_step(step: Step, inputs: list) -> list:
    """Launch a fused step's kernel, through autograd when some input needs a gradient."""
    if torch.is_grad_enabled():
        # an input from which no gradient reaches an output (it only feeds a comparison) is
        # kept out of autograd's graph: eager gives it no gradient (None), not zeros
        inputs = [t.detach() if isinstance(t, torch.Tensor) and t.requires_grad and not path else t
                  for t, path in zip(inputs, step.grad_paths)]
        if any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
            return list(FusedKernelFunction.apply(step, *inputs))
    return step.kernel(inputs)


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
    """Forward: the fused kernel. Backward: its generated backward plan."""

    @staticmethod
    def forward(ctx, step: Step, *inputs):
        bwd = step.backward_for(tuple(ctx.needs_input_grad[1:]))
        outs = step.kernel(list(inputs), keep=bwd.kept)
        n_out = len(step.group.outputs)
        outs, kept = outs[:n_out], outs[n_out:]
        ctx.bwd = bwd
        ctx.save_for_backward(*[inputs[k] for k in bwd.saved], *kept)
        ctx.mark_non_differentiable(*[o for o, d in zip(outs, bwd.differentiable_outputs) if not d])
        return tuple(outs)

    @staticmethod
    @first_order_only
    def backward(ctx, *grads):
        bwd = ctx.bwd
        grads_in = iter(run_plan(bwd.plan, bwd.inputs(list(ctx.saved_tensors), list(grads))))
        return (None, *[next(grads_in) if need else None for need in bwd.needs])
