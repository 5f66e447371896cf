"""The precision policy by dtype (docs/NUMERICS.md), checked as a GPU would compute it.

Every sweep runs the generated kernels in Triton's interpreter under
``codegen.triton_compat.gpu_math``: each operation the GPU approximates
(ex2.approx, rsqrt.approx, div.full...) returns the edge of its documented error,
towards +inf and then towards -inf, so a passing sweep bounds what the GPU returns.

* fp16/bf16: every finite value of the type (one launch of 64K elements), forward
  and gradient (upstream gradient 1): within 1 ulp of the float64 value correctly
  rounded to the type (sigmoid, silu, tanh and the chain x·σ(x)).
* fp32: 2**18 values over [-110, 110] and the tails (tiny |x|, the saturations,
  the subnormal results below x = -87.3): forward within 2 ulp, gradient within 4;
  no NaN or infinity for a finite input. silu' is measured in ulps of the larger of
  the terms σ(x) and x σ'(x) it is the sum of (they cancel at its zero x0 = -1.2785,
  where any fp32 evaluation of σ leaves an error of that size).

The float64 references are the closed forms, sign-split so that they are exact in
the tails (eager's float64 σ(1 - σ) is itself 0 from x = 37 on).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusion
from codegen.triton_compat import gpu_math

from helpers import DEVICE, INTERPRETED

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="the GPU's approximations are emulated in the interpreter")

FUNCTIONS = {"sigmoid": lambda x: torch.sigmoid(x), "silu": F.silu, "tanh": lambda x: torch.tanh(x),
             "x*sigmoid(x)": lambda x: x * torch.sigmoid(x)}
MANTISSA = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}


def reference(name: str, x: torch.Tensor):
    """(forward, derivative, scale) in float64; scale: what silu' is measured against."""
    x = x.double()
    z = torch.exp(-x.abs())
    s = torch.where(x >= 0, 1 / (1 + z), z / (1 + z))
    ds = z / (1 + z) ** 2
    if name == "sigmoid":
        return s, ds, None
    if name == "tanh":
        z2 = torch.exp(-2 * x.abs())
        return torch.tanh(x), 4 * z2 / (1 + z2) ** 2, None
    return x * s, s + x * ds, torch.maximum(s, (x * ds).abs())


def ours(name: str, x: torch.Tensor, direction: int):
    x = x.clone().requires_grad_()
    with gpu_math(direction):
        y = fusion.compile(FUNCTIONS[name])(x)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), g


