"""Capture with torch.fx: trace a module or function once into an fx GraphModule,
and record the Python state the traced code read (``ir.state``).

Lowering that graph to the IR, per input signature, is ``ir.lower``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.fx as fx

from ir.inplace_ops import InplaceTracer
from ir.state import StateRead, state_reads


class CaptureError(RuntimeError):
    """The model could not be captured; the message says why."""


class NotLowered(CaptureError):
    """A captured graph holds what the IR does not lower (torch.func transforms): it runs
    as it is, eagerly, whatever the fallback setting."""


class FunctionalizeError(NotLowered):
    """The graph has a mutation or aliasing pattern functionalization does not handle (the
    message says which); eager PyTorch would run it: the caller runs it eagerly."""


@dataclass
class Traced:
    """An fx capture: the graph module, and the Python values the trace baked in."""
    gm: fx.GraphModule
    state: list[StateRead]


_TRACE_LOCK = threading.Lock()


class _RecordingTracer(InplaceTracer):
    """fx's tracer keeping in-place ops (``+=``, ``x[i] = v``, buffers' ``add_``: see
    ``ir.inplace_ops``) and remembering the modules whose forward it traced into."""

    def __init__(self):
        super().__init__()
        self.traced: list[torch.nn.Module] = []

    def call_module(self, m, forward, args, kwargs):
        if not self.is_leaf_module(m, self.path_of_module(m)):
            self.traced.append(m)
        return super().call_module(m, forward, args, kwargs)


def trace(model, concrete_args: dict | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (an nn.Module or a function of tensors),
    with ``concrete_args`` (Python values) fixed if given."""
    return trace_with_state(model, concrete_args).gm


def trace_with_state(model, concrete_args: dict | None = None) -> Traced:
    """``trace``, and the Python state the traced code read (to guard)."""
    tracer = _RecordingTracer()
    try:
        with _TRACE_LOCK:  # fx patches global functions while it traces: one at a time
            graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:  # fx raises TraceError, TypeError, ... depending on the construct
        name = getattr(model, "__name__", type(model).__name__)
        hint = (" Data-dependent control flow (if/while on tensor values) cannot be captured."
                if "control flow" in str(e) or "iterated" in str(e) else "")
        raise CaptureError(
            f"fusion: torch.fx cannot trace {name}: {type(e).__name__}: {e}.{hint} "
            "Pass fallback='eager' to run such a model eagerly.") from e
    name = model.__class__.__name__ if isinstance(model, torch.nn.Module) else getattr(
        model, "__name__", type(model).__name__)
    gm = fx.GraphModule(tracer.root, graph, name)
    return Traced(gm, state_reads(model, tracer.traced))
