"""Bugs a review found, each shrunk to the smallest program that showed it."""
import warnings

import pytest
import torch
from torch import nn

import fusion

pytestmark = pytest.mark.cpu_only  # CPU tensors in the interpreter


def test_full_reduction_gradient_meets_a_broadcast():
    # (x * y).sum() with x [1, 4], y [4, 1]: x's gradient is sum(y) in every column
    for xs, ys in (((1, 4), (4, 1)), ((1, 5), (4, 1))):
        x = torch.randn(xs, dtype=torch.float64, requires_grad=True)
        y = torch.randn(ys, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(fusion.compile(lambda x, y: (x * y).sum()), (x, y), fast_mode=True)


def test_fused_integer_sum_does_not_wrap_at_32_bits():
    x = torch.full((64,), 2**30, dtype=torch.int32)
    fn = lambda x: (x + 1).sum()  # noqa: E731
    assert fusion.compile(fn)(x).item() == fn(x).item() == 64 * (2**30 + 1)


def test_partition_never_makes_two_groups_depend_on_each_other():
    def f(x, y):
        b = -torch.exp(x).sum(0)              # group 1 -> extern -> group 2
        d = -torch.exp(y).repeat(4, 1)        # group 2 -> extern -> group 1, if merged
        return b, d

    x, y = torch.randn(4, 8), torch.randn(8)
    for ours, ref in zip(fusion.compile(f)(x, y), f(x, y)):
        torch.testing.assert_close(ours, ref)


def test_tensors_inside_lists_are_inputs_not_constants():
    fast = fusion.compile(lambda xs, y: torch.sigmoid(xs[0]) * 2 + xs[1] * y)
    y = torch.ones(4)
    for i in range(4):
        xs = [torch.full((4,), float(i)), torch.full((4,), -float(i))]
        torch.testing.assert_close(fast(xs, y), torch.sigmoid(xs[0]) * 2 + xs[1] * y)
    assert len(fast.plans) == 1


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.drop(torch.sigmoid(x) * 3))


def test_train_eval_switch_on_the_original_is_seen():
    model = _Net().eval()
    fast = fusion.compile(model)
    x = torch.randn(1000)
    fast(x)
    model.train()  # on the original, after compiling
    assert fast.training
    assert (fast(x) == 0).sum() > 300  # dropout now runs
    model.drop.eval()  # one submodule alone
    torch.testing.assert_close(fast(x), model(x))


def test_replaced_submodule_is_seen():
    model = _Net().eval()
    fast = fusion.compile(model)
    x = torch.randn(50)
    fast(x)
    model.act = nn.Tanhshrink()
    torch.testing.assert_close(fast(x), model(x))


