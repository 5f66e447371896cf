"""Pick the device for the examples before triton is imported.

Without a CUDA GPU the generated kernels run in Triton's interpreter, which
must be switched on (TRITON_INTERPRET=1) before triton is first imported.
"""
import os

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
