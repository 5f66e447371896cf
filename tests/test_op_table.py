"""Every pointwise and view op of the table, forward, against eager.

Generated from ``ir.ops.OPS``: an op added to the table is swept here with no
edit to this file. Each op runs alone in an IR graph through the whole
pipeline (partition, emitter, kernel cache, launch) in fp32, fp16, bf16 and
fp64, over odd, broadcast, non-contiguous, zero-size and 0-d operands, and
is compared with eager torch in the same dtype and with eager torch in
float64 rounded to the result type.

Internal ops (``OpDef.internal``: ``sigmoid_grad``, ``sum_to``, made only by
derivative rules) need no torch spelling; every other op must have aliases,
and each alias must capture to its op (``test_alias_captures_to_its_op``).
"""
from __future__ import annotations

import inspect
import itertools
import zlib

import pytest
import torch

import fusion
from ir.graph import Graph
from ir.ops import OPS, SAMPLE_DOMAINS, STRUCTURAL, OpKind

from helpers import (
    DEVICE,
    FLOATS,
    SHORT,
    assert_matches,
    eager_op,
    op_graph,
    run_graph,
    sample,
    scalar_for,
    shape_cases,
    special_values,
    with_limits,
)

POINTWISE = [n for n, d in OPS.items() if d.kind == OpKind.POINTWISE]
VIEWS = [n for n, d in OPS.items() if d.kind == OpKind.VIEW]
TESTED = POINTWISE + VIEWS


def _ops_with(kind_filter):
    return [n for n in TESTED if kind_filter(OPS[n])]


# ---- the table itself ---------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in OPS if OPS[n].kind not in STRUCTURAL | {OpKind.EXTERN, OpKind.ELEMENT}])
def test_entry_is_complete(name):
    d = OPS[name]
    missing = []
    if not isinstance(d.kind, OpKind):
        missing.append(f"kind {d.kind!r} is not an OpKind")
    for field in ("infer", "eager"):
        if not callable(getattr(d, field)):
            missing.append(field)
    if d.differentiable and not callable(d.vjp):
        missing.append("vjp (the op is differentiable)")
    if d.kind == OpKind.POINTWISE and not callable(d.triton):
        missing.append("triton (the op is pointwise)")
    if not d.internal and not d.aliases:
        missing.append("aliases (the op is user-facing; mark compiler-made ops internal=True)")
    if d.internal and d.aliases:
        missing.append("nothing: an internal op must not have torch spellings")
    if d.kind in (OpKind.POINTWISE, OpKind.VIEW):
        domains = d.operand_domains()
        if len(domains) != d.arity:
            missing.append(f"one domain per operand ({d.arity}), got {domains}")
        operands = _eager_operands(d)
        if operands is not None and operands != d.arity:
            missing.append(f"the right arity: eager takes {operands} operands, arity says {d.arity}")
        missing += [f"known domain (not {x!r})" for x in domains if x not in SAMPLE_DOMAINS]
        if not d.sample_attrs((9, 7, 5)):
            missing.append("sample_attrs for a rank-3 input")
    assert not missing, f"op-table entry {name!r} lacks: {', '.join(missing)}"


