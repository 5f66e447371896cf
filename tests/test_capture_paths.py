"""Capture beyond torch.fx: what fx cannot trace goes through Dynamo, automatically.

Shape-dependent Python, decorated forwards, loops with a Python-known trip
count, ops returning tuples and bias-free linears are captured by both entry
points and still fuse; data-dependent control flow is a CaptureError unless
fallback='eager' (then its graph breaks run eagerly); any capture failure is a
CaptureError. Every result is compared with eager PyTorch.
"""
from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

import fusion
import fusion.dynamo

from helpers import DEVICE


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    fusion.dynamo.reset()


def _kernels(compiled) -> int:
    return sum(len(p.kernels) for p in compiled.plans)


def _dynamo_kernels() -> int:
    return sum(_kernels(c) for c in fusion.dynamo.compiled_graphs())


def check(model, *inputs, min_kernels=1):
    """Both entry points match eager, fuse at least ``min_kernels`` kernels; returns
    the fusion.compile module."""
    expected = model(*inputs)
    compiled = fusion.compile(model)
    torch.testing.assert_close(compiled(*inputs), expected)
    assert _kernels(compiled) >= min_kernels, compiled.capture
    torch.testing.assert_close(torch.compile(model, backend="fusion")(*inputs), expected)
    assert _dynamo_kernels() >= min_kernels
    return compiled


class ShapeBranch(nn.Module):
    def forward(self, x):
        if x.dim() == 3:            # control flow on a shape: fx cannot trace it
            x = x.sum(0)
        out = torch.zeros(x.size(0), 4, device=x.device)
        for t in range(x.size(1)):  # a loop whose trip count Python knows
            out = out + torch.sigmoid(x[:, t:t + 1]) * 2
        return out


@pytest.mark.parametrize("shape", [(5, 3), (2, 5, 3)])
def test_shape_dependent_control_flow_and_loops(shape):
    compiled = check(ShapeBranch(), torch.randn(*shape, device=DEVICE))
    assert compiled.capture.startswith("Dynamo (one graph)"), compiled.capture


def _opaque(fn):
    """A decorator fx cannot see through (no functools.wraps, *args forwarding)."""
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


class Decorated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    @_opaque
    def forward(self, x, scale=2.0):
        return F.silu(self.fc(x)) * scale


def test_decorated_forward():
    check(Decorated(), torch.randn(4, 6, device=DEVICE))


class Experts(nn.Module):
    """A loop over experts weighted by a router's top-k (a tuple-returning op)."""

    def __init__(self, n=3, d=6):
        super().__init__()
        self.router = nn.Linear(d, n, bias=False)
        self.experts = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(n))

    def forward(self, x):
        weights, chosen = torch.topk(torch.softmax(self.router(x), -1), 2)
        gate = weights.sum(-1, keepdim=True) * (chosen[:, :1] >= 0)
        out = 0
        for expert in self.experts:
            out = out + F.silu(expert(x))
        return out * torch.sigmoid(gate)


def test_loop_over_experts_with_topk_router():
    check(Experts(), torch.randn(5, 6, device=DEVICE))


@pytest.mark.parametrize("op", ["max", "min", "sort", "topk", "aminmax", "values_field"])
def test_ops_returning_tuples_are_indexed_and_the_rest_fuses(op):
    def fn(x):
        if op == "max":
            y = x.max(dim=-1)[0]
        elif op == "min":
            y, _ = torch.min(x, 1)
        elif op == "sort":
            y = torch.sort(x, dim=-1)[0][:, 0]
        elif op == "topk":
            y = torch.topk(x, 2).values.sum(-1)
        elif op == "aminmax":
            lo, hi = torch.aminmax(x, dim=-1)
            y = hi - lo
        else:
            y = x.max(dim=1).values
        return torch.sigmoid(y) * 2 + 1
    check(fn, torch.randn(4, 5, device=DEVICE))


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm_cell", "gru_cell"])
def test_recurrent_modules_return_tuples(cell):
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = {"lstm": nn.LSTM(4, 3, batch_first=True), "gru": nn.GRU(4, 3, batch_first=True),
                        "lstm_cell": nn.LSTMCell(4, 3), "gru_cell": nn.GRUCell(4, 3)}[cell]
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            if cell in ("lstm", "gru"):
                out, state = self.rnn(x)
                h = state[0][0] if cell == "lstm" else state[0]
                feats = out[:, -1] + h
            elif cell == "lstm_cell":
                h = c = torch.zeros(x.size(0), 3, device=x.device)
                for t in range(x.size(1)):
                    h, c = self.rnn(x[:, t], (h, c))
                feats = h
            else:
                h = torch.zeros(x.size(0), 3, device=x.device)
                for t in range(x.size(1)):
                    h = self.rnn(x[:, t], h)
                feats = h
            return torch.sigmoid(self.head(feats)) * 2
    net = Net().to(DEVICE)
    # torch.compile skips frames holding nn.LSTM/GRU modules unless allow_rnn is set
    with torch._dynamo.config.patch(allow_rnn=True):
        check(net, torch.randn(2, 5, 4, device=DEVICE))


