"""The runtime: run a plan, with one ``torch.autograd.Function`` per fused kernel launch.

``run_plan`` runs a plan's generated runner: straight-line Python, one line per
step (as torch.fx's codegen writes ``gm.code``), made once per plan by
``plan_source``: graph inputs and parameters bind to locals, fused steps launch
their kernel, every other node calls its eager torch reference, so autograd
sees those as usual. No dict of values and no loop on the hot path.

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
import itertools
import linecache
import weakref

import torch

from fusion.plan import Plan, Step
from ir.graph import Node, format_node
from ir.interpret import eval_node
from ir.ops import OPS, OpKind


def run_plan(plan: Plan, inputs: list, params: dict | None = None) -> list:
    """Run ``plan`` on ``inputs`` (one per graph input, in order) and ``params``
    (parameter and buffer values by name); returns the graph's outputs."""
    return runner_for(plan)(inputs, params)


def runner_for(plan: Plan):
    """The plan's generated runner, ``run(inputs, params) -> outputs`` (made once)."""
    runner = _RUNNERS.get(plan)
    if runner is None:
        runner = _RUNNERS[plan] = compile_plan(plan)
    return runner


_RUNNERS: "weakref.WeakKeyDictionary[Plan, object]" = weakref.WeakKeyDictionary()


def compile_plan(plan: Plan):
    """The plan's runner, ``run(inputs, params) -> outputs``, from ``plan_source``."""
    source, scope = plan_source(plan)
    filename = f"<fusion plan {next(_PLAN_IDS)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # tracebacks
    exec(compile(source, filename, "exec"), scope)
    return scope["run"]


def plan_source(plan: Plan) -> tuple[str, dict]:
    """The runner's source and the names it reads (kernels, references, constants)."""
    scope: dict = {"eval_node": eval_node, "launch_step": launch_step}
    name: dict[Node, str] = {}
    lines = ["def run(inputs, params):"]
    inputs = [n for n in plan.graph.nodes if n.kind == OpKind.INPUT]
    if inputs:
        lines.append(f"    {', '.join(_var(n, name) for n in inputs)}, = inputs")
    for k, step in enumerate(plan.steps):
        g = step.group
        if step.kernel is not None:
            scope[f"step{k}"] = step
            outs = ", ".join(_var(o, name) for o in g.outputs)
            lines.append(f"    {outs}, = launch_step(step{k}, [{', '.join(name[i] for i in g.inputs)}])"
                         f"  # {step.kernel.family} kernel")
            continue
        for n in g.nodes:
            if n.kind == OpKind.INPUT:
                continue
            if n.kind == OpKind.PARAM:
                lines.append(f"    {_var(n, name)} = params[{n.name!r}]")
            elif n.kind in (OpKind.EXTERN, OpKind.ELEMENT) or OPS[n.op].eager is None:
                scope[f"node{n.id}"] = n
                env = ", ".join(f"node{i.id}: {name[i]}" for i in n.operands())
                scope.update({f"node{i.id}": i for i in n.operands()})
                lines.append(f"    {_var(n, name)} = eval_node(node{n.id}, {{{env}}})  # {format_node(n)}")
            else:
                eager = OPS[n.op].eager
                scope[f"eager{n.id}"] = functools.partial(eager, **n.attrs) if n.attrs else eager
                args = []
                for i in n.inputs:
                    if isinstance(i, Node):
                        args.append(name[i])
                    else:
                        scope[f"const{n.id}_{len(args)}"] = i
                        args.append(f"const{n.id}_{len(args)}")
                lines.append(f"    {_var(n, name)} = eager{n.id}({', '.join(args)})  # {format_node(n)}")
    lines.append(f"    return [{', '.join(name[o] for o in plan.graph.outputs)}]")
    return "\n".join(lines) + "\n", scope


def _var(n: Node, name: dict) -> str:
    name[n] = f"v{n.id}"
    return name[n]


_PLAN_IDS = itertools.count()


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
        # an output no gradient reaches gets None, not zeros: an input whose gradient comes
        # only from such outputs then gets None too, as in eager (an optimizer skips it)
        ctx.set_materialize_grads(False)
        ctx.outs = [(o.shape, o.dtype, o.device) for o in outs]
        return tuple(outs)

    @staticmethod
    @first_order_only
    def backward(ctx, *grads):
        bwd = ctx.bwd
        live = [need and any(grads[j] is not None for j in bwd.reaches[k]) for k, need in enumerate(bwd.needs)]
        if not any(live):
            return (None,) * (1 + len(bwd.needs))
        grads = [torch.zeros(*meta[:1], dtype=meta[1], device=meta[2]) if g is None else g
                 for g, meta in zip(grads, ctx.outs)]
        computed = iter(run_plan(bwd.plan, bwd.inputs(list(ctx.saved_tensors), grads)))  # one per need
        given = [next(computed) if need else None for need in bwd.needs]
        return (None, *[g if alive else None for g, alive in zip(given, live)])
