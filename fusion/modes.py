"""Where kernels run: CUDA tensors through the Triton JIT, CPU tensors through
Triton's interpreter when ``TRITON_INTERPRET=1`` was set before triton was
imported, otherwise through the graph's eager references."""
from __future__ import annotations

import importlib.util
import os
from enum import Enum

import torch


class Mode(str, Enum):
    TRITON = "triton"                    # JIT-compiled kernels on the GPU
    INTERPRETER = "triton-interpreter"   # the same kernels in Triton's CPU interpreter
    EAGER = "eager"                      # no kernels: each node's eager torch reference

    def __str__(self) -> str:
        return self.value

    def describe(self) -> str:
        """The execution mode in words, for explain."""
        return {Mode.TRITON: "Triton JIT kernels on the GPU",
                Mode.INTERPRETER: "generated Triton kernels in Triton's interpreter "
                                  "(CPU, TRITON_INTERPRET=1)",
                Mode.EAGER: "eager torch references (CPU without TRITON_INTERPRET=1: "
                            "no Triton kernels run)"}[self]


def triton_available() -> bool:
    """Whether triton is installed (find_spec, not import: importing triton costs ~0.3 s
    that the eager CPU path never needs)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """TRITON_INTERPRET=1: kernels run in Triton's interpreter (set before importing triton)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def mode_for(device: torch.device) -> Mode:
    """How a graph whose tensors live on ``device`` is executed."""
    if not triton_available():
        return Mode.EAGER
    if interpreter_on():
        return Mode.INTERPRETER
    return Mode.TRITON if device.type == "cuda" else Mode.EAGER
