"""Shared by the real-model tests: the two entry points, comparisons against eager
PyTorch (fp32, and a float64 copy for precision) and the fused-kernel counts.

Every reference is eager PyTorch run on a copy of the same model with the same
weights; nothing here compares our output with our own earlier output.
"""
from __future__ import annotations

import copy

import torch
import torch._dynamo

import fusion
import fusion.dynamo

# the two ways a user runs a model through us
ENTRIES = ("fusion.compile", "torch.compile")

# fp32 against eager fp32: elementwise, relative to the tensor's own scale (gradients of
# different parameters differ by orders of magnitude). Reordered fp32 sums (a Triton
# matmul tile order, a fused reduction) move results by a few ulp per op; through two
# layers, a loss and its backward that stays well under 1e-5 of the scale.
RTOL, ATOL_SCALE = 1e-4, 1e-5
# precision against the float64 copy: our error may not exceed eager fp32's own error by
# more than this factor (plus a floor of a few fp32 ulp of the scale, for tensors eager
# happens to get exact)
BUDGET, FLOOR_ULPS = 4.0, 16


def compile_with(entry: str, model):
    """``model`` compiled through ``entry`` (fusion.compile or torch.compile with our backend)."""
    if entry == "fusion.compile":
        return fusion.compile(model)
    torch._dynamo.reset()
    fusion.dynamo._compiled.clear()
    return torch.compile(model, backend="fusion")


def seeded(make, seed: int = 0):
    """``make()`` under a fixed seed: the same random weights every run."""
    torch.manual_seed(seed)
    return make()


def twins(model: torch.nn.Module):
    """(model, an fp32 eager copy, a float64 eager copy), all with the same weights/buffers."""
    return model, copy.deepcopy(model), copy.deepcopy(model).double()


def to64(x):
    """Floating tensors (in nested containers) to float64; integer tensors untouched."""
    if isinstance(x, torch.Tensor):
        return x.detach().double().requires_grad_(x.requires_grad) if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(to64(v) for v in x)
    if isinstance(x, dict):
        return {k: to64(v) for k, v in x.items()}
    return x


def _err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.detach().double() - ref.detach().double()).abs().max().item() if a.numel() else 0.0


def assert_like_eager(name: str, ours: torch.Tensor, eager: torch.Tensor, ref64: torch.Tensor | None = None):
    """``ours`` equals eager fp32 within fp32 tolerance, and, given the float64 reference, is
    no further from it than ``BUDGET`` times eager's own error (plus a few ulp of the scale).

    The tolerance against eager is relative to the tensor's scale (gradients of different
    parameters differ by orders of magnitude), widened by eager's own error against float64
    where that is known: some quantities are ill-conditioned in fp32 (a bias gradient summed
    from terms that nearly cancel; AdamW's first steps move a parameter by ~lr * sign(grad),
    and a gradient element near zero flips sign with the summation order), and there any
    two fp32 computations differ by about that much. The widening is what the float64 budget
    allows anyway: |ours - eager| <= |ours - ref| + |eager - ref| <= (BUDGET + 1) * eager's error.
    """
    assert ours is not None, f"{name}: ours is None (eager: {None if eager is None else tuple(eager.shape)})"
    assert eager is not None, f"{name}: eager is None"
    assert ours.shape == eager.shape, f"{name}: shape {tuple(ours.shape)} != eager's {tuple(eager.shape)}"
    assert ours.dtype == eager.dtype, f"{name}: dtype {ours.dtype} != eager's {eager.dtype}"
    if not ours.is_floating_point():
        torch.testing.assert_close(ours, eager, rtol=0, atol=0, msg=lambda m: f"{name}\n{m}")
        return
    scale = max(eager.detach().abs().max().item(), 1e-30) if eager.numel() else 1.0
    eager_err = _err(eager, ref64) if ref64 is not None else 0.0
    atol = ATOL_SCALE * scale + (BUDGET + 1) * eager_err
    torch.testing.assert_close(ours.detach(), eager.detach(), rtol=RTOL, atol=atol,
                               msg=lambda m: f"{name} vs eager fp32 (eager's own error vs float64: "
                                             f"{eager_err:.3g})\n{m}")
    if ref64 is not None:
        ulp = torch.finfo(ours.dtype).eps * scale
        ours_err = _err(ours, ref64)
        assert ours_err <= BUDGET * eager_err + FLOOR_ULPS * ulp, (
            f"{name}: max error vs float64 {ours_err:.3g}, eager fp32's {eager_err:.3g} "
            f"(budget {BUDGET}x eager + {FLOOR_ULPS} ulp of the scale {scale:.3g})")


