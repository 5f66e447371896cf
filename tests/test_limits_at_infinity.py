"""Every pointwise op of the table and its derivative at ±inf and NaN.

Each operand takes ±inf, NaN and a few values of its domain (every combination
with at least one non-finite operand); the forward result and every input's
gradient (upstream gradient 1) must be what eager PyTorch computes in float64,
NaN where eager's is NaN, except where that NaN comes from the formula (inf·0,
inf − inf) and the function has a limit: those are stated in ``helpers.LIMITS`` with
the mathematics that gives them, and ours must return the limit. So a NaN of ours is
always a mathematical NaN (log(-1), inf − inf of the function itself).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from fusion.runtime import run_plan
from ir.autodiff import backward_graph
from ir.ops import OPS, OpKind

from helpers import DEVICE, SHORT, eager_op, op_graph, plan_of, run_graph, with_limits

INF, NAN = math.inf, math.nan

# the finite values each sample domain contributes; every float operand also takes ±inf and NaN
# (probabilities and targets only NaN: torch rejects a probability outside [0, 1])
FINITE = {"real": (0.0, 1.5, -2.0), "positive": (0.5, 2.0), "nonzero": (1.5, -0.75),
          "probability": (0.0, 0.25, 1.0), "bool": (True, False)}
NON_FINITE = {"real": (INF, -INF, NAN), "positive": (INF, -INF, NAN), "nonzero": (INF, -INF, NAN),
              "probability": (NAN,), "bool": ()}

def _cases():
    for name, d in OPS.items():
        if d.kind != OpKind.POINTWISE:
            continue
        for dtype in (torch.float32, torch.float64):
            yield pytest.param(name, dtype, id=f"{name}-{SHORT[dtype]}")


def _grid(name, d, dtype):
    """Operand tensors: every combination of values with at least one non-finite operand
    that eager accepts (it rejects a NaN probability in binary_cross_entropy)."""
    domains = d.operand_domains()
    rows = [combo for combo in itertools.product(*[NON_FINITE[x] + FINITE[x] for x in domains])
            if any(isinstance(v, float) and not math.isfinite(v) for v in combo)
            and _eager_accepts(name, combo, domains)]
    if not rows:
        return [], []
    cols = list(zip(*rows))
    return rows, [torch.tensor(c, dtype=torch.bool if dom == "bool" else dtype, device=DEVICE)
                  for c, dom in zip(cols, domains)]


def _eager_accepts(name, row, domains) -> bool:
    try:
        eager_op(name, [torch.tensor([v], dtype=torch.bool if dom == "bool" else torch.float64)
                        for v, dom in zip(row, domains)], OPS[name].sample_attrs((1,))[0])
        return True
    except RuntimeError:
        return False


def _assert_same(ours, expected, what):
    assert ours.dtype == expected.dtype, what
    nan = expected.isnan()
    assert torch.equal(ours.isnan(), nan), f"{what}: NaN at {ours.isnan().tolist()}, expected at {nan.tolist()}"
    torch.testing.assert_close(ours[~nan], expected[~nan], msg=lambda m: f"{what}\n{m}")


@pytest.mark.parametrize("name,dtype", _cases())
def test_forward_and_gradients_at_infinity(name, dtype):
    d = OPS[name]
    rows, operands = _grid(name, d, dtype)
    if not rows:
        pytest.skip(f"eager {name} rejects every non-finite operand")
    for attrs in d.sample_attrs(operands[0].shape):
        if attrs.get("dtype") in (torch.int32, torch.int64, torch.bool):
            continue  # inf and NaN have no integer value: torch's result is unspecified
        label = f"{name}({attrs}) {SHORT[dtype]} at {rows}"
        graph = op_graph(name, operands, attrs)
        (ours,) = run_graph(graph, operands)
        eager64 = [o.double() if o.is_floating_point() else o for o in operands]
        eager64 = [o.requires_grad_() if o.is_floating_point() and d.differentiable else o for o in eager64]
        expected = eager_op(name, eager64, attrs)
        _assert_same(ours, with_limits(name, rows, expected.detach()).to(ours.dtype), f"{label}: forward")
        if not (d.differentiable and expected.is_floating_point()):
            continue
        needs = tuple(o.is_floating_point() for o in operands)
        bwd = backward_graph(graph.nodes[len(operands):], graph.inputs, graph.outputs, needs)
        grads = run_plan(plan_of(bwd.graph), list(operands) + [torch.ones_like(ours)])
        wanted = [o for o in eager64 if o.is_floating_point()]
        eager_grads = torch.autograd.grad(expected, wanted, torch.ones_like(expected), allow_unused=True)
        for k, (g, e) in enumerate(zip(grads, eager_grads)):
            e = torch.zeros_like(wanted[k]) if e is None else e
            _assert_same(g, with_limits(name, rows, e, k).to(g.dtype), f"{label}: d/d operand {k}")
