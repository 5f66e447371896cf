"""A compiled module trains like the original.

Parameters, state_dict and optimizers see the original's tensors; a training
loop on the seed's classifier (BCELoss, SGD and Adam) follows eager step by step.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fusion

from examples_models import BinaryClassifier
from helpers import DEVICE


class Gated(nn.Module):
    """x·σ(W) + b with parameters on the pointwise path itself (no matmul)."""

    def __init__(self, n=53):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        return x * torch.sigmoid(self.weight) * self.scale + self.bias


def test_compiled_module_shares_parameters_and_state_dict():
    model = BinaryClassifier().to(DEVICE)
    compiled = fusion.compile(model)
    assert list(compiled.state_dict()) == list(model.state_dict())
    assert [id(p) for p in compiled.parameters()] == [id(p) for p in model.parameters()]
    for (k, a), b in zip(compiled.state_dict().items(), model.state_dict().values()):
        assert a.data_ptr() == b.data_ptr(), k
    # a checkpoint of the original loads into the compiled module and back
    other = BinaryClassifier().to(DEVICE)
    compiled.load_state_dict(other.state_dict())
    x = torch.randn(7, 10, device=DEVICE)
    torch.testing.assert_close(compiled(x), other(x))
    torch.testing.assert_close(model(x), other(x))


def test_buffers_are_in_the_state_dict_and_seen_when_changed():
    model = Gated().to(DEVICE)
    compiled = fusion.compile(model)
    assert list(compiled.state_dict()) == ["weight", "bias", "scale"]
    x = torch.randn(37, 53, device=DEVICE)
    torch.testing.assert_close(compiled(x), model(x))
    model.scale.fill_(2.0)
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("make_model", [BinaryClassifier, Gated], ids=["classifier", "gated"])
def test_parameter_gradients_match_eager(make_model):
    torch.manual_seed(0)
    model = make_model().to(DEVICE)
    ref = copy.deepcopy(model)
    x = torch.randn(37, 10 if make_model is BinaryClassifier else 53, device=DEVICE)
    fusion.compile(model)(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{name}\n{m}")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_loop_matches_eager(optimizer):
    torch.manual_seed(0)
    model = BinaryClassifier().to(DEVICE)
    ref = copy.deepcopy(model)
    compiled = fusion.compile(model)

    def make(params):
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.5, momentum=0.9)
        return torch.optim.Adam(params, lr=1e-2)

    opt, ref_opt = make(compiled.parameters()), make(ref.parameters())
    loss_fn = nn.BCELoss()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 10, generator=gen).to(DEVICE)
    y = (x[:, :3].sum(1, keepdim=True) > 0).float()
    losses = []
    for step in range(6):
        for o in (opt, ref_opt):
            o.zero_grad()
        loss = loss_fn(compiled(x), y)
        ref_loss = loss_fn(ref(x), y)
        loss.backward()
        ref_loss.backward()
        opt.step()
        ref_opt.step()
        torch.testing.assert_close(loss, ref_loss, msg=lambda m: f"step {step}\n{m}")
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, msg=lambda m: f"step {step} {name}\n{m}")
        losses.append(loss.item())
    assert losses[-1] < losses[0], "it learns"


def test_eval_mode_and_no_grad_inference():
    model = BinaryClassifier().to(DEVICE)
    compiled = fusion.compile(model).eval()
    assert not model.training
    x = torch.randn(9, 10, device=DEVICE)
    with torch.no_grad():
        out = compiled(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, model(x))
