"""Capture: torch.fx traces a module or function once into an fx GraphModule.

Lowering that graph to the IR, per input signature, is ``ir.lower``.
"""
from __future__ import annotations

import threading

import torch.fx as fx


class CaptureError(RuntimeError):
    """The model could not be captured; the message says why."""


_TRACE_LOCK = threading.Lock()


def trace(model, concrete_args: dict | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (an nn.Module or a function of tensors),
    with ``concrete_args`` (Python values) fixed if given."""
    try:
        with _TRACE_LOCK:  # fx patches global functions while it traces: one at a time
            return fx.symbolic_trace(model, concrete_args=concrete_args)
    except Exception as e:  # fx raises TraceError, TypeError, ... depending on the construct
        name = getattr(model, "__name__", type(model).__name__)
        hint = (" Data-dependent control flow (if/while on tensor values) cannot be captured."
                if "control flow" in str(e) or "iterated" in str(e) else "")
        raise CaptureError(
            f"fusion: torch.fx cannot trace {name}: {type(e).__name__}: {e}.{hint} "
            "Pass fallback='eager' to run such a model eagerly.") from e
