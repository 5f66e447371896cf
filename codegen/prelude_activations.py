"""Helper @triton.jit functions of the activation entries (ir/ops_activations.py).

Merged into ``codegen.prelude.HELPERS``; they call the prelude's own helpers
(``exp``, ``sigmoid``, ``sigmoid_grad`` at their "fp32" tier, which serves fp64 too) by name. fp32 is
computed in fp32 (no FP64 instruction in an fp32 kernel), fp64 stays fp64.

The normal CDF behind GELU is written as Phi(-t) = exp(-t^2/2) G(t), t = |x|,
with G(t) = Phi(-t) exp(t^2/2) a smooth function from 0.5 (t = 0) to
~1/(t sqrt(2 pi)): one rational approximation covers the whole line, both
tails included, where eager's 0.5 (1 + erf(x/sqrt 2)) cancels for x < -3 and
is 0 below x = -5.9 in fp32. This is the structure of W. J. Cody's normal
and erfc approximations (Math. Comp. 23 (1969) 631-637; ACM TOMS 19 (1993)
22-32), with fp32-sized rationals fitted by tools/fit_normal_cdf.py
(relative error of the fits: G 6e-9, H 9e-9, i.e. below 0.15 ulp).
exp(-t^2/2) takes t^2 = p + pl exactly (an FMA gives the rounding error pl),
so the tail keeps its relative accuracy where a rounded t^2 would cost
|t^2/2| ulps (fdlibm's erfc splits z for the same reason).
"""

