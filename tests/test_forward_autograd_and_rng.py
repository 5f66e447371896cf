"""What forward does to autograd and to the random generator, through both entry points,
against eager: regions with gradients off (``no_grad``, ``set_grad_enabled(False)``,
``inference_mode``) inside a call made with or without them, tensor hooks registered in
forward, and random draws, which capture (fx's trace, type probes, factories) must not
consume. Also meta tensors, which have no data for a kernel.
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from test_capture_faithfulness import _fresh, assert_same_autograd, no_grad_inside  # noqa: F401  (_fresh: autouse fixture)
from torch import nn

import fusion
import fusion.dynamo

from helpers import DEVICE

# ---- grad mode inside forward --------------------------------------------------------------

def set_grad_enabled_calls(x):
    torch.set_grad_enabled(False)
    y = torch.sigmoid(x) * 3
    torch.set_grad_enabled(True)
    return x * y


def no_grad_views_and_tuples(x):
    with torch.no_grad():
        v = x.view(-1)            # a view made with gradients off has none
        top = x.max(dim=-1)       # a tuple op; its element is taken after the region
    return x * v.view_as(x) + top[0].unsqueeze(-1) + x.detach() * x


def passes_through_no_grad(x):
    with torch.no_grad():
        y = x                     # the same tensor: keeps its gradient
        z = x.float()             # already float: returns x itself, as eager
    return torch.sigmoid(y) * z


def inference_mode_inside(x):
    with torch.inference_mode():
        y = x * 2
    return y + 1


GRAD_MODE_CASES = [set_grad_enabled_calls, no_grad_views_and_tuples, passes_through_no_grad, no_grad_inside,
                   inference_mode_inside]


@pytest.mark.parametrize("entry", ["compile", "backend"])
@pytest.mark.parametrize("f", GRAD_MODE_CASES, ids=[f.__name__ for f in GRAD_MODE_CASES])
@pytest.mark.parametrize("outer_grad", [True, False], ids=["grad", "no_grad_call"])
def test_grad_mode_regions_match_eager(f, entry, outer_grad):
    x, x2 = (torch.tensor([[0.5, -1.0, 2.0], [3.0, -0.25, 1.5]], device=DEVICE, requires_grad=True)
             for _ in range(2))
    compiled = fusion.compile(f) if entry == "compile" else torch.compile(f, backend="fusion")
    for _ in range(2):  # the second call reuses the plan
        with torch.set_grad_enabled(outer_grad):
            ours, eager = compiled(x), f(x2)
        assert_same_autograd(ours, eager, x, x2)


# ---- capture draws no random numbers, runs nothing for real --------------------------------

def factory_draw(x):
    return torch.sigmoid(x) + torch.randn(x.shape[-1])


def like_draw(x):
    return torch.sigmoid(x) * torch.rand_like(x)


def dropout_draw(x):
    return F.dropout(torch.sigmoid(x), 0.5, training=True) + torch.randint(0, 4, (3,))


def bernoulli_draw(x):
    return torch.bernoulli(torch.sigmoid(x)) * x


def fixed_shape_draw(x):
    return x * 1.0 + torch.rand(3)  # no tensor operand: fx would bake one draw into the trace


def own_generator(x):
    g = torch.Generator().manual_seed(5)
    return torch.sigmoid(x) + torch.randn(x.shape, generator=g)


def seed_in_forward(x):
    torch.manual_seed(3)
    return x + torch.randn_like(x)


def state_round_trip(x):
    state = torch.get_rng_state()
    a = torch.rand_like(x)
    torch.set_rng_state(state)
    return x + a - torch.rand_like(x) + torch.rand_like(x)


def fork_in_forward(x):
    with torch.random.fork_rng():
        a = torch.rand_like(x)
    return x + a + torch.rand_like(x)


RANDOM_CASES = [factory_draw, like_draw, dropout_draw, bernoulli_draw, fixed_shape_draw, own_generator,
                seed_in_forward, state_round_trip, fork_in_forward]


class Calls(nn.Module):
    """A module whose forward calls ``f``, held as an attribute (fx stores the tensors it
    bakes into a trace on the module)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


@pytest.mark.parametrize("entry", ["compile", "backend"])
@pytest.mark.parametrize("as_module", [False, True], ids=["function", "module"])
@pytest.mark.parametrize("f", RANDOM_CASES, ids=[f.__name__ for f in RANDOM_CASES])
def test_random_draws_follow_the_callers_generator(f, entry, as_module):
    """Every call draws exactly what eager draws: same values from the same seed, and the
    generator left where eager leaves it (capture, type probes and traces draw nothing;
    what forward does to the generator's state happens at every call)."""
    x = torch.randn(4, 3, device=DEVICE)
    f = Calls(f) if as_module else f
    compiled = fusion.compile(f) if entry == "compile" else torch.compile(f, backend="fusion")
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        eager, after_eager = f(x), torch.rand(2)
        torch.manual_seed(seed)
        ours, after_ours = compiled(x), torch.rand(2)
        torch.testing.assert_close(ours, eager)
        torch.testing.assert_close(after_ours, after_eager)


def hook_in_forward(x):
    y = torch.sigmoid(x)
    y.register_hook(lambda g: g * 2)
    return y * 3


@pytest.mark.parametrize("entry", ["compile", "backend"])
def test_tensor_hooks_registered_in_forward_run(entry):
    x, x2 = (torch.tensor([0.5, -1.0, 2.0], requires_grad=True) for _ in range(2))
    compiled = fusion.compile(hook_in_forward) if entry == "compile" else torch.compile(hook_in_forward,
                                                                                        backend="fusion")
    compiled(x).sum().backward()
    hook_in_forward(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("entry", ["compile", "backend"])
def test_meta_tensors_run_as_eager(entry):
    def f(x):
        return torch.sigmoid(x) * 2
    compiled = fusion.compile(f) if entry == "compile" else torch.compile(f, backend="fusion")
    out = compiled(torch.empty(3, 4, device="meta"))
    assert out.is_meta and out.shape == (3, 4)


def rotary_tables(x, pos, inv_freq):
    with torch.no_grad():
        f = pos[:, None].float() * inv_freq[None]
        table = torch.cat([f.cos(), f.sin()], -1) * 2
    return torch.sigmoid(x) * table


@pytest.mark.parametrize("table_needs_grad", [False, True])
def test_a_no_grad_region_cuts_gradients_only_where_they_could_flow(table_needs_grad):
    """Values made with gradients off from tensors that need none (rotary tables from a
    buffer) stay in their kernel; a value that could carry a gradient is detached."""
    x = torch.randn(3, 8, requires_grad=True)
    pos, inv_freq = torch.arange(3), torch.rand(4, requires_grad=table_needs_grad)
    compiled = fusion.compile(rotary_tables)
    torch.testing.assert_close(compiled(x, pos, inv_freq), rotary_tables(x, pos, inv_freq))
    ops = [n.op for p in compiled.plans for n in p.graph.nodes]
    assert ("detach" in ops) == table_needs_grad
