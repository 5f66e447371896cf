"""Helper @triton.jit functions that generated kernels call, as source text.

Only the helpers a kernel uses are written into its file, so each generated
file stands alone and reads top to bottom.

The numerics policy (docs/NUMERICS.md) lives here: the helpers of tiered ops
(the sigmoid family, tanh, exp) take the precision tier of their result as a
constexpr, as the matmul tutorial's kernel takes ACTIVATION. "half" (fp16/bf16
results): cheap fp32 forms whose error is far below a half-precision ulp.
"fp32": fp32 arithmetic only (no fp64 instruction), within 2 ulp forward and 4
backward; the one approximate instruction they use (rsqrt.approx) is corrected.
fp64 arguments take the fp64 forms whatever the tier. FMAs are written out
(``tl.fma``) where the error analysis counts on one rounding, so the GPU and the
interpreter compute the same.
"""
import re

from codegen.prelude_activations import ACTIVATION_HELPERS

HELPERS = {
    "exp_parts": '''
@triton.jit
def exp_parts(x, C: tl.constexpr):
    # e**x = 2**k * p / C for fp32 x in [-110, 89], in FMAs only (no MUFU approximation):
    # x = k ln2 + r with |r| <= ln2/2, k from the 1.5 * 2**23 trick (j rounds to the integer
    # 1.5 * 2**23 + k, so j's low bits hold k); ln2 in two parts (Cody-Waite), the first
    # short enough that k * it is exact; p = C e**r by a degree-6 minimax polynomial
    # (relative error 2**-28.9 on [-ln2/2, ln2/2], fitted for these helpers). C is a power
    # of two the coefficients carry, so that callers scale by 2**k in one rounding.
    j = tl.fma(x, 1.4426950408889634, 12582912.0)
    k = j - 12582912.0
    r = tl.fma(k, -0.693145751953125, x)
    r = tl.fma(k, -1.428606765330187e-06, r)
    p = tl.fma(0.001384346280246973 * C, r, 0.008374318480491638 * C)
    p = tl.fma(p, r, 0.041668012738227844 * C)
    p = tl.fma(p, r, 0.16666428744792938 * C)
    p = tl.fma(p, r, 0.4999999403953552 * C)
    p = tl.fma(p, r, C)
    p = tl.fma(p, r, C)
    return j, p
''',
    "exp_neg": '''
@triton.jit
def exp_neg(a, S: tl.constexpr):
    # S * e**-a for 0 <= a <= 110 (callers cap |x| with clamp_abs), S = 1 or 2**64; NaN stays.
    # fp32: ~1 ulp from exp_parts; 2**(k + 64) is built from k's bits (normal for k >= -190)
    # and the 2**-64 rides in the coefficients, so one multiply rounds the result once, even
    # into the subnormals. With S = 2**64 the result is normal for every a: callers that
    # multiply it further (silu) round once too. fp64: libdevice's exp.
    if a.dtype == tl.float64:
        if S == 1:
            return tl.exp(-a)
        else:
            # e**-a is subnormal beyond a = 708: there e**(64 - a) S e**-64 (64 - a exact)
            return tl.where(a > 700.0, tl.exp(64.0 - a) * (S * 1.603810890548638e-28), tl.exp(-a) * S)
    else:
        j, p = exp_parts(-a, S * 2.0**-64)
        scale = ((j.to(tl.int32, bitcast=True) << 23) + (191 << 23)).to(tl.float32, bitcast=True)
        return p * scale
''',
    "exp": '''
@triton.jit
def exp(x, TIER: tl.constexpr):
    # e**x. TIER "half" (fp16/bf16 results): tl.exp, whose rounded x log2(e) and ex2.approx
    # (2 ulp) cost a relative error near |x| 2**-24, far below a half-precision ulp. fp32:
    # exp_parts, ~1 ulp, subnormal results rounded once (tl.exp would be off by up to 40 ulp
    # at |x| = 88), 2**k applied in two exact halves. fp64: libdevice's exp.
    if x.dtype == tl.float64:
        return tl.exp(x)
    elif TIER == "half":
        return tl.exp(x)
    else:
        # beyond [-110, 89] the result is 0 or inf anyway; NaN stays NaN
        x = tl.minimum(tl.maximum(x, -110.0, propagate_nan=tl.PropagateNan.ALL), 89.0,
                       propagate_nan=tl.PropagateNan.ALL)
        j, p = exp_parts(x, 1.0)
        k = j.to(tl.int32, bitcast=True) - 0x4B400000
        half = k >> 1
        s1 = ((half + 127) << 23).to(tl.float32, bitcast=True)
        s2 = ((k - half + 127) << 23).to(tl.float32, bitcast=True)
        return (p * s1) * s2
''',
    "reciprocal": '''
@triton.jit
def reciprocal(u):
    # about 1/u for 1 <= u <= 2. fp32: rsqrt(u)**2, two instructions (rsqrt.approx.f32:
    # relative error 2**-22.9, PTX ISA 9.7.3.16, so 2**-21.6 here) where `1 / u` is
    # div.full.f32 (seven in SASS) and tl.math.div_rn about thirty; callers that need the
    # last bit correct it (over_one_plus). fp64: a division, correctly rounded.
    if u.dtype == tl.float64:
        return 1.0 / u
    else:
        s = tl.math.rsqrt(u)
        return s * s
''',
    "over_one_plus": '''
@triton.jit
def over_one_plus(n, z):
    # n / (1 + z) for 0 <= z <= 1 and n = S z (S a power of two), as q + r e to ~2**-43:
    # q = n * reciprocal(1 + z), and the residual e = n - (1 + z) q, in which n - q is
    # exact (Sterbenz: n/2 <= q <= n) and the FMA rounds once. tl.fma(r, e, q) is the
    # quotient within ~0.5 ulp; a caller multiplying it by a rounds once more with
    # tl.fma(a, q, a * (r * e)).
    r = reciprocal(1.0 + z)
    q = n * r
    return q, r, tl.fma(-z, q, n - q)
''',
    "clamp_abs": '''
@triton.jit
def clamp_abs(x):
    # |x|, capped where every tail of the sigmoid family has rounded to 0 or 1 (110 e**-110
    # is below half the smallest fp32 subnormal; 760 e**-760 in fp64), so that an infinite x
    # gives the limit (|x| sigmoid(-|x|) is 0 there, not inf * 0). NaN stays NaN.
    if x.dtype == tl.float64:
        return tl.minimum(tl.abs(x), 760.0, propagate_nan=tl.PropagateNan.ALL)
    else:
        return tl.minimum(tl.abs(x), 110.0, propagate_nan=tl.PropagateNan.ALL)
''',
    "sigmoid_neg": '''
@triton.jit
def sigmoid_neg(a, TIER: tl.constexpr):
    # q = sigmoid(-a) = z / (1 + z), z = e**-a, for a = clamp_abs(x): e**-a never overflows,
    # and q is accurate down to the subnormals. TIER "half" (fp16/bf16 results): tl.exp and
    # the uncorrected reciprocal, relative error ~2**-18, far below a half-precision ulp;
    # otherwise exp_neg and over_one_plus: fp32 within ~1.5 ulp, no fp64 instruction.
    if TIER == "half":
        z = tl.exp(-a)
        return z * reciprocal(1.0 + z)
    else:
        z = exp_neg(a, 1.0)
        q, r, e = over_one_plus(z, z)
        return tl.fma(r, e, q)
''',
    "sigmoid": '''
@triton.jit
def sigmoid(x, TIER: tl.constexpr):
    # the stable form: q = sigmoid(-|x|) for x < 0, and 1 - q for x >= 0, which rounds
    # once, so the result is exactly 1 (or 0) only where rounding says so (1/(1+z) gives 1
    # already at x = 17 in fp32, where the correct result is 1 - 2**-24)
    q = sigmoid_neg(clamp_abs(x), TIER)
    return tl.where(x >= 0, 1.0 - q, q)
''',
    "sigmoid_grad": '''
@triton.jit
def sigmoid_grad(x, TIER: tl.constexpr):
    # d sigmoid/dx = sigmoid(x) sigmoid(-x) = q (1 - q), q = sigmoid(-|x|): accurate in
    # both tails, where eager's sigmoid(x) * (1 - sigmoid(x)) rounds to 0 (x >= 17 in fp32)
    q = sigmoid_neg(clamp_abs(x), TIER)
    return q * (1.0 - q)
''',
    "silu": '''
@triton.jit
def silu(x, TIER: tl.constexpr):
    # x sigmoid(x) = x - |x| q for x >= 0 and -|x| q below, q = sigmoid(-|x|), |x| capped
    # (clamp_abs): the limits at -inf (0) and +inf (inf) come out, not inf * 0. fp32: |x| q
    # is rounded once, from q = z / (1 + z) as an unevaluated sum (over_one_plus), and
    # computed scaled by 2**64: normal even where sigmoid(x) is subnormal (x < -87.3), so
    # silu keeps its last bits down to x = -92, where it is subnormal itself
    a = clamp_abs(x)
    if TIER == "half":
        w = a * sigmoid_neg(a, TIER)
    else:
        zs = exp_neg(a, 2.0**64)
        q, r, e = over_one_plus(zs, zs * 2.0**-64)
        w = tl.fma(a, q, a * (r * e)) * 2.0**-64
    return tl.where(x >= 0, x - w, -w)
''',
    "silu_grad": '''
@triton.jit
def silu_grad(x, TIER: tl.constexpr):
    # silu'(x) = s (1 + x (1 - s)), s = sigmoid(x): (1 - q)(1 + |x| q) for x >= 0 and
    # q (1 - |x| + |x| q) below (q = sigmoid(-|x|)). Near silu's zero x0 = -1.2785 the
    # two terms cancel: 1 - |x| is exact there (Sterbenz) and the FMA rounds once, so the
    # result carries q's own error, measured in ulps of the terms (docs/NUMERICS.md).
    a = clamp_abs(x)
    if TIER == "half":
        q = sigmoid_neg(a, TIER)
        below = q * tl.fma(a, q, 1.0 - a)
    else:
        zs = exp_neg(a, 2.0**64)   # scaled as in silu: the product below rounds once
        qs, r, e = over_one_plus(zs, zs * 2.0**-64)
        qs = tl.fma(r, e, qs)
        q = qs * 2.0**-64
        below = (qs * tl.fma(a, q, 1.0 - a)) * 2.0**-64
    return tl.where(x >= 0, (1.0 - q) * tl.fma(a, q, 1.0), below)
''',
    "tanh": '''
@triton.jit
def tanh(x, TIER: tl.constexpr):
    # |x| small: an odd polynomial in x, where 1 - 2 sigmoid(-2|x|) would cancel; above,
    # 1 - 2 q with q = sigmoid(-2|x|), which rounds once and saturates to 1 without
    # overflow. tanh is odd: the sign of x is put back, and -0 stays -0 (x + x^3 P gives +0).
    x2 = x * x
    if x.dtype == tl.float64:
        # Cephes tanh's rational minimax form on [0, 0.625], x + x^3 P(x^2) / Q(x^2)
        p = tl.fma(x2, -9.64399179425052238628e-1, -9.92877231001918586564e1)
        p = tl.fma(p, x2, -1.61468768441708447952e3)
        q = x2 + 1.12811678491632931402e2
        q = tl.fma(q, x2, 2.23548839060100448583e3)
        q = tl.fma(q, x2, 4.84406305325125486048e3)
        p = tl.fma(x * x2, p / q, x)
        small = tl.abs(x) < 0.625
    else:
        # Cephes tanhf minimax polynomial on [0, 0.625], x + x^3 P(x^2) rounded once
        p = tl.fma(x2, -5.70498872745e-3, 2.06390887954e-2)
        p = tl.fma(p, x2, -5.37397155531e-2)
        p = tl.fma(p, x2, 1.33314422036e-1)
        p = tl.fma(p, x2, -3.33332819422e-1)
        p = tl.fma(x * x2, p, x)
        small = tl.abs(x) < 0.625
    big = tl.fma(-2.0, sigmoid_neg(clamp_abs(2.0 * x), TIER), 1.0)
    return tl.where(small, tl.where(x == 0, x, p), tl.where(x < 0, -big, big))
''',
    "ipow": '''
@triton.jit
def ipow(x, n: tl.constexpr):
    # x ** n for a compile-time integer n >= 1, by left-to-right binary powering over
    # the bits of n: at most 2 log2(n) roundings, and exact signs for negative x
    result = x
    for i in tl.static_range(62, -1, -1):  # any n below 2**63 (torch.pow with an int64 exponent)
        if (n >> i) > 1:
            result = result * result
            if ((n >> i) & 1) == 1:
                result = result * x
    return result
''',
    "sign": '''
@triton.jit
def sign(x):
    # -1, 0 or 1, as torch.sign computes it: (0 < x) - (x < 0), so NaN gives 0
    return tl.where(x > 0, 1, tl.where(x < 0, -1, 0)).to(x.dtype)
''',
    "log1p": '''
@triton.jit
def log1p(x):
    # log(1 + x) with the rounding error of 1 + x corrected (Goldberg's trick):
    # accurate for tiny x, where log(1 + x) would return 0
    u = 1.0 + x
    d = u - 1.0
    return tl.where(d == 0, x, tl.log(u) * (x / tl.where(d == 0, 1.0, d)))
''',
    "bce": '''
@triton.jit
def bce(p, y):
    # torch's binary cross-entropy on probabilities, logs clamped at -100
    log_p = tl.maximum(tl.log(p), -100.0)
    log_q = tl.maximum(log1p(-p), -100.0)
    return -(y * log_p + (1.0 - y) * log_q)
''',
    "bce_logits": '''
@triton.jit
def bce_logits(z, y):
    # -(y log sigmoid(z) + (1-y) log sigmoid(-z)) = max(z, 0) - z*y + log1p(exp(-|z|)):
    # exp never overflows, and for |z| >= 100 the loss is the linear term rounded once.
    # max(z, 0) - z*y as |z| times its weight, 1 - y (z >= 0) or y: no cancellation, and
    # the limits at z = +-inf: +inf, or exactly 0 where the weight is 0 (not inf * 0)
    w = tl.where(z >= 0, 1.0 - y, y)
    linear = tl.where(w == 0, 0.0, tl.abs(z) * w)
    return linear + log1p(exp_neg(clamp_abs(z), 1.0))
''',
}
assert not set(ACTIVATION_HELPERS) & set(HELPERS), "one name, one helper"
HELPERS.update(ACTIVATION_HELPERS)  # gelu, softplus, expm1, rsqrt...


def helpers_used(exprs: list[str]) -> list[str]:
    """The helper sources whose names appear as calls in ``exprs``."""
    text = "\n".join(exprs)
    names: list[str] = []
    while True:  # helpers calling helpers: grow to a fixed point
        found = [n for n in HELPERS if n not in names and re.search(rf"(?<![\w.]){n}\(", text)]
        if not found:
            break
        names += found
        # their bodies (not their def lines or comments) may call further helpers
        text += "".join(re.sub(r"#.*", "", HELPERS[n].split(":", 1)[1]) for n in found)
    return [src for name, src in HELPERS.items() if name in names]
