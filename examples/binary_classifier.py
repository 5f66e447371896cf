"""Train the seed's BinaryClassifier (Linear 10->64, ReLU, Linear 64->1, Sigmoid)
with BCELoss, compiled and eager side by side from the same initial weights,
on a seeded synthetic data set. Losses must agree step by step.

    python examples/binary_classifier.py [--steps 300] [--plot loss.png]
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


class BinaryClassifier(nn.Module):
    """The seed document's example model."""

    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(10, 64)
        self.linear2 = nn.Linear(64, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        x = self.linear1(x)
        x = torch.nn.functional.relu(x)
        x = self.linear2(x)
        return self.sigmoid(x)


def make_data(n=512, seed=0):
    """Two Gaussian blobs in 10-D, labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 1, generator=g) > 0.5).float()
    x = torch.randn(n, 10, generator=g) + (y * 2 - 1) * 0.75
    return x.to(DEVICE), y.to(DEVICE)


def train(model, x, y, steps, lr=0.1):
    """Full-batch SGD with BCELoss; returns the loss of every step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.BCELoss()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--plot", default="binary_classifier_loss.png",
                        help="PNG for the two loss curves (written where matplotlib is installed)")
    args = parser.parse_args()
    torch.manual_seed(0)
    eager = BinaryClassifier().to(DEVICE)
    compiled_model = copy.deepcopy(eager)
    compiled = fusion.compile(compiled_model)
    x, y = make_data()

    print(fusion.explain(compiled, x[:8].clone().requires_grad_()))
    ours = train(compiled, x, y, args.steps)
    ref = train(eager, x, y, args.steps)
    worst = max(abs(a - b) for a, b in zip(ours, ref))
    print(f"\nsteps: {args.steps}   first loss: fused {ours[0]:.6f} eager {ref[0]:.6f}")
    print(f"last loss:  fused {ours[-1]:.6f}  eager {ref[-1]:.6f}")
    print(f"largest step-by-step difference: {worst:.2e}")
    acc = ((compiled(x) > 0.5).float() == y).float().mean().item()
    print(f"training accuracy (fused): {acc:.3f}")
    if worst > 1e-4:
        raise SystemExit(f"losses diverge: {worst:.2e}")
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
            return
        plt.plot(ref, label="eager")
        plt.plot(ours, "--", label="fusion.compile")
        plt.xlabel("step")
        plt.ylabel("BCE loss")
        plt.legend()
        plt.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
