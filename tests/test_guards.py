"""Guards: a new input signature recompiles and stays correct; state changes are seen."""
import warnings

import pytest
import torch
from torch import nn

import fusion

pytestmark = pytest.mark.cpu_only  # CPU (and meta) tensors


def gate(x, g):
    return x * torch.sigmoid(g)


def _plans(compiled):
    return len(compiled.plans)


@pytest.mark.parametrize("change", ["shape", "dtype", "contiguity", "requires_grad"])
def test_changed_input_recompiles_and_matches_eager(change):
    fast = fusion.compile(gate)
    x, g = torch.randn(6, 10), torch.randn(6, 10)
    torch.testing.assert_close(fast(x, g), gate(x, g))
    if change == "shape":
        x, g = torch.randn(3, 7), torch.randn(3, 7)
    elif change == "dtype":
        x, g = x.double(), g.double()
    elif change == "contiguity":
        x, g = torch.randn(10, 6).t(), torch.randn(10, 6).t()
    else:
        x = x.clone().requires_grad_()
    out = fast(x, g)
    assert _plans(fast) == 2
    torch.testing.assert_close(out, gate(x, g))
    assert out.dtype == gate(x, g).dtype
    fast(x, g)
    assert _plans(fast) == 2  # the same signature again reuses the plan


def test_device_is_part_of_the_guard():
    fast = fusion.compile(gate)
    fast(torch.randn(4), torch.randn(4))
    key = fast.guard_key(torch.randn(4), torch.randn(4))
    meta_key = fast.guard_key(torch.randn(4, device="meta"), torch.randn(4, device="meta"))
    assert key != meta_key


def test_recompile_limit_warns_once_naming_the_input():
    fast = fusion.compile(gate, recompile_limit=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 8):
            x = torch.randn(n)
            torch.testing.assert_close(fast(x, torch.ones(1)), gate(x, torch.ones(1)))
    limit_warnings = [w for w in caught if "recompile limit" in str(w.message)]
    assert len(limit_warnings) == 1
    assert "'x'" in str(limit_warnings[0].message)
    assert _plans(fast) == 3


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8))
        self.register_buffer("scale", torch.tensor(2.0))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(x * torch.sigmoid(self.weight)) * self.scale


def test_replaced_parameter_and_buffer_are_seen():
    model = Gated().eval()
    fast = fusion.compile(model)
    x = torch.randn(3, 8)
    torch.testing.assert_close(fast(x), model(x))
    model.weight = nn.Parameter(torch.randn(8))       # replaced, same shape
    model.scale = torch.tensor(-3.0)                  # buffer replaced
    torch.testing.assert_close(fast(x), model(x))
    with torch.no_grad():
        model.weight.add_(1.0)                         # updated in place
    torch.testing.assert_close(fast(x), model(x))


def test_dropout_train_vs_eval():
    model = Gated()
    fast = fusion.compile(model)
    x = torch.randn(64, 8)
    fast.eval()
    torch.testing.assert_close(fast(x), model(x))
    assert "Dropout" not in fusion.explain(fast, x).graph  # eval: dropout is the identity
    fast.train()
    assert model.training
    torch.manual_seed(0)
    ours = fast(x)
    torch.manual_seed(0)
    torch.testing.assert_close(ours, model(x))  # training: dropout runs in torch, same RNG
    report = fusion.explain(fast, x)
    assert any("Dropout" in op for op, _ in report.extern)


def test_state_dict_and_parameters_are_the_originals():
    model = Gated()
    fast = fusion.compile(model)
    assert list(fast.state_dict()) == list(model.state_dict())
    assert all(a is b for a, b in zip(fast.parameters(), model.parameters()))
    fast(torch.randn(2, 8))
    assert list(model.state_dict()) == ["weight", "scale"]  # compiling added nothing to the model


def test_hot_path_serves_repeated_calls_and_sees_every_guard():
    """The generated hot path (fusion.hot_path) checks what the general path checks."""
    model = nn.Sequential(nn.Linear(6, 6), nn.SiLU())
    fast = fusion.compile(model)
    x = torch.randn(3, 6)
    fast(x)
    entry = fast.entry_for(x)
    assert entry.hot[1], "a positional call with tensors gets a hot path"
    torch.testing.assert_close(fast(x), model(x))
    for change in (lambda: model[0].weight.data.mul_(2),                      # values: read each call
                   lambda: setattr(model[0], "weight", nn.Parameter(torch.randn(6, 6))),
                   lambda: model[0].weight.requires_grad_(False),
                   lambda: model.eval(),
                   lambda: setattr(model, "1", nn.Sigmoid())):                  # a replaced submodule
        change()
        torch.testing.assert_close(fast(x), model(x))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x))
    torch.testing.assert_close(fast(x.double().float().t().contiguous().t()), model(x))
