"""Helper @triton.jit functions that generated kernels call, as source text.

Only the helpers a kernel uses are written into its file, so each generated
file stands alone and reads top to bottom.
"""
import re

HELPERS = {
    "accurate_exp": '''
@triton.jit
def accurate_exp(x):
    # exp to ~1 ulp in fp32 on the GPU as in the interpreter, subnormal results kept:
    # tl.exp there is ex2.approx(x * log2 e), whose rounded argument costs up to ~40 ulp
    # at |x| = 88, and libdevice's expf flushes subnormals. Cody-Waite reduction
    # x = k ln2 + r (k ln2_hi is exact), Cephes' polynomial for exp(r) on |r| <= ln2/2,
    # then 2^k applied in two exact halves so a subnormal result is rounded only once.
    if x.dtype == tl.float64:
        return tl.exp(x)
    else:
        # beyond [-104, 89] the fp32 result is 0 or inf anyway; NaN stays NaN
        x = tl.minimum(tl.maximum(x, -104.0, propagate_nan=tl.PropagateNan.ALL), 89.0,
                       propagate_nan=tl.PropagateNan.ALL)
        k = tl.floor(x * 1.4426950408889634 + 0.5)
        r = x - k * 0.693145751953125
        r = r - k * 1.4286067653e-06
        p = 1.9875691500e-4
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        p = p * r * r + r + 1.0
        half = tl.floor(k * 0.5)
        return p * tl.exp2(half) * tl.exp2(k - half)
''',
    "precise_div": '''
@triton.jit
def precise_div(a, b):
    # correctly rounded fp32 division (div.rn) rather than the ~2 ulp div.full;
    # b is always a tensor here (a may be a Python constant)
    if b.dtype == tl.float32:
        return tl.div_rn(a, b)
    else:
        return a / b
''',
    "sigmoid_of_minus_abs": '''
@triton.jit
def sigmoid_of_minus_abs(x):
    # t = sigmoid(-|x|) = z/(1+z), z = exp(-|x|): exp never sees a positive argument, so
    # nothing overflows, and t is accurate down to the subnormals. 1 + z rounds; its
    # error e is exact (Fast2Sum, 1 >= z) and a first-order correction removes it.
    z = accurate_exp(-tl.abs(x))
    u = 1.0 + z
    e = (1.0 - u) + z
    t = precise_div(z, u)
    return t - t * precise_div(e, u)
''',
    "sigmoid": '''
@triton.jit
def sigmoid(x):
    # the stable form: t = sigmoid(-|x|) for x < 0, and 1 - t for x >= 0, which rounds
    # once, so the result is exactly 1 (or 0) only where rounding says so (1/(1+z) gives 1
    # already at x = 17 in fp32, where the correct result is 1 - 2**-24)
    t = sigmoid_of_minus_abs(x)
    return tl.where(x >= 0, 1.0 - t, t)
''',
    "sigmoid_grad": '''
@triton.jit
def sigmoid_grad(x):
    # d sigmoid/dx = sigmoid(x) sigmoid(-x) = t (1 - t), t = sigmoid(-|x|): accurate in
    # both tails, where eager's sigmoid(x) * (1 - sigmoid(x)) rounds to 0 (x >= 17 in fp32)
    t = sigmoid_of_minus_abs(x)
    return t * (1.0 - t)
''',
    "silu_grad": '''
@triton.jit
def silu_grad(x):
    # d silu/dx = sigmoid(x) + x sigmoid(x) sigmoid(-x), from t = sigmoid(-|x|)
    t = sigmoid_of_minus_abs(x)
    s = tl.where(x >= 0, 1.0 - t, t)
    return s + x * (t * (1.0 - t))
''',
    "tanh": '''
@triton.jit
def tanh(x):
    # |x| small: odd polynomial (1 - exp(-2|x|) would cancel); else 1 - 2/(exp(2|x|)+1),
    # which saturates to 1 without overflow trouble. Sign restored at the end.
    a = tl.abs(x)
    a2 = a * a
    if x.dtype == tl.float64:
        # Taylor series to x^13: below 0.1 its truncation error is under 1e-16 relative
        p = a * (1.0 + a2 * (-1.0 / 3 + a2 * (2.0 / 15 + a2 * (-17.0 / 315 + a2 * (
            62.0 / 2835 + a2 * (-1382.0 / 155925 + a2 * (21844.0 / 6081075)))))))
        small = a < 0.1
    else:
        # Cephes tanhf minimax polynomial on [0, 0.625]
        p = a + a * a2 * (-3.33332819422e-1 + a2 * (1.33314422036e-1 + a2 * (
            -5.37397155531e-2 + a2 * (2.06390887954e-2 + a2 * -5.70498872745e-3))))
        small = a < 0.625
    big = 1.0 - 2.0 / (accurate_exp(2.0 * a) + 1.0)
    t = tl.where(small, p, big)
    return tl.where(x == 0, x, tl.where(x < 0, -t, t))  # tanh(-0.0) is -0.0, as in torch
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
    # exp never overflows, and the loss is exact for |z| = 100 where sigmoid saturates.
    # max(z, 0) - z*y as z(1-y) or -zy: no cancellation, and +inf (not inf - inf) at z = +inf
    linear = tl.where(z >= 0, z * (1.0 - y), -z * y)
    return linear + log1p(accurate_exp(-tl.abs(z)))
''',
}

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
