"""Triton spellings of op-table entries that need more than one line (ir.ops uses them)."""
from __future__ import annotations

import math

import torch

from ir.types import compute_type, triton_type


def pow_expr(x: str, p, ct: str = "tl.float32") -> str:
    """x ** p for a scalar p: exact products for small integers, exp/log otherwise
    (integer bases, computed in ``ct`` = an int type, always by products, wrapping as torch)."""
    if ct == "tl.float32" and isinstance(p, float):
        p = float(torch.tensor(p, dtype=torch.float64).to(torch.float32))  # as eager: 1e39 is inf
    if p == 0:
        return f"tl.full({x}.shape, 1, {x}.dtype)"  # 1 for every x, inf and NaN included, as torch
    if not math.isfinite(p):
        return _pow_non_finite(x, p)
    if p == 0.5:
        return f"tl.sqrt({x})"
    if p == -0.5:  # torch computes it as rsqrt: NaN at -inf, where C's pow gives 0
        return f"(1.0 / tl.sqrt({x}))"
    if float(p).is_integer() and abs(p) <= 4:
        prod = " * ".join([f"{x}"] * int(abs(p)))
        return f"({prod})" if p > 0 else f"(1.0 / ({prod}))"
    if float(p).is_integer() and (abs(p) <= 64 or not ct.startswith("tl.float")):
        # binary powering (the ipow helper): a few roundings, where exp(p log x) is off by
        # |p log x| ulps (20 at 1e4 ** 5 in fp32); 1/x first for p < 0, so the product
        # overflows only where the result does
        return f"ipow({x if p > 0 else f'1.0 / {x}'}, {int(abs(p))})"
    if float(p).is_integer():
        # a negative base is fine for integer exponents: sign from the parity
        odd = int(p) % 2 == 1
        mag = f"tl.exp({float(p)!r} * tl.log(tl.abs({x})))"
        return f"tl.where({x} < 0, -{mag}, {mag})" if odd else mag
    # C's pow(-inf, p) for p not an odd integer is +inf (p > 0) or +0 (p < 0); log(-inf) is NaN
    at_minus_inf = 'float("inf")' if p > 0 else "0.0"
    return f'tl.where({x} == float("-inf"), {at_minus_inf}, tl.exp({float(p)!r} * tl.log({x})))'


def _pow_non_finite(x: str, p: float) -> str:
    """C's pow for p = ±inf or NaN, as torch: 1 at |x| = 1 (and at x = 1 for NaN);
    for ±inf, 0 or inf as |x| is below or above 1; NaN stays NaN."""
    if math.isnan(p):
        return f'tl.where({x} == 1, 1.0, float("nan"))'
    grows, shrinks = ('float("inf")', "0.0") if p > 0 else ("0.0", 'float("inf")')
    mag = f"tl.abs({x})"
    return (f'tl.where({x} != {x}, {x}, tl.where({mag} == 1, 1.0, '
            f'tl.where({mag} > 1, {grows}, {shrinks})))')


def minmax_expr(fn: str, a: list, ct: str) -> str:
    """NaN propagates, as in torch.maximum/minimum (floats only; ints have none)."""
    if ct.startswith("tl.float"):
        return f"tl.{fn}({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)"
    return f"tl.{fn}({a[0]}, {a[1]})"


def cast_expr(x: str, dtype: torch.dtype) -> str:
    """Casts round to the target type even though we keep computing in fp32."""
    if dtype == torch.bool:
        return f"({x} != 0)"
    if dtype in (torch.float16, torch.bfloat16):
        # through fp32 as torch does (c10::Half/BFloat16 are built from a float), so fp64 and
        # int sources round exactly like eager; then back to the compute type
        return f"{x}.to(tl.float32).to({triton_type(dtype)}).to({compute_type(dtype)})"
    return f"{x}.to({compute_type(dtype)})"


def float_literal(v) -> str:
    """A Python number as Triton source (infinities and NaN have no literal)."""
    v = float(v)
    if math.isnan(v):
        return 'float("nan")'
    if v in (float("inf"), float("-inf")):
        return f'float("{v}")'
    return repr(v)


def clamp_expr(x: str, lo, hi, ct: str) -> str:
    """torch.clamp: min(max(x, lo), hi) in that order (hi wins when lo > hi), NaN kept;
    a bound of None is absent. Written as torch's std::max/std::min, ``x < lo ? lo : x``:
    x itself wherever no bound is crossed, so -0.0 stays -0.0 (the hardware max gives +0.0)
    and NaN stays NaN (every comparison with it is false)."""
    def bound(v):
        return float_literal(v) if ct.startswith("tl.float") else repr(v)
    if lo is not None:
        x = f"tl.where({x} < {bound(lo)}, {bound(lo)}, {x})"
    if hi is not None:
        x = f"tl.where({x} > {bound(hi)}, {bound(hi)}, {x})"
    return x