def _eager_operands(d) -> int | None:
    """How many operands the eager reference takes (its required parameters that are
    not attrs); None for builtins without a signature."""
    try:
        params = inspect.signature(d.eager).parameters.values()
    except (TypeError, ValueError):
        return None
    attrs = {k for a in d.sample_attrs((9, 7, 5)) for k in a}
    return sum(1 for p in params if p.default is p.empty and p.name not in attrs
               and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


@pytest.mark.parametrize("name", TESTED)
def test_sample_attrs_are_accepted(name):
    """Every attr set the table offers types correctly on a rank-3 input (the rule runs)."""
    d = OPS[name]
    g = Graph()
    ins = [g.add_node("input", (), {}, (9, 7, 5), torch.bool if dom == "bool" else torch.float32,
                      DEVICE, name=f"x{k}") for k, dom in enumerate(d.operand_domains())]
    for attrs in d.sample_attrs((9, 7, 5)):
        g.call(name, *ins, **attrs)
    g.verify()


# ---- forward, op by op -----------------------------------------------------------------

def _operands(d, shapes, dtype, gen, layout="contiguous"):
    return [sample(dom, shape, dtype, gen, layout=layout)
            for dom, shape in zip(d.operand_domains(), shapes)]


def _check(name, operands, attrs, what):
    """Run ``name`` alone through the compiler and compare with eager (same dtype, float64)."""
    tensors = [o for o in operands if isinstance(o, torch.Tensor)]
    try:
        same = eager_op(name, operands, attrs)
    except (TypeError, ValueError, RuntimeError) as refused:
        # where eager refuses the operands (a shape it does not broadcast), so do we
        with pytest.raises(type(refused)):
            run_graph(op_graph(name, operands, attrs), tensors)
        return
    (ours,) = run_graph(op_graph(name, operands, attrs), tensors)
    ref = eager_op(name, operands, attrs, dtype=torch.float64)
    assert_matches(ours, ref.to(ours.dtype), f"{what}: vs eager in float64")
    if ours.dtype in (torch.float16, torch.bfloat16):
        # eager rounds between the steps of a composite reference (bce); we round once
        eps = torch.finfo(ours.dtype).eps
        torch.testing.assert_close(ours, same, rtol=4 * eps, atol=eps, equal_nan=True,
                                   msg=lambda m: f"{what}: vs eager in the same dtype\n{m}")
    else:
        assert_matches(ours, same, f"{what}: vs eager in the same dtype")


def _forward_cases():
    for name in _ops_with(lambda d: d.kind == OpKind.POINTWISE):
        for dtype in FLOATS:
            for case in list(shape_cases(OPS[name].arity)) + ["transposed", "sliced"]:
                yield pytest.param(name, dtype, case, id=f"{name}-{SHORT[dtype]}-{case}")


@pytest.mark.parametrize("name,dtype,case", _forward_cases())
def test_pointwise_forward(name, dtype, case):
    d = OPS[name]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}-{case}".encode()))
    if case in ("transposed", "sliced"):
        # operand 0 laid out as ``case``, the others contiguous: strided and flat reads mix
        operands = _operands(d, [(9, 7, 5)] * d.arity, dtype, gen)
        operands[0] = sample(d.operand_domains()[0], (9, 7, 5), operands[0].dtype, gen, layout=case)
    else:
        operands = _operands(d, shape_cases(d.arity)[case], dtype, gen)
    for attrs in d.sample_attrs(operands[0].shape):
        _check(name, operands, attrs, f"{name}({attrs}) {SHORT[dtype]} {case}")


@pytest.mark.parametrize("name", _ops_with(lambda d: d.kind == OpKind.POINTWISE and d.arity > 1))
@pytest.mark.parametrize("dtype", FLOATS, ids=SHORT.get)
def test_pointwise_forward_python_scalar(name, dtype):
    """Each tensor operand replaced in turn by a Python scalar (an inlined constant)."""
    d = OPS[name]
    gen = torch.Generator().manual_seed(7)
    for k, dom in enumerate(d.operand_domains()):
        if dom == "bool":
            continue
        operands = _operands(d, [(9, 7)] * d.arity, dtype, gen)
        operands[k] = scalar_for(dom)
        try:
            eager_op(name, operands, {})
        except (TypeError, RuntimeError, AttributeError, ValueError):
            continue  # torch itself has no such overload (torch.maximum(x, 1.5))
        _check(name, operands, {}, f"{name} {SHORT[dtype]} with operand {k} a Python scalar")


MIXED = [(torch.float16, torch.float32), (torch.bfloat16, torch.float16),
         (torch.float32, torch.float64), (torch.int64, torch.float32), (torch.int32, torch.int64),
         (torch.float16, "f64 0-d"), (torch.bfloat16, 2), (3, torch.float16)]


@pytest.mark.parametrize("name", _ops_with(lambda d: d.kind == OpKind.POINTWISE and d.arity == 2
                                           and set(d.operand_domains()) == {"real"}))
def test_pointwise_forward_mixed_types(name):
    """torch's promotion: mixed float widths, ints with floats, 0-d tensors, scalars."""
    gen = torch.Generator().manual_seed(3)
    for pair in MIXED:
        operands = []
        for t in pair:
            if isinstance(t, torch.dtype):
                x = sample("real", (9, 7), torch.float64, gen)
                operands.append((x * 4).to(t) if not t.is_floating_point else x.to(t))
            elif t == "f64 0-d":
                operands.append(torch.tensor(1.25, dtype=torch.float64, device=DEVICE))
            else:
                operands.append(t)
        try:
            same = eager_op(name, operands, {})
        except (TypeError, RuntimeError):
            continue
        tensors = [o for o in operands if isinstance(o, torch.Tensor)]
        (ours,) = run_graph(op_graph(name, operands, {}), tensors)
        assert_matches(ours, same, f"{name} on {pair}")


