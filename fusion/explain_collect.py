"""Gather an explain report by running a compiled module once on examples."""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from fusion.matmul_tiles import interpreter_config
from fusion.report import KernelReport, Report


def saved_bytes(fn, *args) -> tuple[object, int]:
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
        out = fn(*args)
    return out, sum(seen.values())


def _tensor_leaves(x):
    return [t for t in pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def collect(compiled, args: tuple, kwargs: dict) -> Report:
    bound = compiled._bind(args, kwargs)
    out, ours_saved = saved_bytes(compiled, *bound)
    if compiled._eager_reason is not None:
        return Report(f"(not captured: {compiled._eager_reason})", "eager", [], [],
                      [("<whole model>", compiled._eager_reason)], [], 0, None)
    plan = compiled._plans[compiled._guard_key(bound)]
    wants_grad = [t for t in _tensor_leaves(out) if t.requires_grad]
    eager_saved = None
    if wants_grad:
        _, eager_saved = saved_bytes(compiled._orig, *bound)
        sources = [t for t in list(bound) + list(compiled.parameters())
                   if isinstance(t, torch.Tensor) and t.requires_grad]
        torch.autograd.grad(wants_grad, sources, [torch.ones_like(t) for t in wants_grad],
                            allow_unused=True)
    kernels, backward, saved = [], [], []
    for g, k in plan.kernels.items():
        kernels += kernel_reports(k)
        for bwd in k.backward_plans.values():
            saved.append((k.variants and next(iter(k.variants.values())).emitted.name or "kernel",
                          [f"%{g.inputs[i].id}" for i in bwd.saved]
                          + [f"%{n.id} ({n.op} result, kept)" for n in getattr(bwd, "kept", ())]))
            for bk in bwd.plan.kernels.values():
                backward += kernel_reports(bk)
    extern = [(n.attrs["label"], n.attrs["reason"]) for n in plan.graph.nodes if n.op == "extern"]
    return Report(str(plan.graph), plan.mode, kernels, backward, extern, saved, ours_saved, eager_saved,
                  rewrites=list(plan.graph.notes))


def kernel_reports(kernel) -> list[KernelReport]:
    """One report per generated variant of a pointwise or matmul kernel."""
    g = kernel.group
    if g.kind == "matmul":
        return [matmul_report(kernel, v) for v in kernel.variants.values()]
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


def matmul_report(kernel, v) -> KernelReport:
    """A matmul-epilogue kernel next to its unfused alternative: torch's matmul
    writing the result, then each epilogue op reading and writing a tensor."""
    g, anchor = kernel.group, kernel.anchor
    # v.outputs: the group's outputs, plus the matmul result where it is kept for backward
    written = sum(_nbytes(o) for o in v.outputs)
    eager = sum(sum(_nbytes(i) for i in n.operands()) + _nbytes(n) for n in g.nodes)
    flops = 2 * anchor.numel * kernel.K + anchor.numel * len(kernel.epilogue)
    cpu = interpreter_config(anchor.shape[-2], anchor.shape[-1], kernel.K)
    config = f"{v.config} on a GPU (autotuned over {len(v.candidates)}); interpreter: " \
             f"BLOCK {cpu.BLOCK_M}x{cpu.BLOCK_N}x{cpu.BLOCK_K}"
    constexprs = dict(v.config.constexprs)
    if "DOT_IN_FP32" in v.emitted.source:
        constexprs["DOT_IN_FP32"] = False  # compiled as the GPU runs it
    return KernelReport(
        v.emitted.name, "matmul", v.emitted.source, v.path,
        [f"%{i.id} {i.name or i.op}: {i.type_str()}" for i in g.inputs],
        [f"%{o.id}: {o.type_str()}" for o in v.outputs],
        sum(_nbytes(i) for i in g.inputs), written, eager, v.example, constexprs,
        flops=flops, config=config, _num_warps=v.config.num_warps, _num_stages=v.config.num_stages)


def _nbytes(n) -> int:
    return n.numel * n.dtype.itemsize if n.dtype is not None else 0
