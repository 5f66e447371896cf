"""fusion: compile PyTorch modules into fused Triton kernels.

    fast = fusion.compile(model)
    out = fast(x, g)
    print(fusion.explain(model, x, g))
"""
from fusion.api import CompiledModule, compile
from fusion.explain import explain
from ir.capture import CaptureError

__all__ = ["compile", "explain", "CompiledModule", "CaptureError"]
