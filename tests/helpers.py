"""Shared helpers for the pointwise and autograd tests.

Sample inputs come from the op table (``OpDef.domain``, ``arity``,
``sample_attrs``), so an op added to the table is tested without touching the
tests. References are always eager PyTorch, in float64 where precision matters.
"""
from __future__ import annotations

import math
import os

import torch

from fusion.modes import Mode, mode_for
from fusion.plan import Plan, build_plan
from fusion.runtime import run_plan
from ir.graph import Graph
from ir.ops import OPS

DEVICE = torch.device(os.environ.get("FUSION_TEST_DEVICE", "cpu"))
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SHORT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
         torch.int32: "i32", torch.int64: "i64", torch.bool: "b1"}

# values where ops have kinks and ties (relu(0), abs(0), maximum(x, x), x == y): exact in bf16
EXACT_VALUES = (0.0, 0.5, -0.5, 1.0, -1.0, 2.0)
# everything an op should survive, finite or not
SPECIAL_VALUES = (0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 20.0, -20.0,
                  100.0, -100.0, 1e4, -1e4, float("inf"), float("-inf"), float("nan"))



def special_values(domain: str) -> tuple:
    """The extreme values of ``domain`` an op must handle like eager: every float for
    the unconstrained domains (torch defines log(-1) as NaN), the edges for probabilities."""
    if domain == "probability":
        return (0.0, 1e-30, 1e-7, 0.25, 0.5, 1.0 - 1e-7, 1.0)
    return SPECIAL_VALUES


def _silu_limit(x):
    # silu(x) = x σ(x): +inf and -0 (x e^x -> 0) at ±inf; silu'(x) = σ(x)(1 + x(1 - σ(x))):
    # 1 at +inf (x e^-x -> 0) and 0 at -inf (x e^x -> 0)
    return (x, (1.0,)) if x > 0 else (-0.0, (0.0,))


def _silu_grad_limit(x):
    # silu' -> 1 and 0 as above; silu''(x) = σ'(x)(2 - x tanh(x/2)) -> 0 at both ends (x e^-|x| -> 0)
    return (1.0, (0.0,)) if x > 0 else (0.0, (0.0,))


def _bce_logits_limit(z, y):
    # max(z, 0) - z y + log(1 + e^-|z|) = |z| w + log(1 + e^-|z|) with w = 1 - y (z >= 0) or y:
    # +inf, or 0 where w = 0 (log(1 + e^-|z|) -> 0); d/dz = σ(z) - y -> 1 - y or -y; d/dy = -z
    if math.isnan(y):
        return None
    w = 1.0 - y if z > 0 else y
    return (0.0 if w == 0 else math.inf), ((1.0 - y) if z > 0 else -y, -z)


# Where an operand is infinite and eager's float64 formula gives NaN (inf * 0, inf - inf) though
# the function has a limit: op -> (the row's operand values -> (forward, gradient per operand)),
# called for rows whose first operand is ±inf (None: no limit; eager's value stands).
def _gelu_limit(x):
    # gelu(x) = x Φ(x) (either form): +inf and -0 (x e^{-x²/2} -> 0) at ±inf; its derivative
    # Φ(x) + x φ(x) -> 1 and 0 (eager's x Φ(x) is -inf * 0 = NaN at -inf)
    return (x, (1.0,)) if x > 0 else (-0.0, (0.0,))


def _gelu_grad_limit(x):
    # gelu' -> 1 and 0 as above; gelu''(x) = φ(x)(2 - x²) (erf form; alike for tanh) -> 0 both ends
    return (1.0, (0.0,)) if x > 0 else (0.0, (0.0,))


LIMITS = {"silu": _silu_limit, "silu_grad": _silu_grad_limit, "bce_logits": _bce_logits_limit,
          "bce_logits_checked": _bce_logits_limit, "gelu": _gelu_limit, "gelu_grad": _gelu_grad_limit,
          "gelu_tanh_grad": _gelu_grad_limit}


