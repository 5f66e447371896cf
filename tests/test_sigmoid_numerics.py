"""Sigmoid's forward and gradient at the extremes, against exact values.

The kernel's sigmoid is z = exp(-|x|); x >= 0: 1/(1+z), x < 0: z/(1+z), and its
gradient z/(1+z)^2, recomputed from x. References: the same closed forms in
float64 for fp32 inputs (exact to far below an fp32 ulp) and mpmath at 100 bits
for fp64 inputs. Errors are counted in units in the last place of the result
type: relative error over the type's epsilon, i.e. "relative error <= 4 ulp" reads
``|ours - exact| <= 4 * eps * |exact|``; subnormal results count in subnormal steps.
"""
from __future__ import annotations

import math

import pytest
import torch

import fusion

from helpers import DEVICE, SHORT

mpmath = pytest.importorskip("mpmath")

EXTREMES = [16.0, 17.0, 88.7, 89.0, 104.0, 1e4]
EXTREMES_F64 = EXTREMES + [709.7, 710.0, 745.0, 746.0]
MAX_ULPS = 4


def sigmoid(x):
    return torch.sigmoid(x)


def exact_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """sigmoid at every value of ``x``, exact to well below the type's precision (float64)."""
    if x.dtype == torch.float64:
        with mpmath.workprec(100):
            vals = [float(1 / (1 + mpmath.exp(-mpmath.mpf(v)))) if math.isfinite(v) else
                    (1.0 if v > 0 else 0.0 if v < 0 else math.nan) for v in x.tolist()]
        return torch.tensor(vals, dtype=torch.float64)
    x = x.double().cpu()
    z = torch.exp(-x.abs())
    return torch.where(x >= 0, 1 / (1 + z), z / (1 + z))


