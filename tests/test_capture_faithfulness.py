"""What torch.fx would capture wrongly goes elsewhere: every case against eager.

Python that a trace runs once (attribute counters, state reassigned in forward,
appends to the model's lists), tensors made inside forward, context managers fx
cannot see (no_grad, autocast), custom autograd Functions, module hooks (added
before or after compiling), module trees changed after the first call, and calls
whose arguments fx cannot bind: each must give eager's numbers through
``fusion.compile``, over several calls. Also the call conventions users rely on
(defaults of None, ``**kwargs``, dict outputs they change, tensor subclasses,
forward-mode AD, torch.compile's ``mode``).
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch._dynamo
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

import fusion
import fusion.dynamo

from helpers import DEVICE


@pytest.fixture(autouse=True)
def _fresh():
    torch._dynamo.reset()
    fusion.dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def same_over_calls(make, inputs, calls=3):
    """Eager and fusion.compile on twin models agree on every call (outputs, then state)."""
    eager, ours = make(), make()
    if isinstance(eager, nn.Module):
        ours.load_state_dict(eager.state_dict())
    compiled = fusion.compile(ours)
    for k in range(calls):
        torch.testing.assert_close(compiled(*inputs(k)), eager(*inputs(k)), msg=lambda m: f"call {k}: {m}")
    if isinstance(eager, nn.Module):
        torch.testing.assert_close(ours.state_dict(), eager.state_dict())
    return compiled


def x_at(k):
    return (torch.full((2, 3), float(k + 1), device=DEVICE),)


def fn(f):
    return lambda: f


# ---- Python a trace would run once --------------------------------------------------------

class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.step = 0

    def forward(self, x):
        self.step += 1
        return torch.sigmoid(x) * self.step


class RecurrentState(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("state", torch.zeros(3))

    def forward(self, x):
        self.state = self.state * 0.5 + x.mean(0)   # a buffer reassigned, not mutated
        return x * torch.sigmoid(self.state)


class Seen(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return torch.sigmoid(x) * len(self.seen)


@pytest.mark.parametrize("make", [Counter, RecurrentState, Seen], ids=["counter", "state", "append"])
def test_python_side_effects_happen_at_every_call(make):
    compiled = same_over_calls(make, x_at, calls=4)
    assert not any(isinstance(v, torch.fx.Proxy) for v in vars(compiled.original).values())


def made_inside(x):
    acc = torch.zeros(2, 3, device=x.device)
    acc.add_(x)
    out = torch.empty(2, 3, device=x.device)
    torch.sigmoid(x, out=out)
    return acc * 2 + out + torch.ones(3, device=x.device)


def test_tensors_made_inside_forward_are_made_at_every_call():
    same_over_calls(fn(made_inside), x_at)


def test_default_dtype_changed_after_the_first_call():
    def f(x):
        return x + torch.ones(3) + torch.ones_like(x, dtype=torch.get_default_dtype())
    compiled = fusion.compile(f)
    x = torch.zeros(3)
    compiled(x)
    try:
        torch.set_default_dtype(torch.float64)
        assert compiled(x).dtype == f(x).dtype == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)


# ---- what fx cannot see ----------------------------------------------------------------------

def no_grad_inside(x):
    with torch.no_grad():
        y = x * 3
    return x * y


class Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -g


def reverse_gradient(x):
    return torch.sigmoid(Reverse.apply(x)) * 2


class NoGradForward(nn.Module):
    @torch.no_grad()
    def forward(self, x):
        return torch.sigmoid(x) * 2


@pytest.mark.parametrize("make", [fn(no_grad_inside), fn(reverse_gradient), NoGradForward],
                         ids=["no_grad_block", "autograd_function", "no_grad_decorator"])
def test_gradients_follow_what_forward_does_to_autograd(make):
    x, x2 = (torch.tensor([0.5, -1.0], device=DEVICE, requires_grad=True) for _ in range(2))
    assert_same_autograd(fusion.compile(make())(x), make()(x2), x, x2)


def assert_same_autograd(ours, eager, x, x2):
    """Same values and requires_grad; where eager has a graph, the same gradients of
    ``sum()`` in ``x`` (ours) and ``x2`` (eager), which are then cleared."""
    torch.testing.assert_close(ours, eager)
    assert ours.requires_grad == eager.requires_grad
    if eager.requires_grad:
        ours.sum().backward()
        eager.sum().backward()
        torch.testing.assert_close(x.grad, x2.grad)
        x.grad = x2.grad = None


def test_autocast_inside_forward():
    def f(a, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.sigmoid(a @ b)
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    ours = fusion.compile(f)(a, b)
    assert ours.dtype == f(a, b).dtype == torch.bfloat16
    torch.testing.assert_close(ours, f(a, b))


# ---- hooks and the module tree ---------------------------------------------------------------

def _block():
    return nn.Sequential(nn.Linear(3, 3), nn.SiLU(), nn.Linear(3, 3))


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("kind", ["forward", "forward_pre", "sub_forward", "full_backward"])
def test_module_hooks_run_like_eager(kind, when):
    torch.manual_seed(0)
    eager, ours = _block(), _block()
    ours.load_state_dict(eager.state_dict())

    def add(m):
        target = m if kind in ("forward", "forward_pre") else m[0]
        if kind in ("forward", "sub_forward"):
            target.register_forward_hook(lambda mod, args, out: out * 100)
        elif kind == "forward_pre":
            target.register_forward_pre_hook(lambda mod, args: (args[0] * 0.5,))
        else:
            target.register_full_backward_hook(lambda mod, gi, go: (gi[0] * 0,))
    add(eager)
    if when == "before":
        add(ours)
    compiled = fusion.compile(ours)
    x = torch.randn(2, 3)
    compiled(x.clone().requires_grad_())
    if when == "after":
        add(ours)
    xe, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yo = eager(xe), compiled(xo)
    torch.testing.assert_close(yo, ye)
    ye.sum().backward()
    yo.sum().backward()
    torch.testing.assert_close(xo.grad, xe.grad)


@pytest.mark.parametrize("change", ["append", "instance_forward", "nested_config", "global_config"])
def test_module_tree_and_config_changes_are_seen(change):
    class Cfg:
        pass

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(3, 3))
            self.cfg = Cfg()
            self.cfg.sub = Cfg()
            self.cfg.sub.eps = 0.1

        def forward(self, x):
            return torch.sigmoid(self.layers(x)) * self.cfg.sub.eps * GLOBAL_CFG.scale

    GLOBAL_CFG.scale = 2.0
    m = M()
    compiled = fusion.compile(m)
    x = torch.randn(2, 3)
    torch.testing.assert_close(compiled(x), m(x))
    if change == "append":
        m.layers.append(nn.Tanh())
    elif change == "instance_forward":
        m.forward = lambda x: x * 7
    elif change == "nested_config":
        m.cfg.sub.eps = 100.0
    else:
        GLOBAL_CFG.scale = -5.0
    torch.testing.assert_close(compiled(x), m(x))


class _GlobalConfig:
    scale = 2.0


GLOBAL_CFG = _GlobalConfig()


def test_a_parameter_replaced_by_a_strided_one_is_read_through_its_strides():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return torch.sigmoid(x * self.w)
    m = M()
    compiled = fusion.compile(m)
    x = torch.ones(2, 3)
    compiled(x)
    m.w = nn.Parameter(torch.tensor([[1., 2.], [3., 4.], [5., 6.]])[:, 0])  # stride 2
    torch.testing.assert_close(compiled(x), m(x))
    m.w.data = torch.tensor([7.]).expand(3)                                 # stride 0
    torch.testing.assert_close(compiled(x), m(x))


# ---- call conventions ----------------------------------------------------------------------

class Masked(nn.Module):
    def forward(self, x, mask=None, *, scale=None):
        y = torch.sigmoid(x)
        if mask is not None:
            y = y * mask
        return y if scale is None else y * scale


def test_arguments_defaulting_to_none():
    m, x = Masked(), torch.randn(2, 3)
    compiled = fusion.compile(m)
    for args, kwargs in (((x,), {}), ((x, None), {}), ((x,), {"mask": None}),
                         ((x, torch.zeros(2, 3)), {}), ((x,), {"scale": 2.0})):
        torch.testing.assert_close(compiled(*args, **kwargs), m(*args, **kwargs))


def test_var_keyword_forward():
    def f(x, **kw):
        return torch.sigmoid(x) * kw.get("scale", 1.0) + kw.get("bias", 0)
    x = torch.randn(3)
    compiled = fusion.compile(f)
    for kw in ({}, {"scale": 3.0}, {"bias": torch.ones(3)}):
        torch.testing.assert_close(compiled(x, **kw), f(x, **kw))


def test_print_and_logging_in_forward():
    import logging
    log = logging.getLogger("fusion-test")

    def f(x):
        print("shape", x.shape)
        log.debug("called")
        return torch.sigmoid(x) * 2
    x = torch.randn(3)
    torch.testing.assert_close(fusion.compile(f)(x), f(x))


def test_dict_and_list_outputs_are_the_callers_to_change():
    def f(x):
        return {"y": torch.sigmoid(x), "parts": [x * 2]}
    out = fusion.compile(f)(torch.randn(3))
    out["loss"] = out["y"].sum()
    out["parts"].append(1)
    assert type(out) is dict and type(out["parts"]) is list


def test_tensor_subclass_and_forward_mode_ad_run_eagerly():
    class My(torch.Tensor):
        pass

    def f(x):
        return torch.sigmoid(x) * x
    compiled = fusion.compile(f)
    x = torch.randn(3)
    assert type(compiled(x.as_subclass(My))) is My
    with fwAD.dual_level():
        d = fwAD.make_dual(x, torch.ones(3))
        tangent = fwAD.unpack_dual(compiled(d)).tangent
        expected = fwAD.unpack_dual(f(d)).tangent
    torch.testing.assert_close(tangent, expected)


def test_torch_compile_mode_is_accepted():
    x, g = torch.randn(4, 3), torch.randn(4, 3)
    compiled = torch.compile(lambda x, g: x * torch.sigmoid(g), backend="fusion", mode="max-autotune")
    torch.testing.assert_close(compiled(x, g), x * torch.sigmoid(g))


def test_explain_after_the_recompile_limit_says_so():
    compiled = fusion.compile(lambda x: torch.sigmoid(x) * 2, recompile_limit=1)
    compiled(torch.randn(2))
    report = fusion.explain(compiled, torch.randn(3))
    assert "recompile limit" in str(report)


def test_silu_module_with_inplace_flag_in_a_sequential():
    m = nn.Sequential(nn.Linear(3, 3), nn.SiLU(inplace=True))
    x = torch.randn(2, 3)
    torch.testing.assert_close(fusion.compile(m)(x), F.silu(m[0](x)))
