"""Memory formats: fused kernels write outputs in the layout eager would produce.

A channels_last input gives a channels_last output wherever eager's does
(TensorIterator's rule, learnt by running the group's ops on meta tensors of
the inputs' strides); the kernel then walks memory in that order, so it still
reads and writes flat. Values, gradients and strides are compared with eager.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusion

from helpers import DEVICE

CL = torch.channels_last


def _formats(t: torch.Tensor) -> tuple:
    return (t.is_contiguous(), t.is_contiguous(memory_format=CL))


@pytest.mark.parametrize("case", ["cl_only", "cl_and_broadcast", "cl_and_contiguous", "contiguous"])
def test_pointwise_output_follows_eager_layout(case):
    x = torch.randn(2, 3, 4, 5, device=DEVICE)
    if case != "contiguous":
        x = x.to(memory_format=CL)
    other = {"cl_only": x.detach().clone(), "cl_and_broadcast": torch.randn(3, 1, 1, device=DEVICE),
             "cl_and_contiguous": torch.randn(2, 3, 4, 5, device=DEVICE),
             "contiguous": torch.randn(2, 3, 4, 5, device=DEVICE)}[case]
    x.requires_grad_()

    def fn(a, b):
        return F.silu(a) * torch.sigmoid(b) + 1
    ours, eager = fusion.compile(fn)(x, other), fn(x, other)
    torch.testing.assert_close(ours, eager)
    assert ours.stride() == eager.stride(), (ours.stride(), eager.stride())
    g_ours, = torch.autograd.grad(ours, x, torch.ones_like(eager))
    g_eager, = torch.autograd.grad(eager, x, torch.ones_like(eager))
    torch.testing.assert_close(g_ours, g_eager)
    assert _formats(g_ours) == _formats(g_eager)


class SqueezeExcite(nn.Module):
    """An EfficientNet-style block tail: SiLU, then a sigmoid channel gate."""

    def __init__(self, c=8):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.reduce = nn.Conv2d(c, 2, 1)
        self.expand = nn.Conv2d(2, c, 1)

    def forward(self, x):
        h = F.silu(self.conv(x))
        s = torch.sigmoid(self.expand(F.silu(self.reduce(h.mean((2, 3), keepdim=True)))))
        return h * s


@pytest.mark.parametrize("entry", ["fusion", "backend"])
def test_channels_last_cnn_block_stays_channels_last(entry):
    torch.manual_seed(0)
    model = SqueezeExcite().to(DEVICE).to(memory_format=CL)
    x = torch.randn(2, 8, 6, 6, device=DEVICE).to(memory_format=CL)
    compiled = fusion.compile(model) if entry == "fusion" else torch.compile(model, backend="fusion")
    ours, eager = compiled(x), model(x)
    torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-5)
    assert _formats(ours) == _formats(eager) == (False, True)