def exact_sigmoid_grad(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float64:
        with mpmath.workprec(100):
            vals = [float(mpmath.exp(-abs(mpmath.mpf(v))) / (1 + mpmath.exp(-abs(mpmath.mpf(v)))) ** 2)
                    for v in x.tolist()]
        return torch.tensor(vals, dtype=torch.float64)
    z = torch.exp(-x.double().cpu().abs())
    return z / (1 + z) ** 2


def ulps_off(ours: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Relative error in units of the type's epsilon (2**-23 in fp32); below the smallest
    normal, absolute error in units of the smallest subnormal."""
    info = torch.finfo(ours.dtype)
    return (ours.double().cpu() - exact).abs() / (info.eps * exact.abs().clamp(min=info.tiny))


def with_signs(values):
    return sorted(values + [-v for v in values])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=SHORT.get)
def test_forward_at_the_extremes(dtype):
    finite = torch.tensor(with_signs(EXTREMES_F64 if dtype == torch.float64 else EXTREMES),
                          dtype=dtype, device=DEVICE)
    x = torch.cat([finite, torch.tensor([math.inf, -math.inf, math.nan], dtype=dtype, device=DEVICE)])
    out = fusion.compile(sigmoid)(x)
    n = finite.numel()
    assert torch.isfinite(out[:n]).all(), f"NaN/inf for finite input: {out[:n]}"
    assert out[n].item() == 1.0 and out[n + 1].item() == 0.0, "sigmoid(±inf) must be exactly 1 and 0"
    assert math.isnan(out[n + 2].item()), "sigmoid(NaN) must be NaN"
    assert ((out[:n] >= 0) & (out[:n] <= 1)).all()
    off = ulps_off(out[:n], exact_sigmoid(finite))
    assert off.max() <= MAX_ULPS, f"{dict(zip(finite.tolist(), off.tolist()))}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=SHORT.get)
def test_forward_sweep_within_a_few_ulps(dtype):
    """Every value from deep underflow to saturation, subnormal results included."""
    lim = 760.0 if dtype == torch.float64 else 110.0
    x = torch.linspace(-lim, lim, 4001, dtype=torch.float64).to(dtype).to(DEVICE)
    x = torch.cat([x, torch.linspace(-20, 20, 2001, dtype=dtype, device=DEVICE)])
    out = fusion.compile(sigmoid)(x)
    assert torch.isfinite(out).all()
    off = ulps_off(out, exact_sigmoid(x))
    worst = off.argmax()
    assert off.max() <= MAX_ULPS, f"{off.max():.2f} ulps at x = {x[worst].item()!r}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=SHORT.get)
def test_exactly_one_or_zero_only_where_rounding_says_so(dtype):
    x = torch.tensor(with_signs(EXTREMES), dtype=dtype, device=DEVICE)
    out = fusion.compile(sigmoid)(x)
    exact = exact_sigmoid(x)
    # the result saturates to 1 or underflows to 0 exactly where the exact value rounds there
    torch.testing.assert_close(out.cpu() == 1, exact.to(dtype) == 1)
    torch.testing.assert_close(out.cpu() == 0, exact.to(dtype) == 0)


# ---- the gradient --------------------------------------------------------------------------

def _grad(fn, x):
    x = x.clone().requires_grad_(True)
    fusion.compile(fn)(x).backward(torch.ones_like(x))
    return x.grad


def test_gradient_tails_in_fp32_within_4_ulps():
    """x in [-87, 87]: every true value is a normal float; eager's σ(1-σ) is 0 from x = 17."""
    x = torch.linspace(-87, 87, 17401, dtype=torch.float32, device=DEVICE)
    x = torch.cat([x, torch.tensor(with_signs([16.0, 17.0, 30.0, 50.0, 80.0, 87.0]), device=DEVICE)])
    grad = _grad(sigmoid, x)
    exact = exact_sigmoid_grad(x)
    assert (exact >= torch.finfo(torch.float32).tiny).all()
    off = ulps_off(grad, exact)
    worst = off.argmax()
    assert off.max() <= MAX_ULPS, f"{off.max():.2f} ulps at x = {x[worst].item()!r}"
    assert (grad[x >= 17] > 0).all(), "the gradient must not round to 0 where eager's does"


def test_gradient_at_the_extremes():
    x = torch.tensor(with_signs(EXTREMES) + [math.inf, -math.inf, math.nan], device=DEVICE)
    grad = _grad(sigmoid, x)
    assert torch.isfinite(grad[:-1]).all() and (grad[:-1] >= 0).all()
    assert grad[-3].item() == 0.0 and grad[-2].item() == 0.0
    assert math.isnan(grad[-1].item())
    off = ulps_off(grad[:-3], exact_sigmoid_grad(x[:-3]))
    assert off.max() <= MAX_ULPS, off


def test_gradient_sweep_in_fp64():
    x = torch.linspace(-700, 700, 1401, dtype=torch.float64, device=DEVICE)
    off = ulps_off(_grad(sigmoid, x), exact_sigmoid_grad(x))
    assert off.max() <= MAX_ULPS, f"{off.max():.2f} ulps at x = {x[off.argmax()].item()!r}"


def test_swish_gradient_follows_from_the_rules():
    """d/dx x·σ(x) = σ(x)(1 + x(1 − σ(x))), derived by autodiff from the table, no special case."""
    def swish(x):
        return x * torch.sigmoid(x)
    x = torch.linspace(-60, 60, 2401, dtype=torch.float32, device=DEVICE)
    grad = _grad(swish, x)
    s, ds = exact_sigmoid(x), exact_sigmoid_grad(x)
    exact = s + x.double().cpu() * ds
    # the two terms cancel near x = -1.28: measure against their size, not the sum's
    scale = s.abs() + (x.double().cpu() * ds).abs()
    err = (grad.double().cpu() - exact).abs() / (scale * torch.finfo(torch.float32).eps)
    assert err.max() <= 8, f"{err.max():.2f} eps at x = {x[err.argmax()].item()!r}"