@pytest.mark.parametrize("name", _ops_with(lambda d: d.kind == OpKind.POINTWISE and not d.internal))
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.int64], ids=SHORT.get)
def test_pointwise_integer_and_bool_operands(name, dtype):
    """Every op on integer and bool tensors where eager accepts them: eager's values and
    type (bool + bool is logical or; integer arithmetic wraps)."""
    d = OPS[name]
    values = torch.tensor([0, 1, 2, 5, 127, 200, 3, 1], device=DEVICE)
    operands = [(values.roll(k) % 2).bool() if dtype == torch.bool or dom == "bool" else values.roll(k).to(dtype)
                for k, dom in enumerate(d.operand_domains())]
    for attrs in d.sample_attrs(operands[0].shape):
        try:
            same = eager_op(name, operands, attrs)
        except (TypeError, RuntimeError, NotImplementedError):
            continue  # refused by eager: capture refuses it too (tests/test_bad_inputs.py)
        (ours,) = run_graph(op_graph(name, operands, attrs), operands)
        assert ours.dtype == same.dtype, f"{name}({attrs}) on {dtype}"
        torch.testing.assert_close(ours, same, equal_nan=True, msg=lambda m: f"{name}({attrs}) on {dtype}\n{m}")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool], ids=SHORT.get)
def test_pow_of_integer_tensors_keeps_torchs_types(dtype):
    """int ** int stays int (wrapping on overflow, as torch), int ** float is float, and
    a negative integer power of an integer is refused as eager refuses it."""
    x = torch.arange(-3, 4, device=DEVICE).to(dtype)
    for exponent in (0, 1, 2, 3, 5, 70, 2.5):
        (ours,) = run_graph(op_graph("pow", [x], {"exponent": exponent}), [x])
        expected = torch.pow(x, exponent)
        assert ours.dtype == expected.dtype, f"** {exponent}"
        torch.testing.assert_close(ours, expected, equal_nan=True, msg=lambda m: f"** {exponent}\n{m}")
    with pytest.raises(RuntimeError, match="negative integer powers"):
        torch.pow(x, -1)
    with pytest.raises(RuntimeError, match="negative integer powers"):
        run_graph(op_graph("pow", [x], {"exponent": -1}), [x])


