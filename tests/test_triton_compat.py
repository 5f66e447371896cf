"""codegen/triton_compat.py: the interpreter mended to compute what the GPU computes.

Each repair is checked against torch's own conversion (the reference the GPU's
``cvt.rn`` matches): fp32 -> bf16 rounding to nearest even, bf16 subnormals,
fp64 and int sources, bf16 dots; and a library ``@jit`` call in the
interpreter no longer breaks a later GPU compile in the same process.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fusion
from codegen.triton_compat import bf16_bits_to_fp32, fp32_to_bf16_bits

from helpers import INTERPRETED

pytestmark = pytest.mark.cpu_only  # the interpreter itself


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16)


def test_rounding_matches_torch_on_every_bf16_neighbourhood():
    # every bf16 value, and the fp32 values halfway (ties) and a little off it on both sides
    bf16 = torch.arange(0, 2**16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    base = bf16.view(torch.int32)
    cases = torch.cat([base, base + 0x7FFF, base + 0x8000, base + 0x8001]).view(torch.float32)
    ours = bf16_bits_to_fp32(fp32_to_bf16_bits(cases.numpy()))
    np.testing.assert_array_equal(ours, cases.to(torch.bfloat16).float().numpy())  # NaN == NaN here
    np.testing.assert_array_equal(bf16_bits_to_fp32(_bits(bf16.to(torch.bfloat16))), bf16.numpy())


@pytest.mark.skipif(not INTERPRETED, reason="runs kernels in Triton's interpreter")
@pytest.mark.parametrize("source", [torch.float32, torch.float64, torch.int32, torch.bfloat16])
def test_kernels_convert_to_and_from_bf16_like_torch(source):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4096, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(
        -40, 30, (4096,), generator=gen)).to(source) if source != torch.int32 else \
        torch.randint(-2**30, 2**30, (4096,), generator=gen, dtype=torch.int32)
    ours = fusion.compile(lambda t: t.to(torch.bfloat16) * 1)(x)
    torch.testing.assert_close(ours, x.to(torch.bfloat16) * 1, rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(not INTERPRETED, reason="runs kernels in Triton's interpreter")
def test_bf16_matmul_epilogue_matches_torch():
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(33, 16, generator=gen).to(torch.bfloat16) for _ in range(2))
    out = fusion.compile(lambda q, k: torch.sigmoid(q @ k.T) * 2)(q, k)
    ref = (torch.sigmoid(q.double() @ k.double().T) * 2).to(torch.bfloat16)
    torch.testing.assert_close(out, ref, rtol=1.6e-2, atol=1e-3)


@pytest.mark.skipif(not INTERPRETED, reason="runs kernels in Triton's interpreter")
def test_gpu_compile_after_library_jit_calls_in_the_interpreter():
    x = torch.randn(1000)
    report = fusion.explain(lambda t: torch.sigmoid(t).sum(), x)  # tl.sum: a library @jit call
    assert report.kernels[0].compile_for("sm_90").registers > 0
