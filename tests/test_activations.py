"""The activations around the sigmoid gates, by every torch spelling, against eager.

The op table's entries (gelu, softplus, clamp, hardtanh, expm1, rsqrt) are swept
by test_op_table.py and test_autograd.py; this file checks what those sweeps do
not reach: each spelling (functional, nn module with its attributes, Tensor
method, Dynamo's ``torch._C._nn`` builtin) captures with nothing left to eager
torch, and the decompositions (glu, hardsigmoid, hardswish, leaky_relu,
elu/selu/celu, logsigmoid, relu6, clamp_min/max) match eager forward in every
float type, at extreme values and in their gradients at the kinks. Then: each
fuses into a sigmoid chain as one kernel, nn.GLU alone is one kernel each way,
inplace=True is functionalized, and the fp32 accuracy against float64.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

import fusion
import fusion.dynamo
from ir.ops import OPS

from helpers import DEVICE, FLOATS, INTERPRETED, SHORT, SPECIAL_VALUES, TOL, one_ulp, sample

# label -> factory of the callable (modules are built fresh for every test)
SPELLINGS = {
    "F.glu": lambda: F.glu, "F.glu(dim=0)": lambda: lambda x: F.glu(x, 0),
    "_C._nn.glu": lambda: lambda x: torch._C._nn.glu(x, -1), "nn.GLU(0)": lambda: nn.GLU(0),
    "F.hardsigmoid": lambda: F.hardsigmoid, "_C._nn.hardsigmoid": lambda: torch._C._nn.hardsigmoid,
    "nn.Hardsigmoid": lambda: nn.Hardsigmoid(),
    "F.hardswish": lambda: F.hardswish, "_C._nn.hardswish": lambda: torch._C._nn.hardswish,
    "nn.Hardswish": lambda: nn.Hardswish(),
    "F.gelu": lambda: F.gelu, "F.gelu(tanh)": lambda: lambda x: F.gelu(x, approximate="tanh"),
    "nn.GELU": lambda: nn.GELU(), "nn.GELU(tanh)": lambda: nn.GELU("tanh"),
    "F.softplus": lambda: F.softplus, "F.softplus(x, 2, 5)": lambda: lambda x: F.softplus(x, 2, 5),
    "F.softplus(beta=0.5)": lambda: lambda x: F.softplus(x, beta=0.5),
    "nn.Softplus(0.5, 3)": lambda: nn.Softplus(0.5, 3.0),
    "F.relu6": lambda: F.relu6, "_C._nn.relu6": lambda: torch._C._nn.relu6, "nn.ReLU6": lambda: nn.ReLU6(),
    "F.hardtanh(x, -2, 3)": lambda: lambda x: F.hardtanh(x, -2.0, 3.0),
    "_C._nn.hardtanh": lambda: torch._C._nn.hardtanh,
    "nn.Hardtanh(-0.5, 0.25)": lambda: nn.Hardtanh(-0.5, 0.25),
    "torch.clamp": lambda: lambda x: torch.clamp(x, -1, 1), "x.clamp(min=0)": lambda: lambda x: x.clamp(min=0),
    "torch.clip": lambda: lambda x: torch.clip(x, max=0.5),
    "torch.clamp_min": lambda: lambda x: torch.clamp_min(x, 0.5), "x.clamp_max": lambda: lambda x: x.clamp_max(-0.5),
    "F.leaky_relu": lambda: F.leaky_relu, "F.leaky_relu(x, 0.2)": lambda: lambda x: F.leaky_relu(x, 0.2),
    "_C._nn.leaky_relu": lambda: lambda x: torch._C._nn.leaky_relu(x, 0.3),
    "nn.LeakyReLU(0.1)": lambda: nn.LeakyReLU(0.1),
    "F.elu": lambda: F.elu, "F.elu(alpha=0.5)": lambda: lambda x: F.elu(x, alpha=0.5),
    "nn.ELU(2)": lambda: nn.ELU(2.0),
    "_C._nn.elu(x, 1.5, 2, 0.5)": lambda: lambda x: torch._C._nn.elu(x, 1.5, 2.0, 0.5),
    "F.selu": lambda: F.selu, "torch.selu": lambda: torch.selu, "nn.SELU": lambda: nn.SELU(),
    "F.celu(x, 0.7)": lambda: lambda x: F.celu(x, 0.7), "torch.celu": lambda: torch.celu,
    "nn.CELU(1.3)": lambda: nn.CELU(1.3),
    "F.logsigmoid": lambda: F.logsigmoid, "nn.LogSigmoid": lambda: nn.LogSigmoid(),
    "torch.expm1": lambda: torch.expm1, "x.expm1": lambda: lambda x: x.expm1(),
    "torch.special.expm1": lambda: torch.special.expm1,
    "torch.rsqrt": lambda: torch.rsqrt, "x.rsqrt": lambda: lambda x: x.rsqrt(),
}
POSITIVE = {"torch.rsqrt", "x.rsqrt"}
# the exact values where these functions have kinks (hardswish at +-3, relu6 at 0 and 6, ...)
KINKS = (-6.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 3.0)


def _fn(label):
    """The spelling as fx traces it: a module, or a Python function calling the builtin."""
    f = SPELLINGS[label]()
    return f if isinstance(f, nn.Module) else (lambda x: f(x))


def _input(label, shape, dtype, seed=0, kinks=True):
    x = sample("positive" if label in POSITIVE else "real", shape, torch.float64,
               torch.Generator().manual_seed(seed), kinks=False)
    if kinks and label not in POSITIVE:
        x.view(-1)[:len(KINKS)] = torch.tensor(KINKS, dtype=torch.float64)
    return x.to(dtype)


def _exact(fn, x):
    """eager in float64, rounded to x's type."""
    return fn(x.double()).to(x.dtype)


