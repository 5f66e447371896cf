"""Where kernels run: CUDA tensors through the Triton JIT, CPU tensors through
Triton's interpreter when ``TRITON_INTERPRET=1`` was set before triton was
imported, otherwise through the graph's eager references."""
from __future__ import annotations

import os

import torch

TRITON, INTERPRETER, EAGER = "triton", "triton-interpreter", "eager"


def triton_available() -> bool:
    """Whether triton is installed."""
    # find_spec, not import: importing triton costs ~0.3 s that the eager CPU path never needs
    import importlib.util
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """TRITON_INTERPRET=1: kernels run in Triton's interpreter (set before importing triton)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def mode_for(device: torch.device) -> str:
    """How a graph whose tensors live on ``device`` is executed."""
    if not triton_available():
        return EAGER
    if interpreter_on():
        return INTERPRETER
    return TRITON if device.type == "cuda" else EAGER


def describe(mode: str) -> str:
    """The execution mode in words, for explain."""
    return {TRITON: "Triton JIT kernels on the GPU",
            INTERPRETER: "generated Triton kernels in Triton's interpreter (CPU, TRITON_INTERPRET=1)",
            EAGER: "eager torch references (CPU without TRITON_INTERPRET=1: no Triton kernels run)"}[mode]
