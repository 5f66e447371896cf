"""Bytes saved for backward by a compiled training step never exceed eager autograd's."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fusion
from fusion.explain import saved_bytes

from examples_models import BinaryClassifier, gating

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from lstm_cell import LSTMCell  # noqa: E402

pytestmark = pytest.mark.cpu_only  # CPU tensors


def _chain(x, g, b):
    return F.silu(x) * torch.sigmoid(g) + b


CASES = {
    "classifier": lambda: (BinaryClassifier(), (torch.randn(32, 10),)),
    "gating": lambda: (gating, (torch.randn(48, 16, requires_grad=True), torch.randn(40, 16, requires_grad=True))),
    "chain": lambda: (_chain, (torch.randn(64, 33, requires_grad=True), torch.randn(64, 33, requires_grad=True),
                               torch.randn(33, requires_grad=True))),
    "lstm": lambda: (LSTMCell(8, 16), (torch.randn(4, 8), torch.randn(4, 16, requires_grad=True),
                                       torch.randn(4, 16, requires_grad=True))),
    "bce": lambda: (lambda z, y: F.binary_cross_entropy(torch.sigmoid(z), y),
                    (torch.randn(256, requires_grad=True), torch.rand(256))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_saved_bytes_at_most_eager(case):
    torch.manual_seed(0)
    model, args = CASES[case]()
    compiled = fusion.compile(model)
    _, ours = saved_bytes(compiled, *args)
    _, eager = saved_bytes(model, *args)
    assert ours <= eager, f"{case}: fused saves {ours} bytes, eager {eager}"


def test_nothing_is_saved_under_no_grad():
    model, args = CASES["chain"]()
    with torch.no_grad():
        _, ours = saved_bytes(fusion.compile(model), *args)
    assert ours == 0