def assert_grads_like_eager(ours: torch.nn.Module, eager: torch.nn.Module, ref64: torch.nn.Module | None = None):
    """Every parameter's gradient as eager's (and within budget of the float64 copy's)."""
    named = list(ours.named_parameters())
    assert named, "the model has no parameters"
    eager_p = dict(eager.named_parameters())
    ref_p = dict(ref64.named_parameters()) if ref64 is not None else {}
    assert list(eager_p) == [n for n, _ in named]
    for name, p in named:
        if eager_p[name].grad is None:
            assert p.grad is None or not p.grad.any(), f"{name}: eager has no gradient, ours is nonzero"
            continue
        ref = ref_p[name].grad if name in ref_p else None
        assert_like_eager(f"grad of {name}", p.grad, eager_p[name].grad, ref)


def assert_state_like_eager(ours: torch.nn.Module, eager: torch.nn.Module, ref64: torch.nn.Module | None = None,
                            what: str = ""):
    """Every parameter and buffer (BatchNorm running stats, num_batches_tracked) as eager's."""
    mine, theirs = ours.state_dict(), eager.state_dict()
    assert list(mine) == list(theirs), f"{what}: state_dict keys differ"
    ref = ref64.state_dict() if ref64 is not None else {}
    for name, value in mine.items():
        assert_like_eager(f"{what} {name}".strip(), value, theirs[name], ref.get(name) if value.is_floating_point()
                          else None)


# ---- fused kernels ----------------------------------------------------------------------
def _variant_sources(kernel) -> list[str]:
    return [v.emitted.source for v in kernel.variants.values()]


def backend_kernels() -> tuple[list[str], list[str]]:
    """(forward, backward) sources of the generated kernels (one per variant, as
    ``fusion.explain`` lists them) that ran in the graphs ``torch.compile(backend="fusion")``
    handed us since ``compile_with`` reset Dynamo (``fusion.dynamo.compiled_graphs()``)."""
    fwd, bwd = [], []
    for graph in fusion.dynamo.compiled_graphs():
        for plan in graph.plans:
            for kernel in plan.kernels.values():
                fwd += _variant_sources(kernel)
            for step in plan.steps:
                for backward in (step.backward.values() if step.kernel is not None else ()):
                    for kernel in backward.plan.kernels.values():
                        bwd += _variant_sources(kernel)
    return fwd, bwd


def fused_kernels(entry: str, compiled, *args, **kwargs) -> tuple[list[str], list[str], str]:
    """(forward sources, backward sources, what was not fused) of the kernels a model compiled
    through ``entry`` runs, after it ran forward and backward. fusion.compile: from
    ``fusion.explain`` on the same call (it runs the model once more: call it after the
    comparisons); torch.compile: from the backend's graphs."""
    if entry == "fusion.compile":
        report = fusion.explain(compiled, *args, **kwargs)
        unfused = "; ".join(f"{op} ({why})" for op, why in report.extern)
        return [k.source for k in report.kernels], [k.source for k in report.backward_kernels], \
            f"not fused: {unfused[:2000]}"
    fwd, bwd = backend_kernels()
    return fwd, bwd, f"{len(fusion.dynamo.compiled_graphs())} Dynamo graphs"


def assert_fused(entry: str, compiled, args: tuple, kwargs: dict | None = None, *, forward: int,
                 backward: int, containing: tuple[str, ...] = ()):
    """At least ``forward``/``backward`` generated kernels, and for each name in
    ``containing`` (an IR op, e.g. "sigmoid") a forward and a backward kernel fusing it."""
    fwd, bwd, what = fused_kernels(entry, compiled, *args, **(kwargs or {}))
    assert len(fwd) >= forward, f"{len(fwd)} forward kernels, expected >= {forward}; {what}"
    assert len(bwd) >= backward, f"{len(bwd)} backward kernels, expected >= {backward}; {what}"
    for name in containing:
        assert any(_computes(src, name) for src in fwd), f"no forward kernel computes {name}; {what}"
        assert any(_computes(src, name) for src in bwd), f"no backward kernel computes {name}'s derivative; {what}"


def _computes(source: str, op: str) -> bool:
    """Whether a generated kernel's docstring (its fused IR ops, one "%3 = op(...)" a line)
    has ``op`` or an op of its family (sigmoid_grad for sigmoid)."""
    doc = source.split("import triton", 1)[0]
    return f"= {op}" in doc
