"""The fused backward, against torch.autograd.

gradcheck in float64 for every differentiable pointwise op of the table (the
runtime path: a FusedKernelFunction whose backward is a generated kernel); the
derivative rule of every differentiable op, views included, against eager
autograd at ties and kinks; gradients of the benchmark chains in fp32/fp16/bf16
with every requires_grad pattern; one backward kernel per forward kernel; what
is saved; no_grad; double backward; accumulation. Module behaviour (state_dict,
optimizers, a training loop) is in test_training.py.
"""
from __future__ import annotations

import itertools
import zlib

import pytest
import torch

import fusion
from fusion.partition import GroupKind
from fusion.runtime import run_plan
from ir.autodiff import backward_graph
from ir.ops import OPS, OpKind

from examples_models import CHAINS, gated, mixed, swish  # noqa: F401
from helpers import (
    DEVICE,
    INTERPRETED,
    SHORT,
    TOL,
    one_ulp,
    op_graph,
    plan_of,
    sample,
    shape_cases,
)

DIFFERENTIABLE_POINTWISE = [n for n, d in OPS.items() if d.kind == OpKind.POINTWISE and d.differentiable]
DIFFERENTIABLE = [n for n, d in OPS.items()
                  if d.kind in (OpKind.POINTWISE, OpKind.VIEW, OpKind.SUM_TO) and d.differentiable]


def _seed(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32("-".join(map(str, parts)).encode()))


def _operands(name, shapes, gen, *, kinks, layout="contiguous"):
    d = OPS[name]
    xs = [sample(dom, s, torch.float64, gen, kinks=kinks, layout=layout)
          for dom, s in zip(d.operand_domains(), shapes)]
    return [x.requires_grad_(x.is_floating_point()) for x in xs]


def _eager_accepts(name, xs, attrs) -> bool:
    try:
        OPS[name].eager(*xs, **attrs)
        return True
    except (TypeError, ValueError, RuntimeError):  # bce does not broadcast its target
        return False


# ---- every differentiable pointwise op, through the fused runtime ----------------------------

def _gradcheck_cases():
    for name in DIFFERENTIABLE_POINTWISE:
        cases = ["small", "transposed"] + (["broadcast"] if OPS[name].arity > 1 else [])
        for case in cases:
            yield pytest.param(name, case, id=f"{name}-{case}")


@pytest.mark.parametrize("name,case", _gradcheck_cases())
def test_gradcheck_pointwise_op(name, case):
    d = OPS[name]
    shapes = {"small": [(3, 5)] * d.arity, "transposed": [(3, 5)] * d.arity,
              "broadcast": [(3, 1), (5,), (3, 5)][:d.arity]}[case]
    xs = _operands(name, shapes, _seed(name, case), kinks=False,
                   layout="transposed" if case == "transposed" else "contiguous")
    checked = 0
    for attrs in d.sample_attrs(xs[0].shape):
        if not _eager_accepts(name, xs, attrs):
            pytest.skip(f"eager {name} refuses these shapes (test_op_table checks we do too)")
        graph = op_graph(name, xs, attrs)
        if graph.outputs[0].dtype != torch.float64:
            continue  # a cast to another type: gradcheck needs float64 throughout
        plan = plan_of(graph)
        assert any(g.kind == GroupKind.POINTWISE for g in plan.groups)
        assert torch.autograd.gradcheck(lambda *ts: run_plan(plan, list(ts))[0], xs, eps=1e-6, atol=1e-7)
        checked += 1
    assert checked, f"no float64 sample of {name}"


# ---- every derivative rule, views included, against eager autograd ----------------------

def _rule_cases():
    for name in DIFFERENTIABLE:
        for case in ("odd", "broadcast"):
            if case == "broadcast" and OPS[name].arity == 1:
                continue
            yield pytest.param(name, case, id=f"{name}-{case}")


