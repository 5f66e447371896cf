"""Mutation and aliasing through the public entry points, against eager.

Every pattern of tests/test_functionalize.py (which checks the pass itself) runs
here through ``fusion.compile`` and ``torch.compile(backend="fusion")``: in-place
ops on intermediates, through aliases and views, on the caller's inputs, in
activation modules, BatchNorm's running stats in training. Each compares outputs,
gradients (inputs and parameters) and the final values of every mutated input and
buffer with eager (``test_functionalize.check``). Python-state guards have their
own catalogue: tests/test_state_guard_catalogue.py.
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from test_functionalize import (
    BN,
    INPLACE_OPS,
    BasicBlock,
    FunctionalBN,
    ReluInplace,
    add_and_return_input,
    check,
    chunk_input,
    fn,
    mul_and_return_view,
    sigmoid_alias_iadd,
    sigmoid_setitem,
    views,
)
from torch import nn

import fusion
import fusion.dynamo

ENTRIES = ["fusion.compile", "torch.compile"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    fusion.dynamo.reset()


def entry_point(model, example, entry):
    """``model`` compiled by one public entry point (``example``: unused, the signature
    test_functionalize.check gives its compile function)."""
    return fusion.compile(model) if entry == "fusion.compile" else torch.compile(model, backend="fusion")


def _kernels(compiled, entry) -> int:
    plans = compiled.plans if entry == "fusion.compile" else [
        p for c in fusion.dynamo.compiled_graphs() for p in c.plans]
    return sum(len(p.kernels) for p in plans)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("make", [ReluInplace, fn(sigmoid_alias_iadd), fn(sigmoid_setitem)],
                         ids=["relu_inplace_module", "iadd_through_alias", "setitem"])
def test_the_issue_examples(make, entry):
    torch.manual_seed(0)
    run = check(make, [torch.randn(4, 8, requires_grad=True)], entry, grad=make is ReluInplace,
                compile=entry_point)
    assert _kernels(run, entry) >= 1


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("op", INPLACE_OPS, ids=list(INPLACE_OPS))
def test_inplace_op_on_an_intermediate(op, entry):
    body = INPLACE_OPS[op]

    def f(x):
        h = x * 1.5
        body(h, x)
        return h * x
    torch.manual_seed(1)
    check(fn(f), [torch.randn(4, 5, requires_grad=True)], entry, compile=entry_point)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", ["views", "chunk_input"])
def test_mutation_through_views(case, entry):
    torch.manual_seed(2)
    if case == "views":
        check(fn(views), [torch.randn(4, 6, requires_grad=True)], entry, compile=entry_point)
    else:
        check(fn(chunk_input), [torch.randn(3, 8)], entry, compile=entry_point)


@pytest.mark.parametrize("entry", ENTRIES)
def test_mutated_input_is_written_back_and_returned_as_the_callers_tensor(entry):
    x, y = torch.randn(3, 4), torch.randn(4)
    run = entry_point(fn(add_and_return_input)(), None, entry)
    x_ours, x_eager = x.clone(), x.clone()
    out = run(x_ours, y)
    torch.testing.assert_close(x_ours, add_and_return_input(x_eager, y))
    assert out is x_ours  # eager returns x itself


@pytest.mark.parametrize("entry", ENTRIES)
def test_returned_views_of_a_mutated_input_alias_it(entry):
    x = torch.randn(3, 4)
    ours = x.clone()
    t, row = entry_point(fn(mul_and_return_view)(), None, entry)(ours)
    torch.testing.assert_close((t, row), mul_and_return_view(x))
    ours.zero_()
    assert t.abs().sum() == 0 and row.abs().sum() == 0


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", ["bn1d", "bn2d", "functional_bn", "resnet_block"])
def test_batchnorm_training_updates_running_stats_like_eager(case, entry):
    torch.manual_seed(3)
    make, x = {"bn1d": (lambda: BN(1), torch.randn(6, 3)),
               "bn2d": (lambda: BN(2), torch.randn(4, 3, 5, 5)),
               "functional_bn": (FunctionalBN, torch.randn(5, 3)),
               "resnet_block": (BasicBlock, torch.randn(2, 4, 6, 6))}[case]
    check(make, [x.requires_grad_()], entry, calls=2, compile=entry_point)


@pytest.mark.parametrize("entry", ENTRIES)
def test_inputs_that_share_storage_run_like_eager(entry):
    def f(x, y):
        x.add_(1)
        return torch.sigmoid(y) * 2
    base = torch.zeros(6)
    ours, eager = base.clone(), base.clone()
    run = entry_point(fn(f)(), None, entry)
    run(torch.zeros(3), torch.zeros(3))  # compiled for distinct inputs
    out = run(ours[:3], ours[:3])        # now x and y are one tensor: y sees x's write
    torch.testing.assert_close(out, f(eager[:3], eager[:3]))
    torch.testing.assert_close(ours, eager)


# ---- writes autograd does not see, and views whose elements overlap ----------------------

class DataWrite(nn.Module):
    """A write through ``.data``: values change, the parameter stays autograd's leaf."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 2.0, 6))

    def forward(self, x):
        self.w.data.mul_(0.5)
        return torch.sigmoid(x) * self.w