def test_autocast_runs_eagerly_with_one_warning():
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    fast = fusion.compile(model)
    x = torch.randn(2, 4)
    with warnings.catch_warnings(record=True) as caught, torch.autocast("cpu", torch.bfloat16):
        warnings.simplefilter("always")
        out, ref = fast(x), model(x)
        fast(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert sum("autocast" in str(w.message) for w in caught) == 1


def test_to_with_a_device_is_not_treated_as_a_cast():
    x = torch.randn(3)
    report = fusion.explain(lambda x: torch.sigmoid(x.to("cpu", torch.float64)), x)
    assert any("to" in op for op, _ in report.extern)
    torch.testing.assert_close(fusion.compile(lambda x: torch.sigmoid(x.to("cpu", torch.float64)))(x),
                               torch.sigmoid(x.double()))


# ---- found by tools/fuzz_graphs.py at extreme inputs ---------------------------------

def _grad_pair(fn, *args):
    ours_in = [a.detach().clone().requires_grad_() for a in args]
    ref_in = [a.detach().clone().requires_grad_() for a in args]
    fusion.compile(fn)(*ours_in).sum().backward()
    fn(*ref_in).sum().backward()
    return [a.grad for a in ours_in], [a.grad for a in ref_in]


def test_sign_gradient_is_zero_even_where_the_incoming_gradient_is_inf():
    x = torch.tensor([0.0, -0.0, 2.0, -3.0])
    ours, ref = _grad_pair(lambda x: torch.log(torch.sign(x)) + torch.sign(x), x)  # log(0) -> inf grads
    torch.testing.assert_close(ours[0], ref[0], equal_nan=True)
    assert not ours[0].isnan().any()


def test_pow_minus_half_is_rsqrt_like_torch():
    x = torch.tensor([float("-inf"), -1.0, 0.0, 4.0, float("inf")])
    torch.testing.assert_close(fusion.compile(lambda x: x ** -0.5)(x), x ** -0.5, equal_nan=True)
    ours, ref = _grad_pair(lambda x: torch.sqrt(x.abs()) ** 0.5 + x ** 0.5, x)
    torch.testing.assert_close(ours[0], ref[0], equal_nan=True)


def test_division_gradient_of_a_tiny_divisor_does_not_underflow():
    a = torch.tensor([0.0, 1.0, 2.0])
    b = torch.tensor([1e-40, 1e-20, 3.0])  # b * b underflows in fp32; (a / b) / b does not
    ours, ref = _grad_pair(lambda a, b: a / b, a, b)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_division_gradient_is_finite_where_only_x_over_y_squared_overflows(dtype):
    # d/db [b · (a / b)] with a = -b / 2, b = -9.2e-41: the divisor's gradient through a / b is
    # -(g · b) · (a / b) / b = 0.5 g, but torch's -g · ((a / b) / b) forms 5.4e39 first, inf
    # in fp32 (fuzzer seed 363447); float64 eager is the reference
    b = torch.tensor([-9.183549615799121e-41, 2.0, -3.0], dtype=dtype)
    a = torch.tensor([4.591774807899561e-41, 1.0, 1.5], dtype=dtype)

    def fn(a, b):
        return b * (a / b)
    ours, _ = _grad_pair(fn, a, b)
    wide = [t.double().requires_grad_() for t in (a, b)]
    fn(*wide).sum().backward()
    for o, w in zip(ours, wide):
        assert o.isfinite().all(), o
        torch.testing.assert_close(o.double(), w.grad, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=0)


def test_rsqrt_gradient_is_finite_where_only_x_to_the_minus_one_and_a_half_overflows():
    # the same class as the divisor's gradient above: g · x^-1.5 / 2 with x^-1.5 = 1e60 past
    # fp32 at x = 1e-40 while g = 1e-30 brings the product back to 5e29 (torch: -g · r³ / 2 = inf)
    x = torch.tensor([1e-40, 1e-30, 4.0])
    w = torch.tensor([1e-30, 1e-20, 1.0])

    def fn(x, w):
        return torch.rsqrt(x) * w
    ours, _ = _grad_pair(fn, x, w)
    wide = [t.double().requires_grad_() for t in (x, w)]
    fn(*wide).sum().backward()
    assert ours[0].isfinite().all(), ours[0]
    torch.testing.assert_close(ours[0].double(), wide[0].grad, rtol=1e-5, atol=0)


# ---- found by tools/fuzz_graphs.py (seeds 120000-124999) ---------------------------------

def _unary_table_ops():
    from ir.ops import OPS, OpKind
    for name, d in OPS.items():
        if d.kind == OpKind.POINTWISE and not d.internal and d.arity == 1 and d.operand_domains() != ("bool",):
            for attrs in d.sample_attrs((5,)):
                yield pytest.param(name, attrs, id=f"{name}-{attrs}")


@pytest.mark.parametrize("name, attrs", _unary_table_ops())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_signed_zeros_keep_their_sign_like_eager_in_float64(name, attrs, dtype):
    # seed 121737: tanh(-0.0) was +0.0, so log(tanh(x))'s gradient at -0.0 was -inf, not +inf
    from ir.ops import OPS
    x = torch.tensor([-0.0, 0.0, -1e-30, 1e-30], dtype=dtype)
    fn = (lambda op, a: lambda t: op(t, **a))(OPS[name].eager, attrs)
    # the reference is eager in float64, one element at a time: eager's fp32 CPU kernels give
    # signed zeros that depend on the vector path (gelu(-0.0) is -0.0 for one element, +0.0 for
    # four under AVX2)
    ours = fusion.compile(fn)(x)
    ref = torch.cat([fn(v.reshape(1)) for v in x.double()])
    if ref.is_floating_point():
        numbers = ~ref.isnan()  # a NaN's sign bit means nothing
        assert torch.equal(torch.signbit(ours[numbers]), torch.signbit(ref[numbers])), \
            f"{ours.tolist()} vs eager {ref.tolist()}"


@pytest.mark.parametrize("name, attrs", _unary_table_ops())
def test_gradients_at_signed_zeros_like_eager_in_float64(name, attrs):
    # seed 300027: rsqrt'(-0.0) was -inf, torch's -rsqrt(x)^3 / 2 is +inf
    from ir.ops import OPS
    x = torch.tensor([-0.0, 0.0, -1e-300, 1e-300], dtype=torch.float64)
    fn = (lambda op, a: lambda t: op(t, **a))(OPS[name].eager, attrs)
    if not OPS[name].differentiable or not fn(x).is_floating_point():
        pytest.skip(f"{name}({attrs}) has no gradient")
    ours, _ = _grad_pair(fn, x)
    ref = torch.cat([torch.autograd.grad(fn(v), v)[0] for v in
                     (x[i:i + 1].clone().requires_grad_() for i in range(len(x)))])
    assert ours[0] is not None, f"{name}: no gradient where eager has one"
    numbers = ~ref.isnan()
    assert torch.equal(ours[0][numbers], ref[numbers]) or torch.allclose(ours[0][numbers], ref[numbers]), \
        f"{ours[0].tolist()} vs eager {ref.tolist()}"
    assert torch.equal(torch.signbit(ours[0][numbers]), torch.signbit(ref[numbers])), \
        f"{ours[0].tolist()} vs eager {ref.tolist()}"


def test_log_of_tanh_gradient_at_negative_zero():
    x = torch.tensor([-0.0, 0.0, -1.5], dtype=torch.float64)
    ours, ref = _grad_pair(lambda x: torch.log(torch.tanh(x)), x)
    torch.testing.assert_close(ours[0], ref[0], equal_nan=True)


def test_a_value_that_only_feeds_a_comparison_in_the_next_kernel_gets_no_gradient():
    # seed 123369: relu(a), expanded, feeds only `>` inside the next kernel; eager's graph never
    # reaches a (None), ours passed zeros back through the relu kernel
    a = torch.randn(1, 7, 3, requires_grad=True)
    b = torch.randn(7, 7, 3, requires_grad=True)

    def f(a, b):
        r = torch.relu(a).expand(7, 7, 3)
        return torch.where(r > r, b * 2, 0.0)

    ours, ref = _grads(f, a, b)
    assert ours[0] is None and ref[0] is None
    torch.testing.assert_close(ours[1], ref[1])


def _grads(fn, *args):
    ours_in = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    ref_in = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    ours, ref = fusion.compile(fn)(*ours_in), fn(*ref_in)
    return (torch.autograd.grad(ours, ours_in, torch.ones_like(ours), allow_unused=True),
            torch.autograd.grad(ref, ref_in, torch.ones_like(ref), allow_unused=True))


# ---- found by the fuzzer: gradients of broadcast inputs -------------------------------------

def test_broadcast_input_with_an_infinite_derivative_reduces_like_eager():
    # fuzzer seeds 104215, 113147, 121236, 124558: the gradient of a broadcast input was
    # multiplied by its own (infinite) derivative before the reduction; eager reduces first
    x = torch.tensor([[0.0], [2.0]])
    y = torch.ones(2, 3)
    w = torch.tensor([[1.0, -1.0, 0.5], [1.0, 1.0, 1.0]])  # log'(0) = inf, times weights of both signs

    def f(x, y):
        return torch.log(x) * y

    grads = []
    for fn in (fusion.compile(f), f):
        xx = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(fn(xx, y), xx, w)[0])
    torch.testing.assert_close(grads[0], grads[1])  # eager: (1 - 1 + 0.5) / 0 = inf


def test_an_input_whose_kernel_output_only_feeds_comparisons_gets_no_gradient():
    # seed 310222: v1 @ w is written by a kernel whose other output is differentiated, and is
    # read only by a comparison; eager gives v1 no gradient (None), ours gave zeros (an
    # optimizer would then apply weight decay and momentum to it)
    def f(v0, v1, w):
        v4 = v1 @ w
        return torch.where(v4 != v0, v0, 0.0), v4 > 0
    v0, v1 = torch.randn(16, 5, requires_grad=True), torch.randn(16, 4, requires_grad=True)
    w = torch.randn(4, 5)
    for fn in (fusion.compile(f), f):
        g0, g1 = torch.autograd.grad(fn(v0, v1, w)[0].sum(), (v0, v1), allow_unused=True)
        assert g1 is None and g0 is not None
