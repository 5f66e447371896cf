"""Every matmul-epilogue kernel compiles for an H100 (sm_90) and an A100
(sm_80) without a GPU, with the tile config the GPU heuristic picks.

Tensor cores: fp16, bf16 and fp32 with tf32 use ``wgmma`` on sm_90 and
``mma.sync`` on sm_80. fp64 uses ``mma.sync`` (DMMA) on both. fp32 without
tf32 (torch's default, ``torch.backends.cuda.matmul.allow_tf32 = False``) is
computed on FMA units, as cuBLAS does for it: no ``mma`` at all. Nothing spills
(the stack frame ptxas puts spills in, and STL/LDL in the SASS).
"""
from __future__ import annotations

import pytest
import torch

import fusion
from fusion.explain import matmul_report
from fusion.matmul_kernel import MatmulKernel

from examples_models import BinaryClassifier, gating

pytestmark = pytest.mark.cpu_only  # CPU tensors; compiles for sm_90/sm_80 without a GPU

ARCHS = ("sm_90", "sm_80")


def gating_heads(q, k):
    scores = q @ k.transpose(-2, -1)
    return scores * torch.sigmoid(scores)


def lstm_gate(x, h, W, U, b):
    return torch.sigmoid(x @ W + h @ U + b)


def matmul_reports(model, *inputs, precision=None):
    """Reports of the forward and backward matmul kernels of ``model`` (run once, by
    explain); ``precision`` rebuilds each forward kernel for that tl.dot precision."""
    compiled = fusion.compile(model)
    report = fusion.explain(compiled, *inputs)
    if precision is None:
        return [k for k in report.kernels + report.backward_kernels if k.kind == "matmul"]
    plan = compiled.plans[0]
    kernels = [k for k in plan.kernels.values() if isinstance(k, MatmulKernel)]
    return [matmul_report(k, k.variant_for(layout, precision=precision))
            for k in kernels for layout in k.layouts.values()]


def compile_all(reports, expect):
    """Compile every report for both archs; ``expect[arch]``: the instruction that must be
    in the PTX (None: no mma at all). Returns the GpuCompileReports for the message."""
    assert reports
    results = []
    for r in reports:
        for arch in ARCHS:
            c = r.compile_for(arch)
            results.append((r.name, arch, c.registers, c.spills))
            assert c.spills == 0 and c.sass_counts().spill_ops == 0, f"{r.name} spills on {arch}: {c.spills} bytes"
            if expect[arch] is None:
                assert c.count("mma") == 0, f"{r.name} on {arch}: fp32 without tf32 is FMA"
            else:
                assert c.count(expect[arch]) > 0, f"{r.name} on {arch}: no {expect[arch]}\n{r.config}"
    return results


TENSOR_CORES = {"sm_90": "wgmma.mma_async", "sm_80": "mma.sync"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_attention_gating_forward_and_backward_use_tensor_cores(dtype):
    # 256 x 256 scores, head dim 64: tiles as on a GPU
    q = torch.randn(256, 64, dtype=dtype).requires_grad_()
    k = torch.randn(256, 64, dtype=dtype)
    reports = matmul_reports(gating, q, k)
    assert [r.name for r in reports] == ["matmul_sigmoid_mul", "matmul_sigmoid_mul_sigmoid_grad_add"]
    assert "BLOCK 128x64x64, GROUP_M 8, 4 warps" in reports[0].config
    compile_all(reports, TENSOR_CORES)


def test_fp32_with_tf32_uses_tensor_cores():
    q, k = torch.randn(256, 64), torch.randn(256, 64)
    compile_all(matmul_reports(gating, q, k, precision="tf32"), TENSOR_CORES)


def test_fp32_without_tf32_is_fma_and_does_not_spill():
    q, k = torch.randn(256, 64), torch.randn(256, 64)
    compile_all(matmul_reports(gating, q, k), {"sm_90": None, "sm_80": None})


def test_fp64_uses_dmma():
    q, k = torch.randn(64, 16, dtype=torch.float64), torch.randn(64, 16, dtype=torch.float64)
    compile_all(matmul_reports(gating, q, k), {"sm_90": "mma.sync", "sm_80": "mma.sync"})


def test_classifier_lstm_and_batched_heads_kernels_half():
    model = BinaryClassifier().half()
    reports = matmul_reports(model, torch.randn(64, 10, dtype=torch.float16))
    assert [r.name for r in reports][:2] == ["linear_relu", "linear_sigmoid"]
    h = torch.float16
    reports += matmul_reports(lstm_gate, torch.randn(64, 32, dtype=h), torch.randn(64, 32, dtype=h),
                              torch.randn(32, 128, dtype=h), torch.randn(32, 128, dtype=h),
                              torch.randn(128, dtype=h))
    reports += matmul_reports(gating_heads, torch.randn(2, 2, 64, 64, dtype=h),
                              torch.randn(2, 2, 64, 64, dtype=h))
    compile_all(reports, TENSOR_CORES)
