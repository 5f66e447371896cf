"""Gather an explain report by running a compiled module once on examples."""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from fusion.report import KernelReport, Report


def saved_bytes(fn, *args) -> tuple[object, int]:
    """Run ``fn`` and count the bytes autograd saves for backward (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.numel():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, sum(seen.values())


def _tensor_leaves(x):
    return [t for t in pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def collect(compiled, args: tuple, kwargs: dict) -> Report:
    if compiled._gm is None:
        return Report(f"(not captured: {compiled._eager_reason})", "eager", [], [],
                      [("<whole model>", compiled._eager_reason)], [], 0, None)
    bound = compiled._bind(args, kwargs)
    out, ours_saved = saved_bytes(lambda: compiled(*bound))
    plan = compiled._plans[compiled._guard_key(bound)]
    wants_grad = [t for t in _tensor_leaves(out) if t.requires_grad]
    eager_saved = None
    if wants_grad:
        _, eager_saved = saved_bytes(lambda: compiled._orig(*bound))
        sources = [t for t in list(bound) + list(compiled.parameters())
                   if isinstance(t, torch.Tensor) and t.requires_grad]
        torch.autograd.grad(wants_grad, sources, [torch.ones_like(t) for t in wants_grad],
                            allow_unused=True)
    kernels, backward, saved = [], [], []
    for g, k in plan.kernels.items():
        kernels += kernel_reports(k)
        for bwd in k.backward_plans.values():
            saved.append((k.variants and next(iter(k.variants.values())).emitted.name or "kernel",
                          [f"%{g.inputs[i].id}" for i in bwd.saved]))
            for bk in bwd.plan.kernels.values():
                backward += kernel_reports(bk)
    extern = [(n.attrs["label"], n.attrs["reason"]) for n in plan.graph.nodes if n.op == "extern"]
    return Report(str(plan.graph), plan.mode, kernels, backward, extern, saved, ours_saved, eager_saved,
                  rewrites=list(plan.graph.notes))


def kernel_reports(kernel) -> list[KernelReport]:
    """One report per generated variant of a pointwise kernel."""
    g = kernel.group
    out = []
    for v in kernel.variants.values():
        read = sum(_nbytes(i) for i in g.inputs)
        written = sum(_nbytes(o) for o in g.outputs)
        eager = sum(sum(_nbytes(i) for i in n.operands()) + _nbytes(n) for n in g.nodes)
        out.append(KernelReport(
            v.emitted.name, "pointwise", v.emitted.source, v.path,
            [f"%{i.id} {i.name or i.op}: {i.type_str()}" for i in g.inputs],
            [f"%{o.id}: {o.type_str()}" for o in g.outputs],
            read, written, eager, v.example, {"BLOCK_SIZE": 1024}))
    return out


def _nbytes(n) -> int:
    return n.numel * n.dtype.itemsize if n.dtype is not None else 0
