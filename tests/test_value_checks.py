"""Checks eager makes on values at run time are made by our kernels too.

The audit: every op of the table, its eager reference fed extreme values
(NaN, ±inf, negatives, values past 1, huge ones) in each operand, raises
exactly where the op declares a value check (``OpDef.checks``): today only
binary cross-entropy (input and target in [0, 1]) and its rewritten
sigmoid form (a NaN logit is a NaN probability). Where a check fails, the
compiled call raises the exception type eager raises, naming the op and what
was wrong, whatever the path: the user's spellings (``F.binary_cross_entropy``,
``nn.BCELoss``, after ``torch.sigmoid``), every reduction, fp16/bf16/fp32/fp64,
a matmul epilogue, the eager-reference path, and the IR op alone. A failed
call leaves nothing behind: the next good call returns the right value.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusion
from ir.ops import OPS, OpKind

from helpers import DEVICE, FLOATS, SHORT, op_graph, run_graph, sample

EXTREMES = (math.nan, math.inf, -math.inf, -1.0, -0.5, 0.0, -0.0, 1.0, 1.5, 2.0, 1e30, -1e30)
AUDITED = [n for n, d in OPS.items()
           if d.kind in (OpKind.POINTWISE, OpKind.REDUCTION, OpKind.MATMUL, OpKind.VIEW)]
CHECKED = [n for n in AUDITED if OPS[n].checks]


def _operands(name: str, gen) -> tuple[list, dict]:
    """Valid operands of ``name`` (and its first sample attrs), shaped [6, 4] where it can."""
    d = OPS[name]
    if d.kind == OpKind.MATMUL:
        f = d.form
        shapes = {f.a: (6, 3), f.b: (4, 3) if f.b_transposed else (3, 4)}
        if f.bias is not None:
            shapes[f.bias] = (4,)
        return [torch.randn(shapes[k], generator=gen, dtype=torch.float64) for k in range(len(shapes))], {}
    if d.kind == OpKind.REDUCTION:
        return [torch.randn(6, 4, generator=gen, dtype=torch.float64)], {}
    attrs = d.sample_attrs((6, 4))[0]
    return [sample(dom, (6, 4), torch.float64, gen).cpu() for dom in d.operand_domains()], attrs


def _eager_raises(name, operands, attrs):
    try:
        OPS[name].eager(*operands, **attrs)
    except (RuntimeError, ValueError) as e:
        return e
    return None


@pytest.mark.parametrize("name", AUDITED)
def test_eager_raises_on_values_exactly_where_the_table_declares_a_check(name):
    """The audit of the table: no undeclared check, and no declared one eager lacks."""
    gen = torch.Generator().manual_seed(0)
    for k, operand in enumerate(_operands(name, gen)[0]):
        if operand.dtype == torch.bool:
            continue
        for value in EXTREMES:
            operands, attrs = _operands(name, gen)
            operands[k] = operands[k].clone()
            operands[k].view(-1)[1] = value
            raised = _eager_raises(name, operands, attrs)
            failing = [c for c in OPS[name].checks if c.operand == k and c.fails(operands[k])]
            assert (raised is not None) == bool(failing), (
                f"{name}: operand {k} = {value}: eager {'raises ' + repr(raised) if raised else 'accepts it'}, "
                f"the table declares {'a failing check' if failing else 'no failing check'}")
            if raised is not None:
                assert isinstance(raised, failing[0].error)


def _bad(values, k, value, dtype):
    out = values.clone()
    out.view(-1)[k] = value
    return out.to(dtype).to(DEVICE)


def _assert_raises_like(call, check, eager_call=None, named=True):
    """``call`` raises eager's exception type (that of ``eager_call`` where given), with
    eager's words, after the op's name unless ``named`` is False (torch's own message)."""
    expected = check.error
    if eager_call is not None:  # eager's own type, where eager (on CPU) raises
        with pytest.raises(Exception) as info:
            eager_call()
        expected = info.type
    words = (f"fusion: {check.label}: " if named else "") + re.escape(check.message)
    with pytest.raises(expected, match=words):
        call()


@pytest.mark.parametrize("name", CHECKED)
@pytest.mark.parametrize("dtype", FLOATS, ids=SHORT.get)
def test_the_ir_op_alone_raises_where_a_check_fails(name, dtype):
    gen = torch.Generator().manual_seed(1)
    operands, attrs = _operands(name, gen)
    for check in OPS[name].checks:
        for value in (-0.5, 1.5, math.nan, math.inf, -math.inf):
            if not check.fails(torch.tensor([value])):
                continue
            bad = [_bad(o, 5, value, dtype) if k == check.operand else o.to(dtype).to(DEVICE)
                   for k, o in enumerate(operands)]
            _assert_raises_like(lambda: run_graph(op_graph(name, bad, attrs), bad), check)
        good = [o.to(dtype).to(DEVICE) for o in operands]
        (out,) = run_graph(op_graph(name, good, attrs), good)  # and a good call after a bad one
        assert torch.isfinite(out).all()


def bce(p, y):
    return F.binary_cross_entropy(p, y)


def bce_none(p, y):
    return F.binary_cross_entropy(p, y, reduction="none")


def bce_sum(p, y):
    return F.binary_cross_entropy(p, y, reduction="sum")


def sigmoid_bce(z, y):
    return F.binary_cross_entropy(torch.sigmoid(z), y)


class sigmoid_bce_none(nn.Module):  # noqa: N801 (named as the functions beside it)
    """nn.Sigmoid then nn.BCELoss, the module spelling."""

    def __init__(self):
        super().__init__()
        self.act, self.loss = nn.Sigmoid(), nn.BCELoss(reduction="none")

    def forward(self, z, y):
        return self.loss(self.act(z), y)


def linear_sigmoid_bce(x, w, y):
    return F.binary_cross_entropy(torch.sigmoid(x @ w), y, reduction="none")  # a matmul epilogue


INPUT, TARGET = OPS["bce"].checks


@pytest.mark.parametrize("fn", [bce, bce_none, bce_sum, nn.BCELoss(), sigmoid_bce, sigmoid_bce_none()],
                         ids=lambda f: getattr(f, "__name__", type(f).__name__))
@pytest.mark.parametrize("dtype", FLOATS, ids=SHORT.get)
def test_user_spellings_raise_like_eager_then_recover(fn, dtype):
    gen = torch.Generator().manual_seed(2)
    logits = "sigmoid" in getattr(fn, "__name__", type(fn).__name__)
    first = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    first = first if logits else torch.sigmoid(first)
    target = torch.rand(7, 5, generator=gen, dtype=torch.float64)
    compiled = fusion.compile(fn)
    cases = [(TARGET, first, _bad(target, 9, v, dtype)) for v in (1.5, -0.5, math.nan, math.inf)]
    bad_first = (math.nan,) if logits else (1.5, -0.5, math.nan, -math.inf)  # any logit but NaN is fine
    cases += [(INPUT, _bad(first, 9, v, dtype), target) for v in bad_first]
    for check, p, y in cases:
        p, y = p.to(dtype).to(DEVICE), y.to(dtype).to(DEVICE)
        eager_call = (lambda: fn(p.cpu(), y.cpu())) if dtype != torch.bfloat16 or not logits else None
        _assert_raises_like(lambda: compiled(p, y), check, eager_call)
    p, y = first.to(dtype).to(DEVICE), target.to(dtype).to(DEVICE)
    ours, ref = compiled(p, y), fn(p.double(), y.double())
    torch.testing.assert_close(ours.double(), ref, rtol=2e-2 if dtype in (torch.float16, torch.bfloat16)
                               else 1e-5, atol=1e-3)


def test_logits_of_plus_minus_inf_are_valid_probabilities():
    # sigmoid(±inf) is 1 or 0: inside [0, 1], so eager accepts them and so must we
    # (the loss's value at infinite logits is the numerics' business, not the check's)
    z, y = torch.tensor([math.inf, -math.inf, 0.0], device=DEVICE), torch.tensor([0.5, 0.5, 0.5], device=DEVICE)
    sigmoid_bce(z, y)
    fusion.compile(sigmoid_bce)(z, y)


def test_matmul_epilogue_raises_then_recovers():
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(8, 4, generator=gen).to(DEVICE), torch.randn(4, 3, generator=gen).to(DEVICE)
    y = torch.rand(8, 3, generator=gen).to(DEVICE)
    compiled = fusion.compile(linear_sigmoid_bce)
    assert [k.kind for k in fusion.explain(linear_sigmoid_bce, x, w, y).kernels] == ["matmul"]
    _assert_raises_like(lambda: compiled(x, w, y + 1), TARGET, lambda: linear_sigmoid_bce(x.cpu(), w.cpu(), (y + 1).cpu()))
    _assert_raises_like(lambda: compiled(x, w * math.nan, y), INPUT)
    torch.testing.assert_close(compiled(x, w, y), linear_sigmoid_bce(x, w, y), rtol=1e-5, atol=1e-5)


@pytest.mark.cpu_only
def test_eager_reference_path_raises_too(monkeypatch):
    """CPU without TRITON_INTERPRET: no kernels run, the table's eager references do."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for fn in (bce, sigmoid_bce):
        compiled = fusion.compile(fn)
        p, y = torch.full((4,), 0.3), torch.full((4,), 1.5)
        # bce's reference is torch's own call: torch's words; the rewritten form's are ours
        _assert_raises_like(lambda: compiled(p, y), TARGET, lambda: fn(p, y), named=fn is sigmoid_bce)
        assert all(step.kernel is None for plan in compiled.plans for step in plan.steps)


def test_backward_kernels_carry_no_checks():
    z = torch.randn(64, device=DEVICE, requires_grad=True)
    y = torch.rand(64, device=DEVICE)
    report = fusion.explain(sigmoid_bce, z, y)
    assert "checks_ptr" in report.kernels[0].source
    assert all("checks_ptr" not in k.source for k in report.backward_kernels)


@pytest.mark.cpu_only
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_checked_kernels_compile_for_gpus(arch):
    pytest.importorskip("triton")
    z, y = torch.randn(4096), torch.rand(4096)
    x, w = torch.randn(64, 16), torch.randn(16, 32)
    for report in (fusion.explain(sigmoid_bce, z, y),
                   fusion.explain(linear_sigmoid_bce, x, w, torch.rand(64, 32))):
        rep = report.kernels[0].compile_for(arch)
        assert rep.spills == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=SHORT.get)
def test_half_operands_are_checked_as_eager_stores_them(dtype):
    """An fp16 probability computed in fp32 inside the kernel (1.0 * 1.0002) is checked
    rounded to fp16, as eager checks its fp16 tensor: 1.0, valid."""
    p = torch.tensor([1.0, 0.5, 0.0], dtype=dtype, device=DEVICE)
    y = torch.tensor([1.0, 0.5, 0.0], dtype=dtype, device=DEVICE)

    def scaled(p, y):
        return F.binary_cross_entropy(p * 1.0002, y, reduction="none")
    torch.testing.assert_close(fusion.compile(scaled)(p, y), scaled(p, y), atol=1e-3, rtol=1e-2)
    _assert_raises_like(lambda: fusion.compile(scaled)(p * 1.01, y), INPUT, lambda: scaled(p * 1.01, y))
