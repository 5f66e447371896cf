"""Fit the fp32 approximations in codegen/prelude_activations.py, and print their coefficients.

    python tools/fit_normal_cdf.py        (needs numpy and mpmath, which torch brings; ~1 min)

GELU's normal CDF is written as Phi(-t) = exp(-t^2/2) G(t), t = |x|, and its derivative
near its zero as exp(-t^2/2) (t - T0) H(t) (see the helpers' comments):

    G(t) = Phi(-t) exp(t^2/2)                      rational, degrees 4/5, on [0, 15]
    H(t) = (G(t) - t / sqrt(2 pi)) / (t - T0)      rational, degrees 4/4, on [0, 15]
    P(x) = (expm1(x) - x - x^2/2) / x^3            polynomial, degree 6, on [-1, 1]

Each is a near-minimax fit of the relative error (of G, H, and of expm1 for P): linear
least squares at Chebyshev points, reweighted by Lawson's rule (weights times the
error) until the error levels out, with the rational's denominator linearised as in
Loeb's method (divide by the previous denominator). References come from mpmath at
30 digits. The printed errors are those of the float64 coefficients; rounding them to
fp32 adds ~0.3 ulp (checked against float64 in tests/test_activations.py).
"""
from __future__ import annotations

import mpmath as mp
import numpy as np

mp.mp.dps = 30
ULP = 2.0 ** -24


def chebyshev_points(a: float, b: float, n: int = 2500) -> np.ndarray:
    return (a + b) / 2 + (b - a) / 2 * np.cos(np.pi * (np.arange(n) + 0.5) / n)


def fit_rational(f, a, b, n, m, iters=40):
    """Coefficients [p0..pn, q1..qm] of (sum p_k t^k) / (1 + sum q_k t^k) ~ f on [a, b], and the
    largest relative error."""
    t = chebyshev_points(a, b)
    y = np.array([f(v) for v in t])
    weights, denom, best = np.ones_like(t), np.ones_like(t), (np.inf, None)
    for _ in range(iters):
        rows = np.hstack([t[:, None] ** np.arange(n + 1), -y[:, None] * t[:, None] ** np.arange(1, m + 1)])
        scale = np.sqrt(weights) / np.abs(y * denom)
        c, *_ = np.linalg.lstsq(rows * scale[:, None], y * scale, rcond=None)
        denom = 1 + np.polyval(np.r_[c[n + 1:][::-1], 0], t)
        err = (np.polyval(c[:n + 1][::-1], t) / denom - y) / y
        if np.abs(err).max() < best[0]:
            best = (np.abs(err).max(), c)
        weights = weights * np.abs(err)
        weights /= weights.sum()
    return best[1], best[0]


def fit_polynomial(f, weight, a, b, degree, iters=60):
    """Coefficients (low to high) of a polynomial ~ f on [a, b] minimising max |weight * error|."""
    t = chebyshev_points(a, b, 4000)
    y, w = np.array([f(v) for v in t]), np.array([weight(v) for v in t])
    rows, lawson, best = t[:, None] ** np.arange(degree + 1), np.ones_like(t), (np.inf, None)
    for _ in range(iters):
        s = np.sqrt(lawson) * w
        c, *_ = np.linalg.lstsq(rows * s[:, None], y * s, rcond=None)
        err = (rows @ c - y) * w
        if np.abs(err).max() < best[0]:
            best = (np.abs(err).max(), c)
        lawson = lawson * np.abs(err)
        lawson /= lawson.sum()
    return best[1], best[0]


def upper_tail_scaled(t) -> mp.mpf:
    t = mp.mpf(t)
    return mp.erfc(t / mp.sqrt(2)) / 2 * mp.exp(t * t / 2)


# the zero of GELU'(x) = Phi(x) + x phi(x), at x = -T0
T0 = mp.findroot(lambda t: upper_tail_scaled(t) - t / mp.sqrt(2 * mp.pi), 0.75)


def main():
    g, g_err = fit_rational(lambda t: float(upper_tail_scaled(t)), 0.0, 15.0, 4, 5)
    h, h_err = fit_rational(lambda t: float((upper_tail_scaled(t) - mp.mpf(t) / mp.sqrt(2 * mp.pi))
                                            / (mp.mpf(t) - T0)), 0.0, 15.0, 4, 4)
    p, p_err = fit_polynomial(
        lambda v: float((mp.expm1(v) - v - v * v / 2) / mp.mpf(v) ** 3) if v else 1 / 6,
        lambda v: float(abs(mp.mpf(v) ** 3 / mp.expm1(v))) if v else 0.0, -1.0, 1.0, 6)
    hi = np.float32(float(T0))
    print(f"T0 = {float(hi)!r} + {float(np.float32(float(T0) - float(hi)))!r}")
    for name, c, err in (("G", g, g_err), ("H", h, h_err), ("expm1 P", p, p_err)):
        print(f"{name}: max relative error {err:.3g} ({err / ULP:.3f} fp32 ulp)")
        print("   ", [float(np.float32(v)) for v in c])


if __name__ == "__main__":
    main()
