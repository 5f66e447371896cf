"""Wrong inputs and untraceable models give eager's error type and a clear message.

Shapes that do not broadcast raise RuntimeError (as eager does) naming the op
and the shapes; a model torch.fx cannot trace raises fusion.CaptureError
saying why, or runs eagerly with one warning under fallback="eager".
(Wider catalogue of user inputs: test_input_catalogue.py.)
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fusion

from helpers import DEVICE


def gated(x, g, b):
    return x * torch.sigmoid(g) + b


def _eager_error(fn, *args) -> type:
    with pytest.raises(Exception) as info:
        fn(*args)
    return info.type


@pytest.mark.parametrize("op,fn,shapes", [
    ("mul", gated, [(3, 4), (3, 4), (4,)]),             # fine: the control case
    ("mul", gated, [(3, 4), (3, 5), (4,)]),
    ("add", gated, [(3, 4), (3, 4), (3,)]),
    ("sub", lambda x, y: torch.relu(x) - y, [(2, 3, 4), (3, 2, 1)]),
    ("maximum", lambda x, y: torch.maximum(torch.tanh(x), y), [(7,), (8,)]),
    ("where", lambda c, x, y: torch.where(c > 0, x, y), [(5, 1), (5, 2), (3, 1)]),
], ids=["ok", "mul", "add_bias", "sub_rank3", "maximum", "where"])
def test_shapes_that_do_not_broadcast_raise_like_eager(op, fn, shapes):
    args = [torch.randn(s, device=DEVICE) for s in shapes]
    try:
        torch.broadcast_shapes(*shapes)
    except RuntimeError:
        pass
    else:
        torch.testing.assert_close(fusion.compile(fn)(*args), fn(*args))
        return
    expected_type = _eager_error(fn, *args)
    with pytest.raises(expected_type) as info:
        fusion.compile(fn)(*args)
    message = str(info.value)
    assert f"fusion: {op}:" in message, message
    assert "do not broadcast" in message
    # the two shapes that clash are named as the user sees them
    assert sum(str(list(s)) in message for s in shapes) >= 1, message


def test_broadcast_error_names_both_shapes():
    x, y = torch.randn(3, 4, device=DEVICE), torch.randn(5, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"fusion: mul: shapes \[3, 4\] and \[5\] do not broadcast"):
        fusion.compile(lambda x, y: x * torch.sigmoid(y))(x, y)


def test_where_with_a_float_condition_raises_eagers_type():
    c, x = torch.randn(4, device=DEVICE), torch.randn(4, device=DEVICE)
    fn = lambda c, x: torch.where(c, x, -x)  # noqa: E731
    with pytest.raises(_eager_error(fn, c, x), match=r"fusion: where: condition must be a bool"):
        fusion.compile(fn)(c, x)


class DataDependent(nn.Module):
    """Branches on a tensor's value: torch.fx cannot capture it."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        if x.sum() > 0:
            return torch.sigmoid(x) * self.scale
        return torch.tanh(x)


def test_untraceable_model_raises_capture_error_saying_why():
    # raised by the first call: the model is retraced then with its Python arguments
    # fixed, in case the branch was on one of those
    with pytest.raises(fusion.CaptureError) as info:
        fusion.compile(DataDependent())(torch.randn(5, device=DEVICE))
    message = str(info.value)
    assert "DataDependent" in message
    assert "cannot trace" in message and "control flow" in message
    assert "fallback='eager'" in message, "the error says how to run it anyway"
    assert isinstance(info.value, RuntimeError)


def test_untraceable_model_falls_back_to_eager_with_one_warning():
    model = DataDependent()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = fusion.compile(model, fallback="eager")
        for x in (torch.randn(5, device=DEVICE).abs(), -torch.randn(5, device=DEVICE).abs()):
            torch.testing.assert_close(compiled(x), model(x))
    ours = [w for w in caught if "fusion" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert issubclass(ours[0].category, RuntimeWarning)
    assert "eager" in str(ours[0].message) and "DataDependent" in str(ours[0].message)
    # still the model: its parameters and gradients are the original's
    assert list(compiled.state_dict()) == list(model.state_dict())
    compiled(torch.ones(5, device=DEVICE)).sum().backward()
    assert model.scale.grad is not None


def test_untraceable_function_falls_back_too():
    def fn(x):
        return torch.sigmoid(x) if x.max() > 1 else x
    compiled = fusion.compile(fn, fallback="eager")
    x = torch.randn(6, device=DEVICE) * 3
    with pytest.warns(RuntimeWarning, match="eager"):
        torch.testing.assert_close(compiled(x), fn(x))


def test_unknown_fallback_is_refused():
    with pytest.raises(ValueError, match="fallback"):
        fusion.compile(gated, fallback="sometimes")
