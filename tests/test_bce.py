"""Sigmoid + BCE is rewritten to the logits form: exact where eager saturates."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusion

pytestmark = pytest.mark.cpu_only  # CPU tensors: the interpreter path

LOGITS = [-200.0, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 200.0]
TARGETS = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def sigmoid_bce(z, y):
    return F.binary_cross_entropy(torch.sigmoid(z), y)


class SigmoidBCELoss(nn.Module):
    def __init__(self, reduction):
        super().__init__()
        self.sigmoid = nn.Sigmoid()
        self.loss = nn.BCELoss(reduction=reduction)

    def forward(self, z, y):
        return self.loss(self.sigmoid(z), y)


def _logits_reference(z, y, reduction="mean"):
    z64 = z.detach().double().requires_grad_()
    loss = F.binary_cross_entropy_with_logits(z64, y.double(), reduction=reduction)
    loss.sum().backward()
    return loss.detach(), z64.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_loss_and_gradient_exact(dtype):
    z = torch.tensor(LOGITS, dtype=dtype, requires_grad=True)
    y = torch.tensor(TARGETS, dtype=dtype)
    loss = fusion.compile(sigmoid_bce)(z, y)
    loss.backward()
    ref_loss, ref_grad = _logits_reference(z, y)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(z.grad.double(), ref_grad, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("dtype, logit", [(torch.float32, -200.0), (torch.float64, -800.0)])
def test_where_eager_saturates_we_do_not(dtype, logit):
    # sigmoid(z) underflows to 0: eager's log is clamped at -100 and its gradient vanishes
    z = torch.tensor([logit], dtype=dtype, requires_grad=True)
    y = torch.ones(1, dtype=dtype)
    eager = sigmoid_bce(z, y)
    eager.backward()
    assert eager.item() == 100.0 and z.grad.item() == 0.0
    z.grad = None
    ours = fusion.compile(sigmoid_bce)(z, y)
    ours.backward()
    assert ours.item() == -logit and z.grad.item() == -1.0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_form_matches_with_logits(reduction):
    z = torch.tensor(LOGITS, requires_grad=True)
    y = torch.tensor(TARGETS)
    loss = fusion.compile(SigmoidBCELoss(reduction))(z, y)
    loss.sum().backward()
    ref_loss, ref_grad = _logits_reference(z, y, reduction)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(z.grad.double(), ref_grad, rtol=1e-6, atol=1e-30)


def test_rewrite_is_reported_and_fused_with_the_reduction():
    z = torch.randn(1000, requires_grad=True)
    y = (torch.rand(1000) > 0.5).float()
    report = fusion.explain(sigmoid_bce, z, y)
    assert any("bce_logits" in r for r in report.rewrites)
    assert "sigmoid" not in report.graph  # the probability is never formed
    assert len(report.kernels) == 1 and len(report.backward_kernels) == 1
    assert "tl.sum" in report.kernels[0].source  # the mean is reduced inside the kernel


def test_ordinary_range_matches_eager_bce():
    torch.manual_seed(0)
    z = torch.randn(3, 257, dtype=torch.float64, requires_grad=True)
    y = torch.rand(3, 257, dtype=torch.float64)
    torch.autograd.gradcheck(fusion.compile(sigmoid_bce), (z, y), fast_mode=True)
    torch.testing.assert_close(fusion.compile(sigmoid_bce)(z, y), sigmoid_bce(z, y))


def test_bce_on_probabilities_without_sigmoid_keeps_torch_semantics():
    p = torch.tensor([0.0, 1e-30, 0.3, 1.0], requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    loss = fusion.compile(lambda p, y: F.binary_cross_entropy(p, y, reduction="none"))(p, y)
    torch.testing.assert_close(loss, F.binary_cross_entropy(p, y, reduction="none"))