@pytest.mark.parametrize("spelling", ["functional_none", "functional_kw", "module_no_bias"])
def test_bias_free_linear_is_a_matmul_epilogue(spelling):
    w = torch.randn(7, 6, device=DEVICE)
    lin = nn.Linear(6, 7, bias=False).to(DEVICE)

    def fn(x):
        if spelling == "functional_none":
            y = F.linear(x, w, None)
        elif spelling == "functional_kw":
            y = F.linear(x, w, bias=None)
        else:
            y = lin(x)
        return F.silu(y) * 3
    x = torch.randn(5, 6, device=DEVICE)
    check(fn, x)
    report = fusion.explain(fn, x)
    assert [k.kind for k in report.kernels] == ["matmul"], report
    graph = fusion.dynamo.compiled_graphs()[-1]
    assert [k.family for p in graph.plans for k in p.kernels.values()] == ["matmul"]


def data_dependent(x):
    y = torch.sigmoid(x) * 2
    if y.sum() > 3:
        return y * x
    return y - x


def test_data_dependent_control_flow_is_a_capture_error_naming_the_way_out():
    with pytest.raises(fusion.CaptureError) as info:
        fusion.compile(data_dependent)(torch.randn(6, device=DEVICE))
    assert "control flow" in str(info.value) and "fallback='eager'" in str(info.value)


def test_data_dependent_control_flow_with_fallback_fuses_the_graphs_around_the_break():
    compiled = fusion.compile(data_dependent, fallback="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x in (torch.ones(6, device=DEVICE), -torch.ones(6, device=DEVICE)):
            torch.testing.assert_close(compiled(x), data_dependent(x))
    assert sum("fusion" in str(w.message) for w in caught) == 1
    assert _kernels(compiled) >= 2  # sigmoid*2 before the break, the branch taken after
    report = fusion.explain(compiled, torch.ones(6, device=DEVICE))
    assert report.graph_breaks and "graph break" in str(report)
    assert report.capture.startswith("Dynamo (graph breaks run eagerly)")


def test_python_value_from_a_tensor_is_a_capture_error():
    def normalise(x):
        return torch.sigmoid(x) / x.abs().max().item()
    with pytest.raises(fusion.CaptureError):
        fusion.compile(normalise)(torch.randn(6, device=DEVICE))
    x = torch.randn(6, device=DEVICE)
    torch.testing.assert_close(fusion.compile(normalise, fallback="eager")(x), normalise(x))


def test_data_dependent_output_shape_is_never_baked_in():
    def positives(x):
        return torch.sigmoid(x[x > 0]) * 2
    x = torch.randn(40, device=DEVICE)
    with pytest.raises(fusion.CaptureError):
        fusion.compile(positives)(x)
    compiled = fusion.compile(positives, fallback="eager")
    for x in (torch.randn(40, device=DEVICE), torch.randn(40, device=DEVICE)):
        torch.testing.assert_close(compiled(x), positives(x))


def test_every_capture_failure_is_a_capture_error():
    def uses_numpy(x):
        return torch.sigmoid(x) * float(x.sum().numpy())
    with pytest.raises(fusion.CaptureError):
        fusion.compile(uses_numpy)(torch.randn(3))


@pytest.mark.parametrize("entry", ["fusion", "backend"])
@pytest.mark.parametrize("where", ["vmap_outside", "vmap_inside"])
def test_vmap_runs_never_crashes(entry, where):
    def gate(x, g):
        return x * torch.sigmoid(g)

    def batched(x, g):
        return torch.vmap(gate)(x, g) + 1
    x, g = torch.randn(3, 5, device=DEVICE), torch.randn(3, 5, device=DEVICE)
    compile_ = fusion.compile if entry == "fusion" else (lambda f: torch.compile(f, backend="fusion"))
    if where == "vmap_outside":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = torch.vmap(compile_(gate))(x, g)
        torch.testing.assert_close(out, torch.vmap(gate)(x, g))
    else:
        torch.testing.assert_close(compile_(batched)(x, g), batched(x, g))


@pytest.mark.parametrize("entry", ["fusion", "backend"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_and_inference_mode(entry, mode):
    model = nn.Sequential(nn.Linear(6, 6), nn.SiLU(), nn.Linear(6, 2), nn.Sigmoid()).to(DEVICE)
    x = torch.randn(4, 6, device=DEVICE)
    compiled = fusion.compile(model) if entry == "fusion" else torch.compile(model, backend="fusion")
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx():
        out, expected = compiled(x), model(x)
    torch.testing.assert_close(out, expected)
    assert not out.requires_grad
    # and training still works afterwards
    compiled(x).sum().backward()
    assert model[0].weight.grad is not None


def test_builtin_wrapped_by_a_partial_still_captures():
    fn = functools.partial(torch.mul, other=2.0)
    x = torch.randn(4, device=DEVICE)
    torch.testing.assert_close(fusion.compile(lambda t: torch.sigmoid(fn(t)))(x), torch.sigmoid(x * 2))