@pytest.mark.parametrize("name", _ops_with(lambda d: d.kind == OpKind.POINTWISE
                                           and "bool" not in d.operand_domains()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=SHORT.get)
def test_pointwise_special_values(name, dtype):
    """0, -0, tiny, huge, ±inf, NaN (every pair of them for binary ops): same as eager in float64."""
    # (the domain's own extremes for probabilities, which torch checks)
    d = OPS[name]
    # values a value check refuses raise, as in eager (tests/test_value_checks.py)
    values = [torch.tensor([v for v in special_values(dom) if not any(
        c.operand == k and c.fails(torch.tensor([v])) for c in d.checks)], dtype=dtype, device=DEVICE)
              for k, dom in enumerate(d.operand_domains())]
    grids = torch.meshgrid(*values, indexing="ij")
    operands = [v.contiguous() for v in grids]
    for attrs in d.sample_attrs(operands[0].shape):
        if attrs.get("dtype") in (torch.int32, torch.int64):
            continue  # NaN and inf have no integer value: torch's result is unspecified
        (ours,) = run_graph(op_graph(name, operands, attrs), operands)
        # float64 eager is the oracle: a composite eager (bce_logits) loses digits in fp32;
        # where its formula gives NaN at an infinity though the function has a limit
        # (silu(-inf) = -inf * 0 in eager, 0 in fact), the limit (helpers.LIMITS)
        expected = eager_op(name, operands, attrs, dtype=torch.float64)
        if expected.is_floating_point():
            rows = list(zip(*[o.flatten().tolist() for o in operands]))
            expected = with_limits(name, rows, expected.flatten()).view(expected.shape)
        expected = expected.to(ours.dtype)
        if expected.is_floating_point():
            # a limit LIMITS does not state: eager's value at a huge finite input where its
            # formula is NaN at an infinite one (gelu(-inf) = -0; eager's x * Phi(x) is -inf * 0)
            at_inf = torch.stack([torch.broadcast_to(o.isinf(), expected.shape) for o in operands
                                  if isinstance(o, torch.Tensor) and o.is_floating_point()]).any(0)
            at_limit = expected.isnan() & at_inf & _matches_limit(name, operands, attrs, ours)
            expected = torch.where(at_limit, ours, expected)
        torch.testing.assert_close(ours, expected, equal_nan=True,
                                   msg=lambda m: f"{name}({attrs}) on special values\n{m}")


def _matches_limit(name, operands, attrs, ours):
    """Where ``ours`` equals eager float64 with each ±inf operand replaced by ±1e100 (large,
    and its cube still finite: gelu's tanh form computes x^3)."""
    big = 1e100
    finite = [o.double().nan_to_num(nan=float("nan"), posinf=big, neginf=-big) for o in operands]
    limit = eager_op(name, finite, attrs).to(ours.dtype)
    return torch.isclose(ours, limit) if ours.is_floating_point() else torch.zeros_like(ours, dtype=torch.bool)


# ---- views: eager reads them, kernels read them through strides -------------------------

def _view_cases():
    for name in VIEWS:
        for dtype in FLOATS:
            for case in ("odd", "zero_size", "zero_dim", "transposed", "sliced"):
                yield pytest.param(name, dtype, case, id=f"{name}-{SHORT[dtype]}-{case}")


@pytest.mark.parametrize("name,dtype,case", _view_cases())
def test_view_forward(name, dtype, case):
    d = OPS[name]
    gen = torch.Generator().manual_seed(11)
    if case in ("transposed", "sliced"):
        x = sample(d.operand_domains()[0], (9, 7, 5), dtype, gen, layout=case)
    else:
        x = sample(d.operand_domains()[0], shape_cases(1)[case][0], dtype, gen)
    attr_sets = d.sample_attrs(x.shape)
    if not attr_sets:
        pytest.skip(f"the table offers no {name} sample for shape {tuple(x.shape)}")
    for attrs in attr_sets:
        view, negated = run_graph(op_graph(name, [x], attrs, extra_neg=True), [x])
        expected = eager_op(name, [x], attrs)
        torch.testing.assert_close(view, expected, rtol=0, atol=0)
        assert_matches(negated, -expected, f"neg({name}({attrs})) {case}: a kernel reading the view")


# ---- capture: every torch spelling reaches its op ----------------------------------------

def _alias_cases():
    for name in TESTED:
        for alias in OPS[name].aliases:
            label = alias if isinstance(alias, str) else f"{getattr(alias, '__module__', '')}." \
                f"{getattr(alias, '__name__', alias)}"
            yield pytest.param(name, alias, id=f"{name}-{label}")


def _spelled(alias, args: tuple, arity: int):
    """A function of ``arity`` tensors calling ``alias`` on them and the attr values."""
    if isinstance(alias, type):  # an nn.Module class: a submodule, as models use it
        return torch.nn.Sequential(alias())
    if isinstance(alias, str):
        call = lambda x, *rest: getattr(x, alias)(*rest, *args)  # noqa: E731
    else:
        call = lambda *xs: alias(*xs, *args)  # noqa: E731
    # torch.fx traces named parameters only, not *args
    return {1: lambda x0: call(x0), 2: lambda x0, x1: call(x0, x1),
            3: lambda x0, x1, x2: call(x0, x1, x2)}[arity]


@pytest.mark.parametrize("name,alias", _alias_cases())
def test_alias_captures_to_its_op(name, alias):
    d = OPS[name]
    gen = torch.Generator().manual_seed(5)
    operands = _operands(d, [(6, 5)] * d.arity, torch.float32, gen)
    attrs = d.sample_attrs(operands[0].shape)[0]
    fn = None
    # attrs are passed positionally (x.pow(2), x.transpose(0, -1)); spellings that fix
    # them (x.half(), x.t()) take none; a method may be called on another operand than
    # the op's first (x.where(condition, y)): the first form eager accepts is the test
    forms = itertools.product((tuple(attrs.values()), ()), itertools.permutations(operands))
    for args, xs in forms:
        candidate = _spelled(alias, args, d.arity)
        try:
            expected = candidate(*xs)
        except (TypeError, RuntimeError, IndexError):
            continue
        fn = candidate
        break
    assert fn is not None, f"cannot call {alias!r} with {attrs} or bare"
    report = fusion.explain(fn, *xs)
    assert f"= {name}(" in report.graph, f"{alias!r} did not capture to {name}:\n{report.graph}"
    assert not report.extern, report.extern
    ours = fusion.compile(fn)(*xs)
    torch.testing.assert_close(ours, expected, equal_nan=True)


@pytest.mark.parametrize("spelling", [
    lambda x: x ** 2, lambda x: 2.0 ** x, lambda x: 1.0 - x, lambda x: 3 / x, lambda x: x.T,
    lambda x: x.float() * x.double(), lambda x: x.view(-1, 3), lambda x: x.to(torch.float16),
    lambda x: x.expand(2, -1, -1, -1), lambda x: torch.nn.functional.relu(x, inplace=False),
], ids=["pow_dunder", "scalar_base_pow", "rsub", "rtruediv", "dotT", "float_double", "view",
        "to_dtype", "expand_varargs", "relu_inplace_false"])
def test_spellings_match_eager(spelling):
    """Spellings that reach the table through reflected operators, varargs or keywords."""
    x = 0.5 + torch.rand(6, 5, 3, device=DEVICE)
    torch.testing.assert_close(fusion.compile(spelling)(x), spelling(x))