@pytest.mark.parametrize("name,case", _rule_cases())
def test_vjp_rule_matches_eager_autograd(name, case):
    """The rule's gradient, built by ir.autodiff and run by the pipeline, equals eager
    autograd's in float64, at ties and kinks too (relu'(0), |x|'(0), maximum(x, x))."""
    d = OPS[name]
    xs = _operands(name, shape_cases(d.arity)[case], _seed(name, case), kinks=True)
    for attrs in d.sample_attrs(xs[0].shape):
        if not _eager_accepts(name, xs, attrs):
            continue  # test_op_table checks that we refuse them too
        graph = op_graph(name, xs, attrs)
        out = graph.outputs[0]
        if not out.dtype.is_floating_point:
            continue
        expected_out = d.eager(*xs, **attrs)
        needs = tuple(x.requires_grad for x in xs)
        bwd = backward_graph(graph.nodes[len(xs):], graph.inputs, graph.outputs, needs)
        g = sample("real", expected_out.shape, expected_out.dtype, _seed(name, "g"), kinks=False)
        ours = run_plan(plan_of(bwd.graph), [x.detach() for x in xs] + [g])
        wanted = [x for x in xs if x.requires_grad]
        expected = torch.autograd.grad(expected_out, wanted, g, allow_unused=True)
        for k, (a, e) in enumerate(zip(ours, expected)):
            e = torch.zeros_like(wanted[k]) if e is None else e
            torch.testing.assert_close(a, e, msg=lambda m: f"{name}({attrs}) d/dx{k}\n{m}")


# ---- the benchmark chains: gradients vs eager in every float type ----------------------------




def _grad_patterns(n):
    return [p for p in itertools.product((True, False), repeat=n) if any(p)]


def _chain_cases():
    for chain, (_, shapes) in CHAINS.items():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for pattern in _grad_patterns(len(shapes)):
                label = "".join("1" if p else "0" for p in pattern)
                yield pytest.param(chain, dtype, pattern, id=f"{chain}-{SHORT[dtype]}-grad{label}")


def _grads(fn, args, pattern, g):
    args = [a.detach().clone().requires_grad_(p) for a, p in zip(args, pattern)]
    fn(*args).backward(g)
    return [a.grad for a in args]


@pytest.mark.parametrize("chain,dtype,pattern", _chain_cases())
def test_chain_gradients_match_eager(chain, dtype, pattern):
    fn, shapes = CHAINS[chain]
    gen = _seed(chain, dtype, pattern)
    args = [sample("real", s, dtype, gen) for s in shapes]
    g = sample("real", shapes[0], dtype, gen)
    ours = _grads(fusion.compile(fn), args, pattern, g)
    eager = _grads(fn, args, pattern, g)
    exact = _grads(fn, [a.double() for a in args], pattern, g.double())
    for k, (o, e, x) in enumerate(zip(ours, eager, exact)):
        if not pattern[k]:
            assert o is None, f"input {k} does not require grad but got one"
            continue
        assert o.dtype == dtype and o.shape == args[k].shape
        if dtype == torch.float32:
            torch.testing.assert_close(o, e, msg=lambda m: f"d/d input {k}\n{m}")
            torch.testing.assert_close(o.double(), x, **TOL[dtype])
            continue
        # computed in fp32 and rounded once: no further from float64 than eager, which
        # rounds after every op (the interpreter's truncating bf16 stores: one ulp more)
        ours_err = (o.double() - x).abs()
        if dtype == torch.bfloat16 and INTERPRETED:
            ours_err = (ours_err - one_ulp(x, dtype)).clamp(min=0)
        eager_err = (e.double() - x).abs()
        assert ours_err.max() <= eager_err.max(), \
            f"d/d input {k}: error {ours_err.max():.3g} > eager's {eager_err.max():.3g}"


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_chain_gradients_for_non_contiguous_inputs(layout):
    gen = _seed("noncontig", layout)
    x, g = (sample("real", (37, 53), torch.float64, gen, layout=layout, kinks=False) for _ in range(2))
    b = sample("real", (53,), torch.float64, gen)
    ins = [t.detach().requires_grad_(True) for t in (x, g, b)]
    assert torch.autograd.gradcheck(fusion.compile(gated), ins, fast_mode=True)
    ours, eager = _grads(fusion.compile(mixed), [x, g], (True, True), x), _grads(mixed, [x, g], (True, True), x)
    for a, e in zip(ours, eager):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("chain", CHAINS)
