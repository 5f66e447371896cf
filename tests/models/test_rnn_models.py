"""Recurrent models built on torch.nn's ``nn.LSTM``, ``nn.GRU`` and ``nn.LSTMCell``, through
both entry points, against eager PyTorch (fp32 and a float64 copy): outputs, the gradient
of the input and of every parameter; the fused kernel counts, so a fall back to "nothing
fused" fails.

The recurrent modules return tuples (``output, (h_n, c_n)``; ``h, c``), and the cell model
steps through the sequence in a Python loop, as such models are written. Each model reads
its recurrent states out through a sigmoid-gated projection (``proj(h) * sigmoid(gate(h))``),
the part a fusing compiler has to fuse whatever it does with the recurrence itself.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from _common import ENTRIES, assert_fused, assert_grads_like_eager, assert_like_eager, compile_with, seeded, to64, twins

pytestmark = pytest.mark.cpu_only  # CPU tensors (interpreter kernels)

BATCH, SEQ, FEATURES, HIDDEN, OUT = 2, 6, 8, 16, 4


class GatedReadout(nn.Module):
    """proj(h) * sigmoid(gate(h)): a matmul with a sigmoid-gated epilogue."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.proj = nn.Linear(n_in, n_out)
        self.gate = nn.Linear(n_in, n_out)

    def forward(self, h):
        return self.proj(h) * torch.sigmoid(self.gate(h))


class LSTMTagger(nn.Module):
    """A 2-layer nn.LSTM; a gated readout of every step's output plus one of the last
    layer's final cell state."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.readout = GatedReadout(HIDDEN, OUT)
        self.final = GatedReadout(HIDDEN, OUT)

    def forward(self, x):
        out, (_h_n, c_n) = self.lstm(x)
        return self.readout(out) + self.final(c_n[-1])[:, None]


class GRUEncoder(nn.Module):
    """A bidirectional nn.GRU given an initial state; gated readouts of the outputs and of
    both directions' final states."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(FEATURES, HIDDEN, batch_first=True, bidirectional=True)
        self.readout = GatedReadout(2 * HIDDEN, OUT)
        self.final = GatedReadout(2 * HIDDEN, OUT)

    def forward(self, x, h0):
        out, h_n = self.gru(x, h0)
        last = h_n.transpose(0, 1).reshape(x.shape[0], 2 * HIDDEN)
        return self.readout(out), self.final(last)


class LSTMCellLoop(nn.Module):
    """nn.LSTMCell stepped over the sequence in a Python loop; every hidden state read out."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(FEATURES, HIDDEN)
        self.readout = GatedReadout(HIDDEN, OUT)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], HIDDEN)
        c = x.new_zeros(x.shape[0], HIDDEN)
        outs = []
        for x_t in x.unbind(1):
            h, c = self.cell(x_t, (h, c))
            outs.append(self.readout(h))
        return torch.stack(outs, 1)


def _inputs(name):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, SEQ, FEATURES, generator=g, requires_grad=True)
    if name == "gru":
        return [x, torch.randn(2, BATCH, HIDDEN, generator=g, requires_grad=True)]
    return [x]


# Fused kernels once everything fuses. The recurrences are ops returning tuples (run by
# torch); what is ours: each GatedReadout is one kernel (a matmul with the gate as its
# epilogue, or the gate's pointwise kernel), forward and backward. The LSTMCell loop's
# readout runs once per step (SEQ kernels when it is not rolled into one).
MODELS = {
    "lstm": (LSTMTagger, 2, 2),
    "gru": (GRUEncoder, 2, 2),
    "lstm_cell": (LSTMCellLoop, 1, 1),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("name", list(MODELS))
def test_recurrent_model_matches_eager(name, entry):
    make, min_forward, min_backward = MODELS[name]
    model, eager, ref64 = twins(seeded(make))
    compiled = compile_with(entry, model)
    args = _inputs(name)
    args_eager = [a.detach().clone().requires_grad_() for a in args]
    args64 = [to64(a) for a in args]

    outs, wants, refs = (compiled(*args), eager(*args_eager), ref64(*args64))
    if isinstance(wants, torch.Tensor):
        outs, wants, refs = (outs,), (wants,), (refs,)
    assert len(outs) == len(wants)
    for k, (o, w, r) in enumerate(zip(outs, wants, refs)):
        assert_like_eager(f"output {k}", o, w, r)

    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(w.shape, generator=g) for w in wants]
    torch.autograd.backward(list(outs), grads)
    torch.autograd.backward(list(wants), grads)
    torch.autograd.backward(list(refs), [t.double() for t in grads])
    for k, (a, w, r) in enumerate(zip(args, args_eager, args64)):
        assert_like_eager(f"grad of input {k}", a.grad, w.grad, r.grad)
    assert_grads_like_eager(model, eager, ref64)

    assert_fused(entry, compiled, tuple(args), forward=min_forward, backward=min_backward, containing=("sigmoid",))
