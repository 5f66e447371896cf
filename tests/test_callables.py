"""Any callable of tensors compiles: builtins, partials, methods, callable objects.

``fusion.compile(torch.sigmoid)`` used to raise ``CaptureError: Expected
FunctionType`` (torch.fx traces only functions and modules). Each kind of
callable users pass is compiled, fused into a kernel where its ops are in the
table, and matches eager.
"""
from __future__ import annotations

import functools
import operator
import warnings

import pytest
import torch
import torch.nn.functional as F

import fusion

from helpers import DEVICE


class Scaled:
    """A callable object (not a module)."""

    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return torch.sigmoid(x) * self.k

    def gate(self, x, g):
        return x * torch.sigmoid(g)


def _user_fn(x, y, scale):
    return torch.tanh(x) * y + scale


def _kernels(compiled) -> int:
    return sum(1 for plan in compiled.plans for _ in plan.kernels)


X, Y = torch.randn(37, 5, device=DEVICE), torch.randn(37, 5, device=DEVICE)
CASES = {
    "torch.sigmoid": (torch.sigmoid, (X,)),
    "torch.tanh": (torch.tanh, (X,)),
    "torch.exp": (torch.exp, (X,)),
    "torch.relu": (torch.relu, (X,)),
    "F.silu": (F.silu, (X,)),
    "F.relu": (F.relu, (X,)),
    "operator.mul": (operator.mul, (X, Y)),
    "operator.truediv": (operator.truediv, (X, Y)),
    "torch.maximum": (torch.maximum, (X, Y)),
    "torch.Tensor.sigmoid": (torch.Tensor.sigmoid, (X,)),
    "torch.Tensor.__add__": (torch.Tensor.__add__, (X, Y)),
    "partial(torch.mul, other=2)": (functools.partial(torch.mul, other=2), (X,)),
    "partial(F.silu, inplace=False)": (functools.partial(F.silu, inplace=False), (X,)),
    "partial(user fn, scale=3)": (functools.partial(_user_fn, scale=3.0), (X, Y)),
    "partial(user fn, tensor bound)": (functools.partial(_user_fn, X), (Y, 1.5)),
    "callable object": (Scaled(2.0), (X,)),
    "bound method": (Scaled(2.0).gate, (X, Y)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_callable_compiles_fused_and_matches_eager(name):
    fn, args = CASES[name]
    compiled = fusion.compile(fn)
    torch.testing.assert_close(compiled(*args), fn(*args), rtol=2e-6, atol=1e-6)
    assert _kernels(compiled) >= 1, f"{name}: nothing was fused"
    compiled(*args)
    assert len(compiled.plans) == 1, "a second call reuses the plan"


def test_builtin_is_traced_per_number_of_arguments():
    compiled = fusion.compile(torch.clamp)  # not in the table: run by torch, still captured
    torch.testing.assert_close(compiled(X, -0.5), torch.clamp(X, -0.5))
    torch.testing.assert_close(compiled(X, -0.5, 0.5), torch.clamp(X, -0.5, 0.5))
    assert len(compiled.plans) == 2


def test_builtin_called_with_keywords_runs_eagerly_with_one_warning():
    compiled = fusion.compile(torch.add)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            torch.testing.assert_close(compiled(X, Y, alpha=2), X + 2 * Y)
    assert sum("keyword" in str(w.message) for w in caught) == 1


def test_the_issues_example_is_one_kernel():
    report = fusion.explain(torch.sigmoid, X)
    assert [k.kind for k in report.kernels] == ["pointwise"]
    assert not report.extern
