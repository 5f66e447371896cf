"""The generated kernels compile for an H100 (sm_90) and an A100 (sm_80).

No GPU is needed: ``KernelReport.compile_for`` builds PTX and a cubin with the
attributes the JIT would infer (16-byte aligned pointers, divisibility of
sizes, 1 compiled in), and cuobjdump reads registers and spills back (spills:
the stack frame ptxas puts them in, and STL/LDL in the SASS; cuobjdump's LOCAL
field stays 0 when a kernel spills). Checked: nothing spills; aligned contiguous
fp32/bf16 inputs and outputs move through 16-byte accesses (``ld.global.v4.b32``
/ ``st.global.v4.b32``: four fp32, or eight bf16 packed in pairs); the 64-bit
offset variant (tensors of 2**31 elements and more) runs right in the
interpreter and compiles.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import fusion
from codegen.cache import load_kernel, source_path
from codegen.gpu_report import compile_for
from codegen.layouts import InputLayout
from codegen.pointwise import PointwiseSpec, emit_pointwise
from fusion.layout import plan_layout
from fusion.partition import GroupKind
from ir.graph import Graph
from ir.ops import OPS, OpKind

from helpers import DEVICE, SHORT, op_graph, plan_of, sample

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists(),
    reason="this Triton ships no ptxas")

ARCHS = ("sm_90", "sm_80")


def gated(x, g, b):
    return x * torch.sigmoid(g) + b


def swish(x):
    return x * torch.sigmoid(x)


def mixed(x, y):
    return torch.relu(x) * torch.sigmoid(y) - torch.tanh(x)


# 64 x 256: every size a multiple of 16, as the JIT needs to prove alignment
GRAPHS = {"gated": (gated, [(64, 256), (64, 256), (256,)]), "swish": (swish, [(64, 256)]),
          "mixed": (mixed, [(64, 256), (64, 256)])}


def _reports(graph, dtype):
    fn, shapes = GRAPHS[graph]
    gen = torch.Generator().manual_seed(0)
    args = [sample("real", s, dtype, gen).requires_grad_() for s in shapes]
    report = fusion.explain(fn, *args)
    return report.kernels + report.backward_kernels


def _global_accesses(ptx: str) -> list[str]:
    """The opcode of every global load and store, e.g. ``ld.global.v4.b32``."""
    return re.findall(r"\b((?:ld|st)\.global[\w.]*)", ptx)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=SHORT.get)
@pytest.mark.parametrize("graph", GRAPHS)
def test_chain_kernels_compile_without_spills_and_use_16_byte_accesses(graph, dtype, arch):
    kernels = _reports(graph, dtype)
    assert len(kernels) == 2, "one forward and one backward kernel"
    for k in kernels:
        rep = k.compile_for(arch)
        assert rep.spills == 0 and rep.sass_counts().spill_ops == 0, f"{k.name} spills {rep.spills} bytes on {arch}"
        assert 0 < rep.registers <= 255 and rep.shared_bytes == 0
        accesses = _global_accesses(rep.ptx)
        loads = [a for a in accesses if a.startswith("ld.")]
        stores = [a for a in accesses if a.startswith("st.")]
        assert loads and stores, rep.ptx
        # 1024 elements over 128 threads: 8 per thread, 16 bytes per access in bf16, two in fp32
        assert all(a == "ld.global.v4.b32" for a in loads), f"{k.name}: {sorted(set(loads))}"
        assert all(a == "st.global.v4.b32" for a in stores), f"{k.name}: {sorted(set(stores))}"
        per_tensor = 2 if dtype == torch.float32 else 1
        assert len(stores) == per_tensor * len(k.outputs)
        assert len(loads) == per_tensor * len(k.inputs)


def _op_cases():
    for name, d in OPS.items():
        if d.kind == OpKind.POINTWISE:
            yield pytest.param(name, id=name)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", _op_cases())
def test_every_pointwise_op_compiles_without_spills(name, arch):
    """Each op's Triton expression and helpers compile for the GPU, not only in the
    interpreter (which accepts Python that Triton's compiler does not)."""
    d = OPS[name]
    gen = torch.Generator().manual_seed(1)
    xs = [sample(dom, (64, 256), torch.float32, gen) for dom in d.operand_domains()]
    for attrs in d.sample_attrs(xs[0].shape):
        plan = plan_of(op_graph(name, xs, attrs))
        (kernel,) = plan.kernels.values()
        kernel(xs)
        for variant in kernel.variants.values():
            rep = compile_for(variant.path, variant.emitted.name, variant.example, arch)
            assert rep.spills == 0 and rep.sass_counts().spill_ops == 0, f"{name}({attrs}) spills on {arch}"
            if torch.float64 not in (t for kind, t in variant.example if kind == "ptr"):
                # the numerics policy: fp32 arithmetic only where no tensor is fp64
                assert not re.search(r"\.f64\b", rep.ptx), f"{name}({attrs}): fp64 in an fp32 kernel"


# ---- 64-bit offsets ---------------------------------------------------------------------------

def _gated_graph(x, g, b):
    gr = Graph()
    nx, ng, nb = (gr.add_node("input", (), {}, t.shape, t.dtype, t.device, name=n)
                  for t, n in ((x, "x"), (g, "g"), (b, "b")))
    gr.outputs = [gr.call("add", gr.call("mul", nx, gr.call("sigmoid", ng)), nb)]
    return gr


def _int64_variant(x, g, b):
    """The gated group's kernel emitted with 64-bit offsets, its layout and its inputs
    in the kernel's order (small tensors, so it can run)."""
    plan = plan_of(_gated_graph(x, g, b))
    (group,) = [grp for grp in plan.groups if grp.kind == GroupKind.POINTWISE]
    tensors = [{"x": x, "g": g, "b": b}[node.name] for node in group.inputs]
    layout = dataclasses.replace(plan_layout(group.shape, tensors), int64=True)
    spec = PointwiseSpec(tuple(group.nodes), tuple(group.inputs), layout.kinds, tuple(group.outputs),
                         len(layout.sizes), True)
    return emit_pointwise(spec), layout, tensors


def test_int64_offsets_run_correctly_in_the_interpreter():
    gen = torch.Generator().manual_seed(2)
    x = sample("real", (37, 53), torch.float32, gen, layout="transposed")
    g = sample("real", (37, 53), torch.float32, gen)
    b = sample("real", (53,), torch.float32, gen)
    emitted, layout, tensors = _int64_variant(x, g, b)
    assert "pid = tl.program_id(axis=0).to(tl.int64)" in emitted.source
    assert layout.kinds.count(InputLayout.STRIDED) == 2  # x transposed, b broadcast
    args = []
    for t, kind, strides in zip(tensors, layout.kinds, layout.strides):
        args += [t, *(strides if kind == InputLayout.STRIDED else ())]
    out = torch.empty(37, 53, device=DEVICE)
    load_kernel(emitted.name, emitted.source)[(2,)](*args, out, *layout.sizes[1:], out.numel(),
                                                      BLOCK_SIZE=1024)
    torch.testing.assert_close(out, gated(x, g, b))


def test_int64_offsets_are_chosen_past_int32_and_run(monkeypatch):
    """The runtime picks the 64-bit variant when an offset could pass 2**31 - 1 (a lowered
    threshold stands in for a tensor the CPU cannot allocate) and its results are right."""
    import fusion.layout
    monkeypatch.setattr(fusion.layout, "INT32_MAX", 100)
    x, g = torch.randn(37, 53, device=DEVICE), torch.randn(53, 37, device=DEVICE).t()
    b = torch.randn(53, device=DEVICE)
    (kernel,) = fusion.explain(gated, x, g, b).kernels
    assert "tl.program_id(axis=0).to(tl.int64)" in kernel.source
    torch.testing.assert_close(fusion.compile(gated)(x, g, b), gated(x, g, b))


def test_int64_kernel_compiles_for_sm90_with_64_bit_sizes():
    gen = torch.Generator().manual_seed(3)
    x, g = (sample("real", (64, 256), torch.float32, gen) for _ in range(2))
    b = sample("real", (256,), torch.float32, gen)
    emitted, layout, tensors = _int64_variant(x, g, b)
    load_kernel(emitted.name, emitted.source)  # writes the file
    rows = 2**23 + 16  # 2**31 + 4096 elements, 256 columns
    example = []
    for t, kind in zip(tensors, layout.kinds):
        example += [("ptr", t.dtype)] + ([("int", 0), ("int", 1)] if kind == InputLayout.STRIDED else [])
    example += [("ptr", torch.float32), ("int", 256), ("int", rows * 256)]
    rep = compile_for(str(source_path(emitted.name, emitted.source)), emitted.name, example, "sm_90")
    assert rep.spills == 0
    # the bound check compares 64-bit offsets with a 64-bit element count
    assert "setp.lt.s64" in rep.ptx and "setp.lt.s32" not in rep.ptx
