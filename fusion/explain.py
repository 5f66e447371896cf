"""``fusion.explain``: compile, run once, and report what was captured, fused,
generated and left to torch (``fusion.report`` holds the report's shape)."""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from codegen.matmul import emit_matmul
from codegen.pointwise import emit_pointwise
from fusion.api import CompiledModule
from fusion.api import compile as compile_model
from fusion.matmul_tiles import interpreter_config
from fusion.modes import Mode
from fusion.report import KernelReport, Report
from ir.graph import format_value
from ir.ops import OpKind


def explain(model, *example_inputs, **example_kwargs) -> Report:
    """Compile ``model``, run it once on the examples, and report what happened.

    When an input or parameter requires grad, a backward pass is run too
    (with ``torch.autograd.grad``: nothing accumulates into ``.grad``) so the
    backward kernels are listed.
    """
    compiled = model if isinstance(model, CompiledModule) else compile_model(model)
    args, kwargs = example_inputs, example_kwargs
    out, ours_saved = saved_bytes(compiled, *args, **kwargs)
    plans = [compiled.plan_for(*args, **kwargs)] if not compiled.regions else compiled.plans
    reason = compiled.eager_reason or (None if all(plans) else
                                       "this call's signature runs eagerly (the recompile limit)")
    if reason is not None:
        return Report(f"(not captured: {reason})", Mode.EAGER, [], [], [("<whole model>", reason)],
                      [], 0, None, capture=compiled.capture, eager_reason=reason)
    wants_grad = [t for t in _tensor_leaves(out) if t.requires_grad]
    eager_saved = None
    if wants_grad:
        _, eager_saved = saved_bytes(compiled.original, *args, **kwargs)
        torch.autograd.grad(wants_grad, _autograd_leaves(wants_grad),
                            [torch.ones_like(t) for t in wants_grad], allow_unused=True)
    kernels, backward, saved = [], [], []
    for step in [s for plan in plans for s in plan.steps if s.kernel is not None]:
        kernels += kernel_reports(step.kernel)
        for bwd in step.backward.values():
            name = next((v.emitted.name for v in step.kernel.variants.values()), "kernel")
            saved.append((name, [f"%{step.group.inputs[i].id}" for i in bwd.saved]
                          + [f"%{n.id} ({n.op} result, kept)" for n in bwd.kept]))
            for bk in bwd.plan.kernels.values():
                backward += kernel_reports(bk)
    extern = [(n.attrs["label"], n.attrs["reason"]) for plan in plans for n in plan.graph.nodes
              if n.kind == OpKind.EXTERN]
    graph = "\n\n".join(str(p.graph) if len(plans) == 1 else f"-- graph {k} --\n{p.graph}"
                         for k, p in enumerate(plans))
    return Report(graph, plans[0].mode if plans else Mode.EAGER, kernels, backward, extern, saved,
                  ours_saved, eager_saved, rewrites=[n for p in plans for n in p.graph.notes],
                  capture=compiled.capture, graph_breaks=_graph_breaks(compiled, args, kwargs))


def _graph_breaks(compiled, args, kwargs) -> list[str]:
    """Dynamo's reasons for each graph break, where breaks run eagerly (re-traced to ask)."""
    if "graph breaks" not in compiled.capture:
        return []
    import torch._dynamo
    found = torch._dynamo.explain(compiled.original)(*args, **kwargs)
    return [str(getattr(r, "reason", r)).strip().splitlines()[0] for r in found.break_reasons]


def saved_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn`` and count the bytes autograd saves for backward (distinct storages).

    A module's own parameters and buffers are not counted: they stay alive for the
    whole step whether backward holds them or not (a matmul kernel that recomputes
    its result in backward holds the weight instead of the M x N result).
    """
    seen: dict[int, int] = {}
    owned = set()
    if isinstance(fn, torch.nn.Module):
        owned = {t.untyped_storage().data_ptr() for t in [*fn.parameters(), *fn.buffers()]}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.numel() and t.untyped_storage().data_ptr() not in owned:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return out, sum(seen.values())


def _autograd_leaves(outputs: list) -> list:
    """The leaf tensors gradients of ``outputs`` reach (inputs, parameters, closures' tensors)."""
    leaves, seen = {}, set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    for t in outputs:
        if t.grad_fn is None and t.requires_grad:
            leaves[id(t)] = t
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)  # AccumulateGrad: the leaf it accumulates into
        if variable is not None:
            leaves[id(variable)] = variable
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return list(leaves.values())


def _tensor_leaves(x) -> list:
    return [t for t in pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def kernel_reports(kernel) -> list[KernelReport]:
    """One report per generated variant of a pointwise or matmul kernel."""
    if kernel.family == "matmul":
        return [matmul_report(kernel, v) for v in kernel.variants.values()]
    g = kernel.group
    out = []
    for v in kernel.variants.values():
        read = sum(_nbytes(i) for i in g.inputs)
        written = sum(_nbytes(o) for o in g.outputs)
        eager = sum(sum(_nbytes(i) for i in n.operands()) + _nbytes(n) for n in g.nodes)
        out.append(KernelReport(
            v.emitted.name, "pointwise", v.emitted.source, v.path,
            [format_value(i) for i in g.inputs], [f"%{o.id}: {o.type_str()}" for o in g.outputs],
            read, written, eager, v.example, {"BLOCK_SIZE": 1024}, elements=kernel.n,
            moved=_moved(list(g.inputs) + list(g.outputs)),
            reference_source=emit_pointwise(v.spec, reference=True).source if v.spec else ""))
    return out


def matmul_report(kernel, v) -> KernelReport:
    """A matmul-epilogue kernel next to its unfused alternative: torch's matmul
    writing the result, then each epilogue op reading and writing a tensor."""
    g, anchor = kernel.group, kernel.anchor
    # v.outputs: the group's outputs, plus the matmul result where it is kept for backward
    written = sum(_nbytes(o) for o in v.outputs)
    eager = sum(sum(_nbytes(i) for i in n.operands()) + _nbytes(n) for n in g.nodes)
    flops = 2 * anchor.numel * kernel.K + anchor.numel * len(kernel.epilogue)
    cpu = interpreter_config(anchor.shape[-2], anchor.shape[-1], kernel.K)
    config = f"{v.config} on a GPU (the first of {len(v.candidates)} candidates that does not spill); " \
             f"interpreter: BLOCK {cpu.BLOCK_M}x{cpu.BLOCK_N}x{cpu.BLOCK_K}"
    reference = emit_matmul(v.spec, kernel.a, kernel.b, kernel.b_transposed, reference=True) if v.spec else None
    return KernelReport(
        v.emitted.name, "matmul", v.emitted.source, v.path,
        [format_value(i) for i in g.inputs], [f"%{o.id}: {o.type_str()}" for o in v.outputs],
        sum(_nbytes(i) for i in g.inputs), written, eager, v.example, dict(v.config.constexprs),
        flops=flops, config=config, _num_warps=v.config.num_warps, _num_stages=v.config.num_stages,
        elements=anchor.numel, moved=_moved(list(g.inputs) + list(v.outputs)), K=kernel.K,
        candidates=tuple(v.candidates),
        reference_source=reference.source if reference else "")


def _nbytes(n) -> int:
    return n.numel * n.dtype.itemsize if n.dtype is not None else 0


def _moved(values) -> tuple:
    return tuple((n.numel, n.dtype.itemsize) for n in values if n.dtype is not None)
