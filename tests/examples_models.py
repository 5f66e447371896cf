"""Models shared by several tests: the examples' (the seed's BinaryClassifier and gating)
and the benchmarked pointwise chains."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from attention_gating import gating  # noqa: E402,F401
from binary_classifier import BinaryClassifier  # noqa: E402,F401


def swish(x):
    return x * torch.sigmoid(x)


def gated(x, g, b):
    return x * torch.sigmoid(g) + b


def mixed(x, y):
    return torch.relu(x) * torch.sigmoid(y) - torch.tanh(x)


# the benchmarked chains and their operand shapes (b broadcast along rows)
CHAINS = {"swish": (swish, [(37, 53)]), "gated": (gated, [(37, 53), (37, 53), (53,)]),
          "mixed": (mixed, [(37, 53), (37, 53)])}
