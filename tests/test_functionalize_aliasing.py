"""ir/functionalize.py, the parts that need no model: the may_mutate scan (conservative
and fast), inputs_alias, refusals, and random programs of views, writes and reads
(hypothesis) compared with eager, gradients included. FUSION_FUNCTIONALIZE_PROGRAMS
sets how many programs (40 here; 1500 passed when written).
"""
import operator
import os
import time

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ir.functionalize import FunctionalizeError, functionalize, inputs_alias, may_mutate, run_functionalized

from helpers import trace_keeping_inplace as symbolic_trace

N_PROGRAMS = int(os.environ.get("FUSION_FUNCTIONALIZE_PROGRAMS", "40"))  # more: deeper fuzzing

# ---- may_mutate, inputs_alias, no-op -------------------------------------------------------

@fx.wrap
def user_leaf(x):
    return x


MUTATING = {
    "method": lambda x: x.add_(1), "setitem": lambda x: operator.setitem(x, 0, 1.0),
    "iadd": lambda x: operator.iadd(x, 1), "torch_": lambda x: torch.sigmoid_(x),
    "inplace_kw": lambda x: F.relu(x, inplace=True), "inplace_pos": lambda x: F.relu(x, True),
    "dropout_pos": lambda x: F.dropout(x, 0.1, True, True),
    "out": lambda x: torch.add(x, 1, out=x),
    "batch_norm": lambda x: F.batch_norm(x, torch.zeros(3), torch.ones(3), training=True),
    "op_overload": lambda x: torch.ops.aten.add_.Tensor(x, x),
    "user_function": lambda x: user_leaf(x),
}


@pytest.mark.parametrize("case", MUTATING, ids=list(MUTATING))
def test_may_mutate_sees(case):
    assert may_mutate(symbolic_trace(MUTATING[case]))


def test_may_mutate_modules_and_pure_graphs():
    assert may_mutate(symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.SiLU(inplace=True))))
    assert may_mutate(symbolic_trace(nn.Sequential(nn.BatchNorm1d(3))))
    assert not may_mutate(symbolic_trace(nn.Sequential(nn.BatchNorm1d(3)).eval()))
    assert not may_mutate(symbolic_trace(lambda x: F.batch_norm(x, torch.zeros(3), torch.ones(3))))
    assert not may_mutate(symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Dropout())))


def _chain(n_nodes):
    def f(x):
        for i in range(n_nodes // 2):
            x = torch.sigmoid(x) * (i + 1)
        return x
    return symbolic_trace(f)


def test_may_mutate_is_fast():
    gm = _chain(50)
    may_mutate(gm)
    t0 = time.perf_counter()
    for _ in range(200):
        assert not may_mutate(gm)
    per_call = (time.perf_counter() - t0) / 200
    assert per_call < 1e-3, f"may_mutate took {per_call * 1e6:.0f} us on 50 nodes"


def test_nothing_written_returns_the_graph_itself():
    gm = _chain(10)
    f = functionalize(gm, [torch.randn(3)])
    assert f.gm is gm and not f.writebacks and f.output_aliases == [None]


def test_inputs_alias():
    x = torch.randn(4, 4)
    assert inputs_alias([x, x[0]]) and inputs_alias([[x], x.t()])
    assert not inputs_alias([x, x.clone(), 3])


def test_written_input_aliasing_another_input_is_refused():
    def f(x, y):
        x.add_(1)
        return y * 2
    base = torch.randn(4)
    with pytest.raises(FunctionalizeError, match="aliases another"):
        functionalize(symbolic_trace(f), [base[:2], base[2:]])


# ---- random programs of views, writes and reads (the aliasing corner cases) --------------

VIEWS = {
    "row": lambda v: v[0:1], "col": lambda v: v[..., -1:], "t": lambda v: v.transpose(0, -1),
    "flat": lambda v: v.reshape(-1),  # a view when contiguous, a copy otherwise: both checked
    "unsqueeze": lambda v: v.unsqueeze(0), "narrow": lambda v: v.narrow(-1, 0, 1),
    "detach": lambda v: v.detach(),
}
WRITES = {
    "add_": lambda v: v.add_(1.5), "mul_": lambda v: v.mul_(-2), "zero_": lambda v: v.zero_(),
    "fill_": lambda v: v.fill_(0.3), "clamp_": lambda v: v.clamp_(max=0.5),
    "sigmoid_": lambda v: v.sigmoid_(), "setitem": lambda v: operator.setitem(v, Ellipsis, 7.0),
    "masked_fill_": lambda v: v.masked_fill_(v > 0, 2.0), "iadd": lambda v: operator.iadd(v, v),
}
STEP = st.one_of(
    st.tuples(st.just("view"), st.integers(0, 30), st.sampled_from(sorted(VIEWS))),
    st.tuples(st.just("write"), st.integers(0, 30), st.sampled_from(sorted(WRITES))),
    st.tuples(st.just("read"), st.integers(0, 30), st.just("")))


def program(steps):
    def f(x):
        values, outs = [x * 1, x], []  # an intermediate and the caller's input
        for kind, i, what in steps:
            v = values[i % len(values)]
            if kind == "view":
                values.append(VIEWS[what](v))
            elif kind == "write":
                WRITES[what](v)
            else:
                outs.append(v * 1)
        return [v * 1 for v in values[:2]] + outs
    return f


@settings(max_examples=N_PROGRAMS, deadline=None, derandomize=True, database=None)
@given(st.lists(STEP, min_size=1, max_size=12))
def test_random_view_and_write_programs_match_eager(steps):
    f = program(steps)
    a = torch.randn(3, 4, requires_grad=True)  # x = a * 1: a non-leaf input, writable
    a2 = a.detach().clone().requires_grad_()
    gm = symbolic_trace(f)
    functional = functionalize(gm, [a * 1])
    assert may_mutate(gm) or functional.gm is gm
    ours, eager = a * 1, a2 * 1
    out = run_functionalized(functional, gm, [ours])
    ref = f(eager)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ours, eager)  # the caller's input, written back
    cot = [torch.randn_like(r) for r in [*ref, eager]]
    try:
        sum((r * c).sum() for r, c in zip([*ref, eager], cot)).backward()
    except RuntimeError:  # eager's saved tensor was overwritten: no reference gradient
        return
    sum((o * c).sum() for o, c in zip([*out, ours], cot)).backward()
    torch.testing.assert_close(a.grad, a2.grad)