ACTIVATION_HELPERS = {
    "precise_div": '''
@triton.jit
def precise_div(a, b):
    # correctly rounded fp32 division (div.rn, tl.math.div_rn) where the rational fits need it;
    # fp64 division is correctly rounded already. b is always a tensor here.
    if b.dtype == tl.float32:
        return tl.math.div_rn(a, b)
    else:
        return a / b
''',
    "normal_tail_parts": '''
@triton.jit
def normal_tail_parts(x):
    # for t = min(|x|, 15): exp(-t^2/2) = e * s, g = G(t) = Phi(-t) exp(t^2/2) and
    # h = H(t) = (G(t) - t/sqrt(2 pi)) / (t - T0), T0 = 0.75179152... the zero of GELU'(-t).
    # Beyond t = 15 exp(-t^2/2) underflows in fp32 (e^-112), so clamping changes no result.
    # Past t^2/2 = 64 the factor e^-16 is split off (16 - t^2/2 is exact there): e stays a
    # normal number and the caller applies s last, so a subnormal result rounds once.
    t = tl.minimum(tl.abs(x), 15.0, propagate_nan=tl.PropagateNan.ALL)
    p = t * t
    pl = tl.fma(t, t, -p)  # t^2 = p + pl exactly
    far = p > 128.0
    e = exp(tl.where(far, 16.0 - 0.5 * p, -0.5 * p), "fp32") * (1.0 - 0.5 * pl)
    s = tl.where(far, 1.1253517471925912e-07, 1.0)
    # G(t) ~ P4(t)/Q5(t), all coefficients positive: Horner does not cancel
    gn = tl.fma(t, 0.004153512418270111, 0.04088331013917923)
    gn = tl.fma(gn, t, 0.1839759796857834)
    gn = tl.fma(gn, t, 0.43929317593574524)
    gn = tl.fma(gn, t, 0.5)
    gd = tl.fma(t, 0.010411200113594532, 0.10248537361621857)
    gd = tl.fma(gd, t, 0.4714266061782837)
    gd = tl.fma(gd, t, 1.2055774927139282)
    gd = tl.fma(gd, t, 1.6764713525772095)
    gd = tl.fma(gd, t, 1.0)
    # H(t) ~ P4(t)/Q4(t)
    hn = tl.fma(t, -0.01046997494995594, -0.09587499499320984)
    hn = tl.fma(hn, t, -0.37848514318466187)
    hn = tl.fma(hn, t, -0.7541805505752563)
    hn = tl.fma(hn, t, -0.6650779843330383)
    hd = tl.fma(t, 0.026244191452860832, 0.22059984505176544)
    hd = tl.fma(hd, t, 0.7941440343856812)
    hd = tl.fma(hd, t, 1.3995857238769531)
    hd = tl.fma(hd, t, 1.0)
    return t, e, s, precise_div(gn, gd), precise_div(hn, hd)
''',
    "gelu": '''
@triton.jit
def gelu(x):
    # x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2))
    if x.dtype == tl.float64:
        # as eager computes it (1e-16 absolute accuracy; the rationals below are fp32-sized),
        # x clamped at -40, where the result is -0, so that -inf gives that limit
        c = tl.maximum(x, -40.0, propagate_nan=tl.PropagateNan.ALL)
        return c * 0.5 * (1.0 + tl.erf(c * 0.7071067811865476))
    else:
        t, e, s, g, h = normal_tail_parts(x)
        # x < 0: x Phi(-t) = ((x g) e) s, the tiny factors last; x clamped at -15 so that
        # x = -inf gives the limit -0 (not -inf * 0); x >= 0: x (1 - Phi(-x))
        neg = ((tl.maximum(x, -15.0, propagate_nan=tl.PropagateNan.ALL) * g) * e) * s
        return tl.where(x < 0, neg, x * (1.0 - (g * e) * s))
''',
    "gelu_grad": '''
@triton.jit
def gelu_grad(x):
    # d/dx x Phi(x) = Phi(x) + x phi(x). For x = -t: Phi(-t) - t phi(t) = e (G(t) - t/sqrt(2 pi))
    # = e (t - T0) H(t): the zero at x = -T0 is a factor, so no cancellation near it
    # (T0 = T0_HI + T0_LO; t - T0_HI is exact there). For x >= 0: 1 - e (x - T0) H(x).
    if x.dtype == tl.float64:
        # as eager's gelu_backward computes it, x clamped to +-40 (the results there are
        # 0 and 1) so that +-inf give those limits
        c = tl.minimum(tl.maximum(x, -40.0, propagate_nan=tl.PropagateNan.ALL), 40.0,
                       propagate_nan=tl.PropagateNan.ALL)
        cdf = 0.5 * (1.0 + tl.erf(c * 0.7071067811865476))
        return cdf + c * (tl.exp(-0.5 * c * c) * 0.3989422804014327)
    else:
        t, e, s, g, h = normal_tail_parts(x)
        eh = (e * (((t - 0.7517915368080139) + 1.211444988769017e-08) * h)) * s
        return tl.where(x < 0, eh, 1.0 - eh)
''',
    "gelu_tanh_arg": '''
@triton.jit
def gelu_tanh_arg(c):
    # w = x (C1 + C3 x^2) = 2 sqrt(2/pi) (x + 0.044715 x^3), the argument of the tanh form's
    # sigmoid, as w + wl in fp32: sigmoid's tail turns an error d of w into |w| d (180 ulp at
    # x = -11), so every rounding (of x^2, of C1 and C3 to fp32, of the product and the sum)
    # is kept to first order by FMA splits and 2Sum (Knuth). fp64 needs no wl.
    if c.dtype == tl.float64:
        return c * (1.5957691216057308 + 0.07135481627260025 * (c * c)), 0.0
    else:
        p = c * c
        pl = tl.fma(c, c, -p)
        a = p * 0.07135481387376785  # C3 = 0.07135481387376785 + 2.3988324659995897e-09
        al = tl.fma(p, 0.07135481387376785, -a) + (pl * 0.07135481387376785 + p * 2.3988324659995897e-09)
        b = a + 1.5957691669464111  # C1 = 1.5957691669464111 - 4.534068054340423e-08
        bb = b - a
        bl = ((a - (b - bb)) + (1.5957691669464111 - bb)) + (al - 4.534068054340423e-08)
        w = c * b
        return w, tl.fma(c, b, -w) + c * bl
''',
    "gelu_tanh": '''
@triton.jit
def gelu_tanh(x):
    # torch's tanh form 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), written as
    # x sigmoid(w), w = 2u (1 + tanh(u) = 2 sigmoid(2u)): no cancellation for x < 0, where
    # eager's 1 + tanh(u) is 0 below x = -9.1 in fp32; sigmoid(w + wl) = sigmoid(w) +
    # sigmoid'(w) wl. x clamped to +-30 in w, where sigmoid(w) is 0 and 1 (in fp64 too), and
    # at -30 in the product, so that -inf gives the limit -0 and +inf stays inf
    low = tl.maximum(x, -30.0, propagate_nan=tl.PropagateNan.ALL)
    w, wl = gelu_tanh_arg(tl.minimum(low, 30.0, propagate_nan=tl.PropagateNan.ALL))
    return low * (sigmoid(w, "fp32") + sigmoid_grad(w, "fp32") * wl)
''',
    "gelu_tanh_grad": '''
@triton.jit
def gelu_tanh_grad(x):
    # d/dx x sigmoid(w) = sigmoid(w) + x sigmoid'(w) w', w' = C1 + 3 C3 x^2, at w + wl
    # (sigmoid'' = sigmoid' (1 - 2 sigmoid)); x clamped to +-30, where the derivative is 0
    # and 1, so that +-inf give those limits (not inf * 0)
    c = tl.minimum(tl.maximum(x, -30.0, propagate_nan=tl.PropagateNan.ALL), 30.0,
                   propagate_nan=tl.PropagateNan.ALL)
    w, wl = gelu_tanh_arg(c)
    s = sigmoid(w, "fp32")
    d = sigmoid_grad(w, "fp32")
    dw = 1.5957691216057308 + 0.21406444881780073 * (c * c)
    return (s + d * wl) + c * ((d + d * ((1.0 - 2.0 * s) * wl)) * dw)
''',
    "softplus_beta": '''
@triton.jit
def softplus_beta(x, beta: tl.constexpr, threshold: tl.constexpr):
    # torch's softplus: x where beta x > threshold, else log1p(exp(beta x)) / beta, written
    # as (max(z, 0) + log1p(exp(-|z|))) / beta, z = beta x: exp never overflows (torch's
    # form is inf for beta x > 88.7 in fp32 when the threshold is raised)
    # log1p(e) for e = exp(-|z|) in (0, 1] as log(u) + (e - (u - 1)) / u, u = 1 + e: the
    # rounding error of u is exact (Fast2Sum, 1 >= e) and corrected to first order
    z = x * beta
    e = exp(-tl.abs(z), "fp32")
    u = 1.0 + e
    sp = tl.maximum(z, 0.0) + (tl.log(u) + ((e - (u - 1.0)) / u))
    if beta != 1.0:
        sp = sp / beta
    return tl.where(z > threshold, x, sp)
''',
    "expm1": '''
@triton.jit
def expm1(x):
    # exp(x) - 1 without the cancellation near 0. fp32: on |x| < 1 a polynomial
    # x + x^2/2 + x^3 P(x) (P: degree-6 fit, tools/fit_normal_cdf.py, 0.03 ulp), outside
    # exp(x) - 1, where the subtraction loses at most a factor e/(e-1) = 1.6.
    # fp64: Kahan's correction (u - 1) x / log(u), u = exp(x) (Higham, Accuracy and
    # Stability of Numerical Algorithms, 2002, sec. 1.14.1).
    if x.dtype == tl.float64:
        u = tl.exp(x)
        um1 = u - 1.0
        kahan = um1 * (x / tl.log(tl.where(um1 == 0, 2.0, u)))
        return tl.where((um1 == 0) | (u == float("inf")) | (um1 == -1.0), tl.where(um1 == 0, x, um1), kahan)
    else:
        p = tl.fma(x, 2.746392283370369e-06, 2.5366785848746076e-05)
        p = tl.fma(p, x, 0.0001984928676392883)
        p = tl.fma(p, x, 0.001388532342389226)
        p = tl.fma(p, x, 0.008333277888596058)
        p = tl.fma(p, x, 0.04166673496365547)
        p = tl.fma(p, x, 0.1666666716337204)
        small = tl.where(x == 0, x, x + (0.5 * x * x + x * x * x * p))  # -0.0 stays -0.0
        return tl.where(tl.abs(x) < 1.0, small, exp(x, "fp32") - 1.0)
''',
    "rsqrt": '''
@triton.jit
def rsqrt(x):
    # 1/sqrt(x), both steps correctly rounded in fp32 (tl.rsqrt and tl.sqrt are the
    # approximate MUFU forms on the GPU): within 1 ulp. torch's values at the edges:
    # rsqrt(+-0) = +-inf, rsqrt(x < 0) = NaN, rsqrt(-inf) = NaN, rsqrt(inf) = 0.
    if x.dtype == tl.float32:
        return precise_div(1.0, tl.sqrt_rn(x))
    else:
        return 1.0 / tl.sqrt(x)
''',
}
