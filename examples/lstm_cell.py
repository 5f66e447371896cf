"""An LSTM cell written with torch ops, compiled: the two matmuls plus ONE fused
kernel for every gate nonlinearity and the state update, forward and backward.
``gates.chunk(4, 1)`` becomes four strided views of one buffer, not copies.

Trains a sequence model over T steps, compiled and eager side by side, and
checks the cell against ``torch.nn.LSTMCell`` with the same weights.

    python examples/lstm_cell.py [--steps 20] [--seq 8]
"""
import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _device import DEVICE  # noqa: E402  (sets TRITON_INTERPRET before triton loads)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import fusion  # noqa: E402


class LSTMCell(nn.Module):
    """``nn.LSTMCell``'s maths and parameter layout, in plain torch ops."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size) / input_size ** 0.5)
        self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size) / hidden_size ** 0.5)
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))

    def forward(self, x, h, c):
        gates = x @ self.weight_ih.T + h @ self.weight_hh.T + self.bias
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class SequenceModel(nn.Module):
    """Runs a cell over a sequence and reads out the last hidden state."""

    def __init__(self, cell, hidden_size):
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, xs):
        h = xs.new_zeros(xs.shape[1], self.head.in_features)
        c = torch.zeros_like(h)
        for x in xs:
            h, c = self.cell(x, h, c)
        return self.head(h)


def same_as_lstmcell(cell: LSTMCell, x, h, c):
    """Our cell vs torch.nn.LSTMCell loaded with the same weights."""
    ref = nn.LSTMCell(x.shape[1], h.shape[1]).to(x.device)
    with torch.no_grad():
        ref.weight_ih.copy_(cell.weight_ih)
        ref.weight_hh.copy_(cell.weight_hh)
        ref.bias_ih.copy_(cell.bias)
        ref.bias_hh.zero_()
    return ref(x, (h, c))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    n_in, hid = 8, args.hidden
    cell = LSTMCell(n_in, hid).to(DEVICE)
    x, h, c = (torch.randn(args.batch, n, device=DEVICE) for n in (n_in, hid, hid))

    report = fusion.explain(cell, x, h.requires_grad_(), c)
    print(report)
    fast_cell = fusion.compile(cell)
    ours = fast_cell(x, h, c)
    ref = same_as_lstmcell(cell, x, h, c)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    print("\ncell matches torch.nn.LSTMCell with the same weights")

    eager = SequenceModel(LSTMCell(n_in, hid), hid).to(DEVICE)
    model = copy.deepcopy(eager)
    model.cell = fusion.compile(model.cell)
    xs = torch.randn(args.seq, args.batch, n_in, device=DEVICE)
    ys = xs.sum(dim=(0, 2)).unsqueeze(1).sin()
    losses = {}
    for name, m in (("fused", model), ("eager", eager)):
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        losses[name] = []
        for _ in range(args.steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(m(xs), ys)
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    worst = max(abs(a - b) for a, b in zip(losses["fused"], losses["eager"]))
    print(f"sequence training, {args.steps} Adam steps over T={args.seq}: last loss fused "
          f"{losses['fused'][-1]:.6f} eager {losses['eager'][-1]:.6f}; largest difference {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("training diverged from eager")


if __name__ == "__main__":
    main()
