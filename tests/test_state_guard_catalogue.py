"""Guards on the Python state forward reads: a change after the first call is seen.

Each pattern changes one value forward read (a module attribute of every plain
type, a global, a closure variable, a config object's field, a function or
submodule held by the model) after a compiled call, then compares the next
call, its gradients and the number of recompiles with eager PyTorch, through
both entry points.
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

import fusion
import fusion.dynamo

from helpers import DEVICE

SCALE = 2.0
MODE = "sigmoid"


class Config:
    def __init__(self):
        self.gain = 1.5


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = 1.0            # float
        self.n = 2              # int
        self.on = True          # bool
        self.kind = "sig"       # str
        self.offset = None      # None / tensor-free optional
        self.dims = (1, 1)      # tuple
        self.cfg = Config()     # a plain config object
        self.act = torch.sigmoid
        self.inner = nn.Identity()

    def forward(self, x):
        y = self.act(x) * self.k + self.n
        if self.on:
            y = y * self.cfg.gain
        y = y if self.kind == "sig" else torch.tanh(y)
        if self.offset is not None:
            y = y + self.offset
        y = y * len(self.dims) + self.dims[0]
        y = self.inner(y)
        return y * SCALE if MODE == "sigmoid" else y - SCALE


CHANGES = {
    "float": lambda m: setattr(m, "k", 3.0),
    "int": lambda m: setattr(m, "n", -1),
    "bool": lambda m: setattr(m, "on", False),
    "str": lambda m: setattr(m, "kind", "tanh"),
    "none": lambda m: setattr(m, "offset", 0.25),
    "tuple": lambda m: setattr(m, "dims", (3,)),
    "config_field": lambda m: setattr(m.cfg, "gain", -2.0),
    "function": lambda m: setattr(m, "act", F.silu),
    "submodule": lambda m: setattr(m, "inner", nn.Softsign()),
    "global_number": lambda m: globals().__setitem__("SCALE", 5.0),
    "global_string": lambda m: globals().__setitem__("MODE", "other"),
}


@pytest.fixture(autouse=True)
def _restore_globals():
    yield
    globals().update(SCALE=2.0, MODE="sigmoid")
    torch._dynamo.reset()
    fusion.dynamo.reset()


@pytest.mark.parametrize("entry", ["fusion", "backend"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_value_forward_reads_is_seen(entry, change):
    model = Model().to(DEVICE)
    compiled = fusion.compile(model) if entry == "fusion" else torch.compile(model, backend="fusion")
    x = torch.randn(4, 3, device=DEVICE, requires_grad=True)
    torch.testing.assert_close(compiled(x), model(x))
    CHANGES[change](model)
    ours = compiled(x)
    expected = model(x)
    torch.testing.assert_close(ours, expected)
    g_ours, = torch.autograd.grad(ours.sum(), x)
    g_eager, = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(g_ours, g_eager)
    compiled(x)  # the new state again: no further recompile
    if entry == "fusion":
        assert compiled.capture == "torch.fx"
        assert len(compiled.plans) == 1  # the stale plan was dropped, one new one built


def test_closure_variable_change_is_seen():
    k = [1.0]

    def make():
        scale = k[0]

        def f(x):
            return torch.sigmoid(x) * scale
        return f

    f = make()
    compiled = fusion.compile(f)
    x = torch.randn(5, device=DEVICE)
    torch.testing.assert_close(compiled(x), f(x))
    f.__closure__[0].cell_contents = 4.0
    torch.testing.assert_close(compiled(x), f(x))


def test_unchanged_state_does_not_recapture():
    model = Model().to(DEVICE)
    compiled = fusion.compile(model)
    x = torch.randn(4, 3, device=DEVICE)
    for _ in range(3):
        compiled(x)
    model.k = 1.0        # the same value again: nothing changed
    model.unread = 7     # not read by forward: no guard
    compiled(x)
    assert len(compiled.plans) == 1


def test_attribute_of_a_user_module_is_guarded(tmp_path, monkeypatch):
    (tmp_path / "user_settings.py").write_text("GAIN = 2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_settings

    def f(x):
        return torch.sigmoid(x) * user_settings.GAIN
    compiled = fusion.compile(f)
    x = torch.randn(5, device=DEVICE)
    torch.testing.assert_close(compiled(x), f(x))
    user_settings.GAIN = -3.0
    torch.testing.assert_close(compiled(x), f(x))


def test_an_options_object_argument_is_read_at_every_call():
    class Options:
        scale = 2.0

    def f(x, opts):
        if opts.scale > 1:   # control flow on a Python value of an argument
            return torch.sigmoid(x) * opts.scale
        return x
    opts = Options()
    compiled = fusion.compile(f)
    x = torch.randn(5, device=DEVICE)
    torch.testing.assert_close(compiled(x, opts), f(x, opts))
    opts.scale = 4.0         # the same object, another value
    torch.testing.assert_close(compiled(x, opts), f(x, opts))
    opts.scale = 0.5
    torch.testing.assert_close(compiled(x, opts), f(x, opts))
