"""The examples' models, shared by several tests (the seed's BinaryClassifier and gating)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from attention_gating import gating  # noqa: E402,F401
from binary_classifier import BinaryClassifier  # noqa: E402,F401