def ulps(y: torch.Tensor, t: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """|y - t| in units of the spacing of y's type at t (or at ``scale``), subnormal
    spacing below the normal range."""
    info = torch.finfo(y.dtype)
    at = t.abs() if scale is None else torch.maximum(t.abs(), scale)
    spacing = torch.exp2(torch.floor(torch.log2(at.clamp(min=info.tiny))) - MANTISSA[y.dtype])
    return ((y.double() - t).abs() / spacing).nan_to_num(nan=float("inf"))


def steps_from(y: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """How many representable numbers of y's 16-bit type lie between y and cr (±0 equal)."""
    def ordered(v):
        bits = v.view(torch.int16).int()
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    return (ordered(y) - ordered(cr)).abs()


def every_value(dtype: torch.dtype) -> torch.Tensor:
    bits = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return torch.cat([bits[torch.isfinite(bits)], torch.tensor([float("nan")], dtype=dtype)]).to(DEVICE)


@pytest.mark.parametrize("direction", [1, -1], ids=["up", "down"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_half_types_within_one_ulp_of_correctly_rounded_for_every_input(name, dtype, direction):
    x = every_value(dtype)
    y, g = ours(name, x, direction)
    for what, out, exact in zip(("forward", "gradient"), (y, g), reference(name, x)[:2]):
        cr = exact.to(dtype)
        nan = cr.isnan()
        assert torch.equal(out.isnan(), nan), f"{name} {what}: NaN where the value is not, or not NaN"
        off = steps_from(out[~nan], cr[~nan])
        worst = int(off.argmax())
        assert off.max() <= 1, (f"{name} {what}: {int(off.max())} ulp from correctly rounded at "
                                f"x = {x[~nan][worst].item()!r}: {out[~nan][worst].item()!r} vs {cr[~nan][worst].item()!r}")


def fp32_inputs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    tails = torch.tensor([16.0, 17.0, 18.0, 30.0, 50.0, 87.3, 88.7, 89.0, 92.0, 100.0, 103.9, 104.0, 109.0])
    x = torch.cat([torch.linspace(-110, 110, 2**17, dtype=torch.float64),
                   torch.rand(2**16, generator=gen, dtype=torch.float64) * 220 - 110,
                   torch.exp(torch.rand(2**16, generator=gen, dtype=torch.float64) * 70 - 65)
                   * torch.where(torch.rand(2**16, generator=gen) < 0.5, -1, 1),
                   tails, -tails])
    return x.float().to(DEVICE)


@pytest.mark.parametrize("direction", [1, -1], ids=["up", "down"])
@pytest.mark.parametrize("name", ["sigmoid", "silu", "tanh"])
def test_fp32_within_2_ulp_forward_and_4_backward(name, direction):
    x = fp32_inputs()
    y, g = ours(name, x, direction)
    assert torch.isfinite(y).all() and torch.isfinite(g).all(), "NaN or inf for a finite input"
    t, dt, scale = reference(name, x)
    for what, err, bound in (("forward", ulps(y, t), 2), ("gradient", ulps(g, dt, scale), 4)):
        worst = int(err.argmax())
        assert err.max() <= bound, f"{name} {what}: {err.max():.2f} ulp at x = {x[worst].item()!r}"


def test_fp32_tails_where_eager_rounds_to_zero():
    """σ'(x) for x >= 17 and tanh'(x) for |x| >= 10 are exactly 0 in eager fp32 (σ(1 - σ) and
    1 - tanh² from the rounded outputs); ours are within 4 ulp of e^-x and 4 e^-2|x|.
    σ(x) below x = -87.3 is subnormal: ours keeps it (within 2 subnormal steps)."""
    for name, x in (("sigmoid", [17.0, 20.0, 40.0, 80.0]), ("tanh", [10.0, 20.0, 40.0, -10.0, -20.0, -40.0])):
        x = torch.tensor(x, device=DEVICE)
        leaf = x.clone().requires_grad_()
        (eager,) = torch.autograd.grad(FUNCTIONS[name](leaf).sum(), leaf)
        assert (eager == 0).all(), f"eager's {name}' is no longer 0 in its tail: {eager}"
        for direction in (1, -1):
            _, g = ours(name, x, direction)
            assert (g > 0).all() and ulps(g, reference(name, x)[1]).max() <= 4, (name, g)
    low = -torch.linspace(87.5, 103.5, 161, device=DEVICE)
    for direction in (1, -1):
        y, _ = ours("sigmoid", low, direction)
        assert (y > 0).all() and ulps(y, reference("sigmoid", low)[0]).max() <= 2


@pytest.mark.parametrize("name", ["sigmoid", "silu", "tanh"])
def test_precision_exact_rounds_fp32_once(name):
    """The opt-in: computed in fp64 and rounded once, forward and gradient within 0.5 ulp
    (silu' too, even at its zero). tanh' is 4 sigmoid_grad(2x), each rounded once: where
    sigmoid_grad(2x) is subnormal (|x| > 43.6) the 4x carries its rounding, 2 subnormal steps."""
    x = fp32_inputs()[::4].clone().requires_grad_()
    y = fusion.compile(FUNCTIONS[name], precision="exact")(x)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    t, dt, _ = reference(name, x.detach())
    assert ulps(y.detach(), t).max() <= 0.5 + 2**-10
    grad_err = ulps(g, dt)
    if name == "tanh":
        assert grad_err.max() <= 2
        grad_err = grad_err[dt / 4 >= torch.finfo(torch.float32).tiny]
    assert grad_err.max() <= 0.5 + 2**-10