def with_limits(name: str, rows: list, values: torch.Tensor, which: int | None = None) -> torch.Tensor:
    """Eager's float64 ``values`` (one per row of operands) with ``LIMITS`` put in: the forward
    (``which=None``) or the gradient of operand ``which``."""
    values = values.clone()
    for i, row in enumerate(rows):
        if name in LIMITS and isinstance(row[0], float) and math.isinf(row[0]):
            limit = LIMITS[name](*row)
            if limit is not None:
                values[i] = limit[0] if which is None else limit[1][which]
    return values


def eager_with_limits(name: str):
    """``OPS[name].eager`` on same-shaped tensors, with ``LIMITS`` put in where its first
    operand is infinite, forward and gradient: the float64 oracle of programs whose values
    reach ±inf (random graphs)."""
    eager, limit = OPS[name].eager, LIMITS[name]

    def put(values, xs, value_of):
        for idx in torch.isinf(xs[0]).nonzero().tolist():
            found = limit(*(x[tuple(idx)].item() for x in xs))
            if found is not None:
                values[tuple(idx)] = value_of(found, tuple(idx))
        return values

    class WithLimits(torch.autograd.Function):
        @staticmethod
        def forward(ctx, attrs, *xs):
            assert all(x.shape == xs[0].shape for x in xs), "same-shaped operands only"
            ctx.save_for_backward(*xs)
            ctx.attrs = attrs
            return put(eager(*xs, **attrs), xs, lambda found, idx: found[0])

        @staticmethod
        def backward(ctx, g):
            xs = [x.detach().requires_grad_() for x in ctx.saved_tensors]
            with torch.enable_grad():
                grads = torch.autograd.grad(eager(*xs, **ctx.attrs), xs, g, allow_unused=True)
            return (None, *[None if grad is None else
                            put(grad.clone(), xs, lambda found, idx, k=k: g[idx] * found[1][k])
                            for k, grad in enumerate(grads)])
    return lambda *xs, **attrs: WithLimits.apply(attrs, *xs)


# the one place tolerances live. Kernels compute fp16/bf16 in fp32 and round once
# at the store: within one ulp of the float64 result rounded to the type; the
# interpreter truncates fp32 -> bf16 stores (one more bf16 ulp, as assert_close's bf16
# default already allows).
TOL = {torch.float64: dict(rtol=1e-7, atol=1e-7), torch.float32: dict(rtol=1.3e-6, atol=1e-5),
       torch.float16: dict(rtol=1e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5)}


INTERPRETED = mode_for(DEVICE) == Mode.INTERPRETER


