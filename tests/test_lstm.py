"""The LSTM cell: chunk as strided views, one fused kernel for all the gates."""
import sys
from pathlib import Path

import pytest
import torch

import fusion

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from lstm_cell import LSTMCell, SequenceModel, same_as_lstmcell  # noqa: E402

pytestmark = pytest.mark.cpu_only  # CPU tensors


def _inputs(batch=5, n_in=7, hid=6):
    torch.manual_seed(0)
    return LSTMCell(n_in, hid), torch.randn(batch, n_in), torch.randn(batch, hid), torch.randn(batch, hid)


def test_cell_matches_torch_lstmcell():
    cell, x, h, c = _inputs()
    ours = fusion.compile(cell)(x, h, c)
    ref = same_as_lstmcell(cell, x, h, c)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gates_and_state_update_are_one_kernel_with_strided_chunks():
    cell, x, h, c = _inputs()
    report = fusion.explain(cell, x, h.requires_grad_(), c.requires_grad_())
    # the two matmuls (x @ W_ih.T stays cuBLAS; h @ W_hh.T carries "+ x W + b" as its
    # epilogue) plus ONE kernel for every gate nonlinearity and the state update
    assert sorted(k.kind for k in report.kernels) == ["matmul", "pointwise"], report
    assert report.graph.count("= matmul(") == 2
    gate_kernels = [k for k in report.kernels if "sigmoid" in k.name]
    assert len(gate_kernels) == 1, [k.name for k in report.kernels]
    gate = gate_kernels[0]
    assert len(gate.outputs) == 2  # h' and c' in one pass
    # the four chunks are views of the gates buffer, read through strides
    assert gate.source.count("_stride0") >= 4
    assert "narrow" in report.graph and not any("chunk" in op for op, _ in report.extern)
    assert len([k for k in report.backward_kernels if "sigmoid" in k.name]) == 1


def test_cell_gradients_match_eager_float64():
    cell, x, h, c = _inputs()
    cell = cell.double()
    args = [t.double().requires_grad_() for t in (x, h, c)]
    fast = fusion.compile(cell)
    torch.autograd.gradcheck(lambda *a: fast(*a), args, eps=1e-6, atol=1e-6, fast_mode=True)


def test_sequence_training_matches_eager():
    torch.manual_seed(0)
    eager = SequenceModel(LSTMCell(4, 8), 8)
    model = SequenceModel(LSTMCell(4, 8), 8)
    model.load_state_dict(eager.state_dict())
    model.cell = fusion.compile(model.cell)
    xs, ys = torch.randn(5, 3, 4), torch.randn(3, 1)
    for m in (model, eager):
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(xs), ys).backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
