"""Chains of pointwise ops fuse into one kernel and match eager.

The benchmark chains (x·σ(x), x·σ(g)+b with b broadcast, relu(x)·σ(y)−tanh(x))
in every float type and over odd, broadcast and non-contiguous layouts; random
chains drawn from the op table with hypothesis; the seed's BinaryClassifier.
Half types are compared with the float64 result rounded to the type (the
kernel computes in fp32 and rounds once, so it is closer than eager, which
rounds after every op) and with eager at twice the type's tolerance.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusion
from fusion.partition import GroupKind
from fusion.runtime import run_plan
from ir.graph import Graph
from ir.ops import OPS, OpKind

from examples_models import CHAINS, BinaryClassifier, gated, mixed, swish  # noqa: F401
from helpers import (
    DEVICE,
    FLOATS,
    INTERPRETED,
    SHORT,
    TOL,
    assert_matches,
    one_ulp,
    plan_of,
    sample,
)


def _inputs(shapes, dtype, layout="contiguous", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [sample("real", s, dtype, gen, layout=layout if len(s) > 1 else "contiguous")
            for s in shapes]


def check_against_eager(fn, args, msg=""):
    """ours vs float64 eager rounded to the type; vs eager in the type: equal within the
    type's tolerance in fp32/fp64, no larger an error than eager's in fp16/bf16 (where
    eager rounds after every op and a cancellation shows it)."""
    ours = fusion.compile(fn)(*args)
    exact = fn(*[a.double() for a in args])
    assert_matches(ours, exact.to(ours.dtype), f"{msg}: vs eager in float64")
    eager = fn(*args)
    if ours.dtype in (torch.float16, torch.bfloat16):
        ours_err = (ours.double() - exact).abs()
        if ours.dtype == torch.bfloat16 and INTERPRETED:
            ours_err = (ours_err - one_ulp(exact, torch.bfloat16)).clamp(min=0)  # truncating stores
        ours_err = ours_err.max()
        eager_err = (eager.double() - exact).abs().max()
        assert ours_err <= eager_err, f"{msg}: error {ours_err:.3g} > eager's {eager_err:.3g}"
    else:
        assert_matches(ours, eager, f"{msg}: vs eager")
    return ours


@pytest.mark.parametrize("dtype", FLOATS, ids=SHORT.get)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("chain", CHAINS)
def test_chain_is_one_kernel_and_matches_eager(chain, layout, dtype):
    fn, shapes = CHAINS[chain]
    args = _inputs(shapes, dtype, layout)
    report = fusion.explain(fn, *args)
    assert len(report.kernels) == 1, f"{chain}: {[k.name for k in report.kernels]}\n{report}"
    assert not report.extern, report.extern
    check_against_eager(fn, args, f"{chain} {SHORT[dtype]} {layout}")


def test_broadcast_operand_is_read_through_a_zero_stride_not_materialised():
    x, g, b = _inputs(CHAINS["gated"][1], torch.float32)
    (kernel,) = fusion.explain(gated, x, g, b).kernels
    # one read of each external input, the broadcast one through strides
    assert kernel.bytes_read == (2 * x.numel() + b.numel()) * 4
    assert "b_stride0" in kernel.source and "expand" not in kernel.source


@pytest.mark.parametrize("shapes", [
    [(1,), (37, 53), (53,)],            # x broadcast too
    [(37, 1), (37, 53), (1, 53)],       # row and column vectors
    [(), (37, 53), ()],                 # 0-d tensors: one element, broadcast
    [(5, 1, 7), (1, 3, 1), (3, 7)],     # every operand broadcast, rank 3
    [(0, 53), (0, 53), (53,)],          # zero-size
])
def test_gated_chain_broadcasting(shapes):
    args = _inputs(shapes, torch.float32)
    if all(torch.broadcast_shapes(*shapes)):
        assert len(fusion.explain(gated, *args).kernels) == 1
    check_against_eager(gated, args, f"gated on {shapes}")


def test_chain_with_python_scalars_and_repeated_inputs():
    def fn(x, y):
        return (x * 2.0 - 1) * torch.sigmoid(x * y) / (1.5 + torch.abs(y)) + x
    args = _inputs([(37, 53), (37, 53)], torch.float32)
    assert len(fusion.explain(fn, *args).kernels) == 1
    check_against_eager(fn, args, "scalars")


def test_views_between_pointwise_ops_are_read_through_strides():
    def fn(x, y):
        return torch.sigmoid(x.t()) * y + x.t().unsqueeze(0)
    x, y = _inputs([(53, 37), (37, 53)], torch.float32)
    report = fusion.explain(fn, x, y)
    assert len(report.kernels) == 1, report
    check_against_eager(fn, [x, y], "views")


def test_two_outputs_of_one_chain_are_written_by_one_kernel():
    def fn(x, g):
        s = torch.sigmoid(g)
        return x * s, s - x
    x, g = _inputs([(37, 53), (37, 53)], torch.float32)
    assert len(fusion.explain(fn, x, g).kernels) == 1
    ours = fusion.compile(fn)(x, g)
    for a, b in zip(ours, fn(x, g)):
        torch.testing.assert_close(a, b)


# ---- random chains from the op table --------------------------------------------------

UNARY = [n for n, d in OPS.items() if d.kind == OpKind.POINTWISE and d.arity == 1 and not d.internal
         and d.operand_domains() == ("real",) and d.sample_attrs(()) == ({},)]
BINARY = [n for n, d in OPS.items() if d.kind == OpKind.POINTWISE and d.arity == 2 and not d.internal
          and d.operand_domains() == ("real", "real") and d.differentiable]


@st.composite
def random_chains(draw):
    """A graph of 1-3 inputs and 2-7 float pointwise ops, each reading earlier values."""
    n_inputs = draw(st.integers(1, 3))
    shapes = draw(st.sampled_from([[(6, 7)] * 3, [(6, 7), (7,), (6, 1)], [(2, 6, 7), (6, 7), ()]]))
    steps = []
    for k in range(draw(st.integers(2, 7))):
        available = n_inputs + k
        if draw(st.booleans()):
            steps.append((draw(st.sampled_from(UNARY)), draw(st.integers(0, available - 1))))
        else:
            steps.append((draw(st.sampled_from(BINARY)), draw(st.integers(0, available - 1)),
                          draw(st.integers(0, available - 1))))
    return shapes[:n_inputs], steps


def _build(shapes, steps, dtype):
    g = Graph()
    values = [g.add_node("input", (), {}, s, dtype, DEVICE, name=f"x{i}") for i, s in enumerate(shapes)]
    for name, *operands in steps:
        values.append(g.call(name, *[values[i] for i in operands]))
    g.outputs = [values[-1]]
    return g


def _eager(steps, tensors):
    values = list(tensors)
    for name, *operands in steps:
        values.append(OPS[name].eager(*[values[i] for i in operands]))
    return values[-1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=random_chains(), seed=st.integers(0, 2**16))
def test_random_chains_are_one_kernel_per_shape_and_match_eager(chain, seed):
    shapes, steps = chain
    gen = torch.Generator().manual_seed(seed)
    tensors = [sample("real", s, torch.float64, gen) for s in shapes]
    graph = _build(shapes, steps, torch.float64)
    plan = plan_of(graph)
    (ours,) = run_plan(plan, tensors)
    groups = [grp for grp in plan.groups if grp.kind == GroupKind.POINTWISE]
    expected = _eager(steps, tensors)
    torch.testing.assert_close(ours, expected, equal_nan=True,
                               msg=lambda m: f"{graph}\n{m}")
    # a single-output chain is one kernel per iteration shape
    assert len(groups) == len({grp.shape for grp in groups}), graph


# ---- the seed's model -------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 37, 256])
def test_binary_classifier_compiles_and_matches_eager(batch):
    torch.manual_seed(0)
    model = BinaryClassifier()
    x = torch.randn(batch, 10, device=DEVICE)
    ours = fusion.compile(model)(x)
    torch.testing.assert_close(ours, model(x))
    report = fusion.explain(model, x)
    assert not report.extern, report.extern
    assert report.kernels, "the ReLU and the Sigmoid run as generated kernels"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=SHORT.get)
def test_binary_classifier_in_other_dtypes(dtype):
    torch.manual_seed(0)
    model = BinaryClassifier().to(dtype)
    x = torch.randn(37, 10, device=DEVICE, dtype=dtype)
    torch.testing.assert_close(fusion.compile(model)(x), model(x), **TOL[dtype])