def one_ulp(exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` numbers at each value of ``exact`` (float64)."""
    info = torch.finfo(dtype)
    mag = exact.abs().clamp(min=info.tiny)
    return info.eps * torch.exp2(torch.floor(torch.log2(mag)))


def sample(domain: str, shape, dtype: torch.dtype, gen: torch.Generator, *, kinks: bool = True,
           layout: str = "contiguous") -> torch.Tensor:
    """A tensor of ``shape`` drawn from an op-table domain (see ``ir.ops.SAMPLE_DOMAINS``).

    ``kinks``: sprinkle exact values (0, ±0.5, ±1, 2) in, for ties and kinks;
    gradcheck wants them out. ``layout``: contiguous, "sliced" (every other
    element of the last dimension) or "transposed" (a reversed permutation).
    """
    shape = tuple(shape)
    if layout == "sliced" and shape:
        return sample(domain, shape[:-1] + (2 * shape[-1],), dtype, gen, kinks=kinks)[..., ::2]
    if layout == "transposed" and len(shape) >= 2:
        t = sample(domain, tuple(reversed(shape)), dtype, gen, kinks=kinks)
        return t.permute(*reversed(range(len(shape))))
    if domain == "bool":
        return (torch.rand(shape, generator=gen) < 0.5).to(DEVICE)
    if domain == "real":
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        if kinks:
            exact = torch.tensor(EXACT_VALUES, dtype=torch.float64)
            pick = torch.randint(len(EXACT_VALUES), shape, generator=gen)
            x = torch.where(torch.rand(shape, generator=gen) < 0.25, exact[pick], x)
    elif domain == "probability":
        x = 0.05 + 0.9 * torch.rand(shape, generator=gen, dtype=torch.float64)
    elif domain in ("positive", "nonzero"):
        x = 0.5 + 1.5 * torch.rand(shape, generator=gen, dtype=torch.float64)
        if domain == "nonzero":
            x = torch.where(torch.rand(shape, generator=gen) < 0.5, -x, x)
    else:
        raise ValueError(f"unknown sample domain {domain!r}")
    return x.to(dtype).to(DEVICE)


def scalar_for(domain: str):
    """A Python scalar operand from ``domain``."""
    return {"real": -1.5, "positive": 1.5, "nonzero": -1.5, "probability": 0.25, "bool": True}[domain]


# shapes of the operands of an op with ``arity`` tensor operands, per case;
# odd sizes everywhere, so no block or vector width divides them
def shape_cases(arity: int) -> dict:
    full = (9, 7, 5)
    cases = {"odd": [full] * arity, "zero_size": [(0, 5)] * arity, "zero_dim": [()] * arity}
    if arity > 1:
        pool = [(9, 1, 5), (7, 1), (5,), (9, 7, 1)]
        cases["broadcast"] = [pool[k % len(pool)] for k in range(arity)]
        cases["zero_dim_and_full"] = [()] + [full] * (arity - 1)
    return cases


LAYOUT_CASES = {"transposed": "transposed", "sliced": "sliced"}


def op_graph(name: str, operands: list, attrs: dict, extra_neg: bool = False) -> Graph:
    """The IR graph ``name(*operands, **attrs)``: tensors become graph inputs,
    Python scalars stay constants. ``extra_neg`` also returns ``neg`` of the
    result, so a view's result is read by a kernel."""
    g = Graph()
    ins = [g.add_node("input", (), {}, o.shape, o.dtype, o.device, name=f"x{k}")
           if isinstance(o, torch.Tensor) else o for k, o in enumerate(operands)]
    out = g.call(name, *ins, **attrs)
    g.outputs = [out, g.call("neg", out)] if extra_neg else [out]
    return g


def run_graph(graph: Graph, tensors: list) -> list:
    """Compile ``graph`` through the whole pipeline and run it (interpreter on CPU)."""
    return run_plan(build_plan(graph, mode_for(DEVICE)), list(tensors))


def plan_of(graph: Graph) -> Plan:
    return build_plan(graph, mode_for(DEVICE))


def eager_op(name: str, operands: list, attrs: dict, dtype: torch.dtype | None = None):
    """The op's eager torch reference, with floating tensors cast to ``dtype`` first."""
    if dtype is not None:
        operands = [o.to(dtype) if isinstance(o, torch.Tensor) and o.is_floating_point() else o
                    for o in operands]
    return OPS[name].eager(*operands, **attrs)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Same dtype and shape; values within the tolerance of ``actual``'s dtype (NaNs match)."""
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    tol = TOL.get(actual.dtype, dict(rtol=0, atol=0))
    torch.testing.assert_close(actual, expected, equal_nan=True, **tol,
                               msg=lambda m: f"{msg}\n{m}")


def count_kernels(fn, *args) -> tuple[int, int]:
    """(forward, backward) generated kernels that ``fusion.explain`` reports."""
    import fusion
    report = fusion.explain(fn, *args)
    return len(report.kernels), len(report.backward_kernels)


def trace_keeping_inplace(root):
    """fx with in-place ops kept (ir.inplace_ops), without capture's refusals: for tests of
    the functionalization pass itself, on graphs fusion.compile would send to Dynamo."""
    import torch.fx as fx

    from ir.inplace_ops import InplaceTracer
    tracer = InplaceTracer()
    graph = tracer.trace(root)
    return fx.GraphModule(tracer.root, graph)
