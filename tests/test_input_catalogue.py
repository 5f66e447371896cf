"""What users hand us, right or wrong: each case gives the right answer or a clear error."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusion


def test_integer_and_bool_tensors_follow_torch_promotion():
    i = torch.arange(-5, 6)
    b = i > 0
    x = torch.randn(11)
    cases = [
        (lambda i: torch.sigmoid(i), (i,)),            # int -> default float
        (lambda i, x: i * x + 1, (i, x)),              # int * float -> float
        (lambda i: i * 3 - 1, (i,)),                    # stays int64
        (lambda b, x: b * x, (b, x)),                   # bool * float
        (lambda b, i: torch.where(b, i, -i), (b, i)),
        (lambda i: i / 2, (i,)),                        # true division -> float
        (lambda i, x: (i > x) | (x > 0.5), (i, x)),
    ]
    for fn, args in cases:
        ours, ref = fusion.compile(fn)(*args), fn(*args)
        assert ours.dtype == ref.dtype
        torch.testing.assert_close(ours, ref)


def test_tensors_on_different_devices_are_refused_naming_the_op():
    with pytest.raises(RuntimeError, match=r"mul.*one device.*cpu.*meta"):
        fusion.compile(lambda x, y: x * torch.sigmoid(y))(torch.randn(4), torch.randn(4, device="meta"))


def test_keyword_defaults_and_python_scalars():
    def scaled(x, scale=2.0, *, shift=0.0, use_shift=True):
        y = torch.sigmoid(x) * scale
        return y + shift if use_shift else y

    fast = fusion.compile(scaled)
    x = torch.randn(5, 3)
    torch.testing.assert_close(fast(x), scaled(x))
    torch.testing.assert_close(fast(x, 3.0, shift=1.0), scaled(x, 3.0, shift=1.0))
    torch.testing.assert_close(fast(x, scale=-1.0, use_shift=False), scaled(x, scale=-1.0, use_shift=False))
    with pytest.raises(TypeError, match="scaled"):
        fast(x, 1.0, 2.0, 3.0)


def test_inplace_ops_in_forward_match_eager_and_fuse():
    def inplace(x):
        y = x * 2
        y.mul_(torch.sigmoid(x))
        return y

    x = torch.randn(3)
    torch.testing.assert_close(fusion.compile(inplace)(x), inplace(x))
    assert len(fusion.explain(inplace, x).kernels) == 1  # mul_ became mul: one kernel


class ManyOutputs(nn.Module):
    def forward(self, x, g):
        s = torch.sigmoid(g)
        return {"gated": x * s, "pair": (s, None), "shape": x.shape[0], "none": None}


def test_tuple_dict_none_and_python_outputs_keep_their_structure():
    x, g = torch.randn(4, 3), torch.randn(4, 3)
    ours, ref = fusion.compile(ManyOutputs())(x, g), ManyOutputs()(x, g)
    assert ours.keys() == ref.keys() and ours["none"] is None and ours["pair"][1] is None
    assert ours["shape"] == 4
    torch.testing.assert_close(ours["gated"], ref["gated"])
    torch.testing.assert_close(ours["pair"][0], ref["pair"][0])


def test_module_returning_none_or_an_input():
    assert fusion.compile(lambda x: None)(torch.randn(2)) is None
    x = torch.randn(3)
    assert fusion.compile(lambda x: x)(x) is x


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5, 2), ()])
def test_empty_and_zero_dim_tensors(shape):
    x, g = torch.randn(shape), torch.randn(shape)
    fn = lambda x, g: F.silu(x) * torch.sigmoid(g) + 1  # noqa: E731
    torch.testing.assert_close(fusion.compile(fn)(x, g), fn(x, g))
    x.requires_grad_()
    out = fusion.compile(fn)(x, g)
    out.sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    fn(ref_x, g).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)


def test_unknown_ops_run_eagerly_and_are_reported():
    def f(x):
        return torch.sigmoid(torch.cumsum(x, 0)) * torch.special.erfcx(x)

    x = torch.randn(6, 4)
    torch.testing.assert_close(fusion.compile(f)(x), f(x))
    extern = dict(fusion.explain(f, x).extern)
    assert any("cumsum" in op for op in extern) and any("erfcx" in op for op in extern)
    assert all(reason for reason in extern.values())


@pytest.mark.gpu
def test_more_than_2_31_elements_on_gpu():
    x = torch.randn(2**31 + 33, device="cuda", dtype=torch.float16)
    out = fusion.compile(lambda x: x * torch.sigmoid(x))(x)
    tail = x[-1000:].float()
    torch.testing.assert_close(out[-1000:].float(), tail * torch.sigmoid(tail), rtol=2e-3, atol=2e-3)