def test_gradcheck_chains_with_broadcasting(chain):
    fn, shapes = CHAINS[chain]
    small = [(4, 5) if len(s) == 2 else (5,) for s in shapes]
    if chain == "mixed":
        small = [(4, 1), (5,)]  # both broadcast: each gradient is reduced
    gen = _seed("gradcheck", chain)
    ins = [sample("real", s, torch.float64, gen, kinks=False).requires_grad_() for s in small]
    assert torch.autograd.gradcheck(fusion.compile(fn), ins)


# ---- the shape of the backward -------------------------------------------------------------

@pytest.mark.parametrize("chain", CHAINS)
def test_each_forward_kernel_has_exactly_one_backward_kernel(chain):
    fn, shapes = CHAINS[chain]
    args = [sample("real", s, torch.float32, _seed(chain)).requires_grad_() for s in shapes]
    report = fusion.explain(fn, *args)
    assert len(report.kernels) == 1
    assert len(report.backward_kernels) == 1, [k.name for k in report.backward_kernels]
    # one pass writes every gradient that is computed per element (b's is a row sum of
    # the incoming gradient, run by torch)
    per_element = [k for k, s in enumerate(shapes) if s == shapes[0]]
    assert len(report.backward_kernels[0].outputs) == len(per_element)


def _saved_during(fn, *args):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*args)
    return out, saved


def _is_one_of(t, tensors):
    return any(t.data_ptr() == a.data_ptr() and t.shape == a.shape and t.stride() == a.stride()
               for a in tensors)


@pytest.mark.parametrize("chain", CHAINS)
def test_only_group_inputs_are_saved(chain):
    fn, shapes = CHAINS[chain]
    args = [sample("real", s, torch.float32, _seed(chain)).requires_grad_() for s in shapes]
    _, saved = _saved_during(fusion.compile(fn), *args)
    assert saved, "the backward needs some input"
    assert all(_is_one_of(t, args) for t in saved), "an intermediate was saved"
    if chain == "gated":  # b's gradient needs no value at all
        assert not any(_is_one_of(t, args[2:]) for t in saved)
        ((_, ids),) = fusion.explain(fn, *args).saved
        assert sorted(ids) == ["%0", "%1"], "explain reports x and g saved, not b"


def test_inputs_without_grad_get_no_gradient_computed():
    x, g, b = (sample("real", s, torch.float32, _seed("nograd")) for s in CHAINS["gated"][1])
    x.requires_grad_()
    report = fusion.explain(gated, x, g, b)
    (kernel,) = report.backward_kernels
    assert len(kernel.outputs) == 1, "only d/dx is computed"
    # d/dx = grad * sigmoid(g): only g is needed, not x
    _, saved = _saved_during(fusion.compile(gated), x, g, b)
    assert len(saved) == 1 and _is_one_of(saved[0], [g])
    out = fusion.compile(gated)(x, g, b)
    out.sum().backward()
    assert g.grad is None and b.grad is None
    torch.testing.assert_close(x.grad, torch.sigmoid(g))


def test_no_grad_saves_nothing_and_records_no_graph():
    args = [sample("real", s, torch.float32, _seed("no_grad")).requires_grad_()
            for s in CHAINS["gated"][1]]
    compiled = fusion.compile(gated)
    with torch.no_grad():
        out, saved = _saved_during(compiled, *args)
    assert saved == [] and not out.requires_grad and out.grad_fn is None


def test_double_backward_raises_a_clear_error():
    x = torch.randn(5, 7, device=DEVICE, requires_grad=True)
    out = fusion.compile(swish)(x)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    torch.testing.assert_close(gx, torch.autograd.grad(swish(x).sum(), x)[0])
    with pytest.raises(RuntimeError, match=r"fusion: double backward.*not supported"):
        gx.sum().backward()


def test_gradients_accumulate_across_calls():
    x, g, b = (sample("real", s, torch.float32, _seed("accumulate")).requires_grad_()
               for s in CHAINS["gated"][1])
    compiled = fusion.compile(gated)
    compiled(x, g, b).sum().backward()
    first = [t.grad.clone() for t in (x, g, b)]
    (compiled(x, g, b) * 2).sum().backward()
    for t, f in zip((x, g, b), first):
        torch.testing.assert_close(t.grad, 3 * f)
