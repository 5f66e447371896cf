"""ir/functionalize.py at its edges: dtypes, eager's errors (raised as eager raises them),
inference mode, metadata mutation, and Dynamo graphs with every in-place spelling at once
and grad mode changed inside the graph. Against EAGER PyTorch, through the same ``check``
as tests/test_functionalize.py.
"""
import pytest
import torch
import torch._dynamo
import torch.nn as nn
import torch.nn.functional as F
from test_functionalize import SOURCES, check, compiled, fn

from ir.functionalize import FunctionalizeError, functionalize, run_functionalized

from helpers import trace_keeping_inplace as symbolic_trace


def setup_function():
    torch._dynamo.reset()


# ---- dtypes and eager's errors ---------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_inplace_keeps_dtype(source):
    def f(x, y):
        h = x * 1
        h.add_(y)   # f32 += f64: computed in f64, stored in f32
        h.lt_(0.5)  # bool result stored as f32
        return h
    check(fn(f), [torch.randn(6, dtype=torch.float32), torch.randn(6, dtype=torch.float64)], source)


def _eager_error(f, *args):
    with pytest.raises(RuntimeError) as e:
        f(*args)
    return str(e.value)


def test_int_tensor_iadd_float_raises_as_eager():
    def f(x):
        x += 1.5
        return x
    message = _eager_error(f, torch.ones(3, dtype=torch.long))
    with pytest.raises(RuntimeError, match=message):
        functionalize(symbolic_trace(f), [torch.ones(3, dtype=torch.long)])


def test_inplace_on_leaf_requiring_grad_raises_as_eager():
    def f(x):
        x.add_(1)
        return x
    message = _eager_error(f, torch.ones(3, requires_grad=True))
    with pytest.raises(RuntimeError, match=message):
        functionalize(symbolic_trace(f), [torch.ones(3, requires_grad=True)])
    with torch.no_grad():  # allowed by eager under no_grad, so by us
        functionalize(symbolic_trace(f), [torch.ones(3, requires_grad=True)])


def test_inference_mode_graph_and_tensors():
    def f(x, buf):
        buf.add_(x.sum(0))
        h = x * 2
        h[0] = 1.0
        return h
    gm = symbolic_trace(f)
    with torch.inference_mode():
        x, buf, buf_eager = torch.randn(3, 4), torch.zeros(4), torch.zeros(4)
        functional = functionalize(gm, [x, buf])  # inference tensors have no version counter
        torch.testing.assert_close(run_functionalized(functional, gm, [x, buf]), f(x, buf_eager))
        torch.testing.assert_close(buf, buf_eager)
    message = _eager_error(f, torch.randn(3, 4), buf)  # outside: eager refuses to write buf
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        functionalize(gm, [torch.randn(3, 4), buf])
    assert "Inplace update to inference tensor" in message


def test_metadata_mutation_is_refused():
    def f(x):
        h = x * 2
        h.t_()
        return h
    with pytest.raises(FunctionalizeError, match="shape or strides"):
        functionalize(symbolic_trace(f), [torch.randn(2, 3)])


# ---- Dynamo: one graph with many spellings; grad mode inside the graph ---------------------

class Everything(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act, self.bn = nn.Linear(8, 8), nn.ReLU(inplace=True), nn.BatchNorm1d(8)

    def forward(self, x, buf):
        h = self.bn(self.act(self.fc(x)) + 0.5)
        g = h
        g += 1
        g[:, 0] = 0.0
        h.t().mul_(2)
        h.masked_fill_(h > 1.5, 1.5)
        h[h < 0.3] = 0.3
        buf.copy_(h.mean(0))
        F.hardtanh(h, 0.0, 1.6, True)  # last: eager's backward needs its result unchanged
        return h * 2


def test_dynamo_everything_in_one_graph():
    torch.manual_seed(5)
    run = check(Everything, [torch.randn(4, 8, requires_grad=True), torch.zeros(8)], "dynamo", calls=2)
    f = run.captured[0]
    assert any("hardtanh" in n for n in f.notes) and len(f.writebacks) == 4


class NoGradUpdate(nn.Module):
    """An EMA-style update of a parameter under no_grad inside forward."""
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(5) + 0.5)

    def forward(self, x):
        with torch.no_grad():
            self.scale.mul_(0.5)
        return x * self.scale  # eager: gradients still reach the (updated) leaf


def test_parameter_written_under_no_grad_keeps_its_gradient():
    # Dynamo only: symbolic_trace runs `with torch.no_grad()` at trace time, recording nothing
    run = check(NoGradUpdate, [torch.randn(3, 5, requires_grad=True)], "dynamo", calls=2)
    assert run.captured[0].writeback_grad == [False]


def test_dropout_inplace_draws_like_eager():
    def f(x):
        h = x * 1
        F.dropout(h, 0.5, True, True)
        return h
    x = torch.randn(64)
    run = compiled(fn(f)(), [x], "fx")
    torch.manual_seed(6)
    ref = f(x)
    torch.manual_seed(6)
    torch.testing.assert_close(run(x), ref)