class NoGradWrite(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, 6))

    def forward(self, x):
        with torch.no_grad():
            self.w.add_(0.25)
        return torch.sigmoid(x * self.w)


class EmbeddingMaxNorm(nn.Module):
    """F.embedding(max_norm=...) renormalises the rows it reads, in place, through a
    ``.detach()`` of the weight."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6, max_norm=1.0)

    def forward(self, i):
        return torch.sigmoid(self.emb(i)) * 2


class DetachedWriteBeforeUse(nn.Module):
    """A write through ``.detach()`` of a submodule's weight, then the submodule's call:
    it must read the written values (torch.fx would call it with its own, old ones)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        self.lin.weight.detach()[0].mul_(0.5)
        return torch.sigmoid(self.lin(x))


def overlapping_view_write(x):
    a = x * 1.0
    a.unfold(1, 2, 1).mul_(2)   # elements inside the row sit in two windows: written twice
    return torch.sigmoid(a)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("make,inputs", [
    (DataWrite, lambda: [torch.randn(6, requires_grad=True)]),
    (NoGradWrite, lambda: [torch.randn(6, requires_grad=True)]),
    (EmbeddingMaxNorm, lambda: [torch.tensor([1, 3, 3, 7])]),
    (fn(overlapping_view_write), lambda: [torch.randn(3, 5, requires_grad=True)]),
    (DetachedWriteBeforeUse, lambda: [torch.randn(3, 4, requires_grad=True)]),
], ids=["data_write", "no_grad_param_write", "embedding_max_norm", "overlapping_view_write",
        "detached_write_before_a_submodule_call"])
def test_writes_outside_autograd_and_overlapping_views(make, inputs, entry):
    torch.manual_seed(4)
    check(make, inputs(), entry, calls=2, compile=entry_point)


class WritesBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("b", torch.linspace(0.0, 1.0, 4))

    def forward(self, x):
        y = torch.sigmoid(x) * self.b
        self.b.mul_(3)
        return y + x


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("view", [False, True], ids=["buffer", "view_of_buffer"])
def test_an_input_that_is_the_buffer_forward_writes(entry, view):
    """The caller passes the module's own buffer (or a view of it): the write is seen
    through the input, as in eager."""
    ours_m, eager_m = WritesBuffer(), WritesBuffer()
    run = entry_point(ours_m, None, entry)
    for arg in ("buffer", "fresh", "buffer"):
        if arg == "fresh":
            a_ours, a_eager = torch.ones(4), torch.ones(4)
        else:
            a_ours, a_eager = (ours_m.b[:], eager_m.b[:]) if view else (ours_m.b, eager_m.b)
        torch.testing.assert_close(run(a_ours), eager_m(a_eager))
        torch.testing.assert_close(ours_m.b, eager_m.b)
