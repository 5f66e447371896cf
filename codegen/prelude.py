"""Helper @triton.jit functions that generated kernels call, as source text.

Only the helpers a kernel uses are written into its file, so each generated
file stands alone and reads top to bottom.
"""
import re

HELPERS = {
    "sigmoid": '''
@triton.jit
def sigmoid(x):
    # exp only ever sees -|x|, so nothing overflows. t = sigmoid(-|x|) = z/(1+z) with
    # z = exp(-|x|) is accurate to a few ulps down to the subnormals; sigmoid(|x|) = 1 - t
    # rounds once, so the result is exactly 1 (or 0) only where rounding says so
    # (1/(1+z) gives 1 already at x = 17 in fp32, where the correct result is 1 - 2**-24).
    z = tl.exp(-tl.abs(x))
    t = z / (1.0 + z)
    return tl.where(x >= 0, 1.0 - t, t)
''',
    "sigmoid_grad": '''
@triton.jit
def sigmoid_grad(x):
    # d sigmoid/dx = z / (1+z)^2 with z = exp(-|x|): accurate in both tails,
    # where sigmoid(x) * (1 - sigmoid(x)) rounds to 0 (x >= 17 in fp32).
    z = tl.exp(-tl.abs(x))
    s = 1.0 / (1.0 + z)
    return z * s * s
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
    big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    t = tl.where(small, p, big)
    return tl.where(x < 0, -t, t)
''',
    "ipow": '''
@triton.jit
def ipow(x, n: tl.constexpr):
    # x ** n for a compile-time integer n >= 1, by left-to-right binary powering over
    # the bits of n: at most 2 log2(n) roundings, and exact signs for negative x
    result = x
    for i in tl.static_range(30, -1, -1):
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
    "round_to_bf16": '''
@triton.jit
def round_to_bf16(x):
    # fp32 -> the nearest bf16 (ties to even), kept in fp32. The GPU's conversion does
    # this too, but Triton's interpreter truncates; rounding explicitly makes the two agree.
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
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
    # exp never overflows, and the loss is exact for |z| = 100 where sigmoid saturates
    return tl.maximum(z, 0.0) - z * y + log1p(tl.exp(-tl.abs(z)))
''',
}

# helpers that other helpers call, written before them
_DEPENDS = {"bce": ["log1p"], "bce_logits": ["log1p"]}


def helpers_used(exprs: list[str]) -> list[str]:
    """The helper sources whose names appear as calls in ``exprs``."""
    text = "\n".join(exprs)
    names = [name for name in HELPERS if re.search(rf"(?<![\w.]){name}\(", text)]
    names += [dep for name in names for dep in _DEPENDS.get(name, [])]
    return [src for name, src in HELPERS.items() if name in names]