@pytest.mark.parametrize("label", SPELLINGS)
def test_spelling_captures_with_nothing_left_to_eager(label):
    fn = _fn(label)
    x = _input(label, (6, 10), torch.float32)
    report = fusion.explain(fn, x)
    assert not report.extern, report.extern
    assert report.kernels, f"{label}: no generated kernel\n{report}"
    ours = fusion.compile(fn)(x)
    torch.testing.assert_close(ours, fn(x), **TOL[torch.float32])
    torch.testing.assert_close(ours, _exact(fn, x), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", FLOATS, ids=SHORT.get)
@pytest.mark.parametrize("label", SPELLINGS)
def test_spelling_matches_eager_in_every_float_type(label, dtype):
    fn = _fn(label)
    x = _input(label, (6, 10), dtype, seed=1).t()  # non-contiguous too
    ours = fusion.compile(fn)(x)
    assert ours.dtype == fn(x).dtype
    err = (ours.double() - fn(x.double())).abs()
    if dtype == torch.bfloat16 and INTERPRETED:  # the interpreter truncates bf16 stores
        err = (err - one_ulp(fn(x.double()), dtype)).clamp(min=0)
    tol = TOL[dtype]
    assert (err <= tol["atol"] + tol["rtol"] * fn(x.double()).abs()).all(), f"{label} {SHORT[dtype]}: {err.max()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=SHORT.get)
@pytest.mark.parametrize("label", SPELLINGS)
def test_spelling_at_extreme_values(label, dtype):
    """0, -0, tiny, huge, +-inf, NaN as eager in float64; where eager is NaN at an infinity,
    our value is the limit (eager at +-1e100 in float64) or not finite."""
    fn = _fn(label)
    x = torch.tensor(SPECIAL_VALUES, dtype=dtype, device=DEVICE)
    x = torch.stack([x, x], -1).unsqueeze(0).expand(2, -1, -1).contiguous()  # glu: even sizes
    ours = fusion.compile(fn)(x)
    expected = _exact(fn, x)
    limit = fn(x.double().nan_to_num(nan=math.nan, posinf=1e100, neginf=-1e100)).to(dtype)
    undefined = expected.isnan() & ~torch.isclose(ours, limit)
    assert not torch.isfinite(ours[undefined]).any(), f"{label}: a number where eager has NaN"
    keep = ~expected.isnan()
    torch.testing.assert_close(ours[keep], expected[keep], msg=lambda m: f"{label}\n{m}")


@pytest.mark.parametrize("label", SPELLINGS)
def test_spelling_gradient_matches_eager_at_kinks(label):
    """float64 gradients against eager autograd, ties and kinks included (relu6'(0) = 0,
    hardswish'(-3) = -1/2, leaky_relu'(0) = slope, elu'(0) = alpha)."""
    fn = _fn(label)
    x = _input(label, (6, 10), torch.float64, seed=2)
    g = sample("real", fn(x).shape, torch.float64, torch.Generator().manual_seed(3), kinks=False)
    ours, expected = (x.clone().requires_grad_() for _ in range(2))
    fusion.compile(fn)(ours).backward(g)
    fn(expected).backward(g)
    torch.testing.assert_close(ours.grad, expected.grad, msg=lambda m: f"{label}\n{m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=SHORT.get)
@pytest.mark.parametrize("label", SPELLINGS)
def test_spelling_gradient_at_extreme_finite_values(label, dtype):
    """Never NaN for finite input, backward too: a branch where() drops must not meet inf * 0
    (elu's exp(x) past 88.7 in fp32); the gradient is eager's in float64."""
    fn = _fn(label)
    finite = [v for v in SPECIAL_VALUES if math.isfinite(v)] + [88.75, -88.75, 89.5, 700.0, 710.0, -750.0]
    x = torch.tensor(finite, dtype=dtype, device=DEVICE)
    x = torch.stack([x, x], -1).unsqueeze(0).expand(2, -1, -1).contiguous()
    x = x[x > 0].reshape(2, -1, 2) if label in POSITIVE else x
    ours, wide = x.clone().requires_grad_(), x.double().requires_grad_()
    (g_ours,) = torch.autograd.grad(fusion.compile(fn)(ours).sum(), ours)
    (g_wide,) = torch.autograd.grad(fn(wide).sum(), wide)
    expected = g_wide.to(dtype)
    assert torch.isfinite(g_ours[torch.isfinite(expected)]).all(), f"{label}: {g_ours}"
    torch.testing.assert_close(g_ours, expected, msg=lambda m: f"{label}\n{m}")


# ---- fusion -----------------------------------------------------------------------------

class _Chain(nn.Module):
    """x and y through sigmoids on both sides of the activation (a submodule, for modules)."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x, y):
        return torch.sigmoid(y) * self.act(x * torch.sigmoid(x) - y)


@pytest.mark.parametrize("label", [k for k in SPELLINGS if "glu" not in k.lower()])
def test_activation_fuses_into_a_sigmoid_chain(label):
    fn = _Chain(_fn(label))
    x, y = _input(label, (37, 53), torch.float32), _input(label, (53,), torch.float32, seed=4, kinks=False)
    if label in POSITIVE:
        y = -y  # x * sigmoid(x) - y stays positive
    x.requires_grad_()
    report = fusion.explain(fn, x, y)
    assert len(report.kernels) == 1 and len(report.backward_kernels) == 1, f"{label}\n{report}"
    assert not report.extern, report.extern
    ours = fusion.compile(fn)(x, y)
    torch.testing.assert_close(ours, fn(x, y), **TOL[torch.float32])
    (dx,) = torch.autograd.grad(ours.sum(), x)
    (ex,) = torch.autograd.grad(fn(x, y).sum(), x)
    torch.testing.assert_close(dx, ex, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [-1, 0])
def test_nn_glu_alone_is_one_kernel_forward_and_one_backward(dim):
    model = nn.GLU(dim)
    x = sample("real", (38, 64), torch.float32, torch.Generator().manual_seed(5)).requires_grad_()
    report = fusion.explain(model, x)
    assert len(report.kernels) == 1 and len(report.backward_kernels) == 1, report
    assert not report.extern, report.extern
    ours = fusion.compile(model)(x)
    torch.testing.assert_close(ours, model(x))
    (dx,) = torch.autograd.grad(ours, x, ours.detach())
    (ex,) = torch.autograd.grad(model(x), x, ours.detach())
    torch.testing.assert_close(dx, ex)
    x64 = x.detach().double()[:6, :8].requires_grad_()
    assert torch.autograd.gradcheck(fusion.compile(nn.GLU(dim)), (x64,))


def test_glu_of_an_odd_size_raises_eagers_error():
    with pytest.raises(RuntimeError, match="even"):
        fusion.compile(F.glu)(torch.randn(4, 5, device=DEVICE))


class _InPlace(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x * 2.0) + 1.0


@pytest.mark.parametrize("fn", [
    lambda x: F.leaky_relu(x * 2.0, 0.2, inplace=True) + 1.0, lambda x: F.elu(x * 2.0, inplace=True) + 1.0,
    lambda x: F.hardtanh(x * 2.0, -1.0, 1.0, True) + 1.0, _InPlace(nn.Hardswish(inplace=True)),
    _InPlace(nn.ReLU6(inplace=True)), _InPlace(nn.LeakyReLU(0.1, inplace=True)),
], ids=["leaky_relu", "elu", "hardtanh_positional", "nn.Hardswish", "nn.ReLU6", "nn.LeakyReLU"])
def test_inplace_activations_are_functionalized_and_fused(fn):
    """inplace=True mutates the activation's input: the functionalization pass rewrites the
    call into its out-of-place form, which fuses like any other."""
    x = torch.randn(5, 7, device=DEVICE)
    assert not fusion.explain(fn, x).extern
    torch.testing.assert_close(fusion.compile(fn)(x), fn(x))


def test_inplace_activation_of_an_input_mutates_it_as_eager():
    def fn(x):
        return torch.sigmoid(F.elu(x, 0.5, inplace=True))
    x = torch.randn(5, 7, device=DEVICE)
    ours_x, eager_x = x.clone(), x.clone()
    torch.testing.assert_close(fusion.compile(fn)(ours_x), fn(eager_x))
    torch.testing.assert_close(ours_x, eager_x)


@pytest.mark.parametrize("name,alias,args", [
    ("hardtanh", F.hardtanh, (-1.0, 1.0, True)), ("hardtanh", F.relu6, (True,)),
    ("softplus", F.softplus, (1.0, 20.0, 3.0)), ("gelu", F.gelu, ("erf",)), ("clamp", torch.clamp, ())])
def test_parse_refuses_what_it_cannot_fuse(name, alias, args):
    """inplace=True that reached lowering without functionalization, an extra argument, an
    unknown GELU form, a clamp without bounds: NotImplementedError, i.e. left to eager torch."""
    kwargs = {"approximate": args[0]} if name == "gelu" else {}
    with pytest.raises(NotImplementedError):
        OPS[name].parse(alias, ("x", *([] if name == "gelu" else args)), kwargs)


@pytest.mark.parametrize("make,attr,value", [
    (lambda: nn.LeakyReLU(0.1), "negative_slope", 0.3), (lambda: nn.GELU(), "approximate", "tanh"),
    (lambda: nn.Softplus(1.0), "beta", 3.0), (lambda: nn.ELU(), "alpha", 0.2), (lambda: nn.GLU(-1), "dim", 0),
    (lambda: nn.Hardtanh(-1.0, 1.0), "max_val", 0.5)], ids=lambda v: v if isinstance(v, str) else "")
def test_module_attributes_read_at_capture_are_guarded(make, attr, value):
    """Lowering bakes a module's negative_slope (approximate, beta...) into the graph: a
    change is seen, as eager sees it."""
    model = nn.Sequential(make())
    compiled = fusion.compile(model)
    x = torch.randn(4, 6, device=DEVICE)
    torch.testing.assert_close(compiled(x), model(x))
    setattr(model[0], attr, value)
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.cpu_only
def test_dynamo_spellings_are_fused():
    """What Dynamo records (torch._C._nn.gelu/softplus/log_sigmoid, F.hardsigmoid, modules
    inlined into F.leaky_relu(x, 0.1, False), ...) lowers with nothing left to eager."""
    model = nn.Sequential(nn.GELU("tanh"), nn.Softplus(2.0), nn.Hardswish(), nn.LeakyReLU(0.1), nn.ELU(),
                          nn.ReLU6(), nn.Hardsigmoid(), nn.LogSigmoid(), nn.SELU(), nn.GLU())

    def fn(x):
        return model(F.gelu(x) + torch.rsqrt(x.abs() + 1) + F.softplus(x, 1.5, 10.0) - x.clamp(min=-1))

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return fusion.dynamo.fusion_backend(gm, example_inputs)

    torch._dynamo.reset()
    x = torch.randn(9, 16)
    ours = torch.compile(fn, backend=backend)(x)
    torch.testing.assert_close(ours, fn(x), **TOL[torch.float32])
    (gm,) = graphs
    targets = {getattr(n.target, "__name__", n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert {"gelu", "softplus", "log_sigmoid", "hardsigmoid", "leaky_relu"} <= targets, targets
    report = fusion.explain(gm, x)
    assert not report.extern, report.extern


# ---- fp32 accuracy against float64 ------------------------------------------------------

def _normal_cdf(x):
    # erfc keeps the relative accuracy of the left tail (torch.special.ndtr does not: it is
    # 2x off at x = -8.4 in float64)
    return 0.5 * torch.special.erfc(-x / math.sqrt(2))


def _gelu_ref(x):
    return x * _normal_cdf(x), _normal_cdf(x) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _gelu_tanh_ref(x):
    w = x * (1.5957691216057308 + 0.07135481627260025 * x * x)
    return x * torch.sigmoid(w), torch.sigmoid(w) + x * torch.sigmoid(w) * torch.sigmoid(-w) * (
        1.5957691216057308 + 3 * 0.07135481627260025 * x * x)


# label: (ours, float64 reference value and derivative, inputs, max fp32 ulp forward / backward),
# bounds a little above what Triton's interpreter measures (no FMA contraction besides the
# explicit tl.fma calls); docs/ACTIVATIONS.md has the table with eager's errors beside ours.
# gelu_tanh: its derivative's two terms cancel near its zero at x = -0.7518 (thousands of ulps
# of the tiny result there, as eager's), and where sigmoid(w) is subnormal (x < -10.9, results
# below 1e-35) the tail rounds twice
ACCURACY = {
    "gelu": (F.gelu, _gelu_ref, "real", 5.5, 6.5),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), _gelu_tanh_ref, "real", 11, 3000),
    # gradients are sigmoids: the numerics policy's fp32 sigmoid (within ~1.5 ulp)
    "softplus": (F.softplus, lambda x: (F.softplus(x), torch.sigmoid(x)), "real", 3.5, 2),
    "logsigmoid": (F.logsigmoid, lambda x: (F.logsigmoid(x), torch.sigmoid(-x)), "real", 3.5, 2),
    "elu": (F.elu, lambda x: (torch.where(x > 0, x, torch.expm1(x)), torch.where(x > 0, 1.0, torch.exp(x))),
            "real", 1, 1),
    "expm1": (torch.expm1, lambda x: (torch.expm1(x), torch.exp(x)), "real", 2, 1),
    "rsqrt": (torch.rsqrt, lambda x: (torch.rsqrt(x), -0.5 * torch.rsqrt(x) / x), "positive", 1.5, 2),
}


def accuracy_grid(domain: str) -> torch.Tensor:
    """fp32 inputs: an even grid over [-15, 15] plus magnitudes from 1e-30 (log-spaced), or
    1e-30..1e30 for positive-only functions."""
    if domain == "positive":
        return torch.logspace(-30, 30, 1 << 15, dtype=torch.float64).float()
    tiny = torch.logspace(-30, math.log10(15), 1 << 13, dtype=torch.float64)
    return torch.cat([torch.linspace(-15, 15, 1 << 16, dtype=torch.float64), tiny, -tiny]).float()


def ulp_errors(fn, reference, x: torch.Tensor) -> tuple[float, float]:
    """Max error of fn's fp32 value and gradient in fp32 ulps of the float64 reference, where
    the reference is a normal fp32 number (subnormal results carry fewer digits; results
    beyond fp32's range are inf)."""
    xg = x.clone().requires_grad_()
    value = fn(xg)
    (grad,) = torch.autograd.grad(value.sum(), xg)
    errors = []
    for ours, exact in zip((value.detach(), grad), reference(x.double())):
        info = torch.finfo(torch.float32)
        normal = (exact.abs() >= info.tiny) & (exact.abs() <= info.max)
        err = (ours.double() - exact).abs() / one_ulp(exact, torch.float32)
        errors.append(float(err[normal].max()))
    return tuple(errors)


@pytest.mark.cpu_only
@pytest.mark.parametrize("label", ACCURACY)
def test_fp32_accuracy_against_float64(label):
    fn, reference, domain, fwd_bound, grad_bound = ACCURACY[label]
    x = accuracy_grid(domain)
    fwd, grad = ulp_errors(fusion.compile(lambda x: fn(x)), reference, x)
    eager_fwd, eager_grad = ulp_errors(fn, reference, x)
    print(f"{label}: max fp32 ulp forward {fwd:.2f} (eager {eager_fwd:.3g}), "
          f"backward {grad:.2f} (eager {eager_grad:.3g})")
    assert fwd <= fwd_bound and grad <= grad_bound, (fwd, grad)


@pytest.mark.cpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=SHORT.get)
@pytest.mark.parametrize("label", ACCURACY)
def test_half_types_exhaustively_within_one_ulp(label, dtype):
    """Every finite fp16/bf16 input (all 65,536 bit patterns): value and gradient within one
    ulp of float64 (computed in fp32, rounded once); the interpreter truncates bf16 stores,
    one ulp more there."""
    fn, reference, domain, _, _ = ACCURACY[label]
    x = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[torch.isfinite(x) & ((x > 0) if domain == "positive" else True)]
    xg = x.clone().requires_grad_()
    value = fusion.compile(lambda x: fn(x))(xg)
    (grad,) = torch.autograd.grad(value, xg, torch.ones_like(value))
    allowed = 1.0 + (1.0 if dtype == torch.bfloat16 and INTERPRETED else 0.0)
    info = torch.finfo(dtype)
    for what, ours, exact in zip(("value", "gradient"), (value.detach(), grad), reference(x.double())):
        normal = (exact.abs() >= info.tiny) & (exact.abs() <= info.max)
        err = (ours.double() - exact).abs() / one_ulp(exact, dtype)
        worst = err[normal].argmax()
        assert err[normal][worst] <= allowed, f"{label} {what}: {err[normal][worst]:.2f} ulp at {x[normal][worst]}"
