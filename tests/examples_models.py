"""Models shared by several tests (the seed's examples)."""
import torch
from torch import nn


def gating(q, k):
    """Attention gating from the seed: scores * sigmoid(scores)."""
    scores = q @ k.T
    return scores * torch.sigmoid(scores)


class BinaryClassifier(nn.Module):
    """The seed's classifier: Linear 10->64, ReLU, Linear 64->1, Sigmoid."""

    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(10, 64)
        self.linear2 = nn.Linear(64, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return self.sigmoid(self.linear2(torch.relu(self.linear1(x))))
