"""Capture with torch.fx: trace a module or function once into an fx GraphModule,
and record the Python state the traced code read (``ir.state``).

Lowering that graph to the IR, per input signature, is ``ir.lower``.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
import types
from dataclasses import dataclass

import torch
import torch.fx as fx

from ir.fx_hazards import constant_tensors, fx_hazard
from ir.inplace_ops import InplaceTracer
from ir.state import StateRead, module_structure_read, state_reads


class CaptureError(RuntimeError):
    """The model could not be captured; the message says why."""


class NotLowered(CaptureError):
    """A captured graph holds what the IR does not lower (torch.func transforms): it runs
    as it is, eagerly, whatever the fallback setting."""


class FunctionalizeError(NotLowered):
    """The graph has a mutation or aliasing pattern functionalization does not handle (the
    message says which); eager PyTorch would run it: the caller runs it eagerly."""


@contextlib.contextmanager
def rng_kept():
    """Capture leaves the random state as it found it (CPU and every started GPU): a
    trace or a type probe that runs ``torch.randn`` must not draw the call's numbers."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


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


def trace(model, concrete_args: dict | None = None, n_args: int | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (an nn.Module or any callable of tensors),
    with ``concrete_args`` (Python values) fixed if given. ``n_args``: how many
    positional arguments the call passes, for callables without a Python
    signature (``torch.sigmoid``, ``functools.partial(torch.mul, other=2)``)."""
    return trace_with_state(model, concrete_args, n_args).gm


def trace_with_state(model, concrete_args: dict | None = None, n_args: int | None = None) -> Traced:
    """``trace``, and the Python state the traced code read (to guard)."""
    tracer = _RecordingTracer()
    name = getattr(model, "__name__", type(model).__name__)
    hazard = fx_hazard(model)
    if hazard:
        raise CaptureError(f"fusion: torch.fx would not capture {name} faithfully: {hazard}")
    had = set(vars(model)) if isinstance(model, torch.nn.Module) else set()
    try:
        root = model if isinstance(model, (torch.nn.Module, types.FunctionType)) else as_function(model, n_args)
        with _TRACE_LOCK, rng_kept():  # fx patches global functions while it traces: one at a time
            graph = tracer.trace(root, concrete_args=concrete_args)
    except CaptureError:
        raise
    except Exception as e:  # fx raises TraceError, TypeError, ... depending on the construct
        hint = (" Data-dependent control flow (if/while on tensor values) cannot be captured."
                if "control flow" in str(e) or "iterated" in str(e) else "")
        raise CaptureError(
            f"fusion: torch.fx cannot trace {name}: {type(e).__name__}: {e}.{hint} "
            "Pass fallback='eager' to run such a model eagerly.") from e
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__ if isinstance(model, torch.nn.Module)
                        else root.__name__)
    # fx stores the tensors forward made while tracing (torch.rand(2): _tensor_constant0) on
    # the traced module itself; gm has its copies: take them off the user's module
    if isinstance(model, torch.nn.Module):
        for name in [k for k in vars(model) if k not in had and k.startswith("_tensor_constant")]:
            delattr(model, name)
    baked = constant_tensors(gm, model)
    if baked:
        raise CaptureError(f"fusion: torch.fx would freeze the tensors {name} makes in forward "
                           f"({', '.join(baked)}): made once while tracing, not at every call")
    structure = module_structure_read(model)
    return Traced(gm, state_reads(root, tracer.traced) + ([structure] if structure else []))


def as_function(fn, n_args: int | None = None) -> types.FunctionType:
    """A plain Python function with ``fn``'s parameters that calls ``fn``: torch.fx
    traces only functions and modules, and users pass builtins (``torch.sigmoid``,
    ``operator.mul``), ``functools.partial`` objects, bound methods and callable
    objects. Without a Python signature the parameters are ``n_args`` positional
    ones, known once the first call is seen."""
    params = _plain_parameters(fn)
    if params is None:
        if n_args is None:
            raise CaptureError(f"fusion: {getattr(fn, '__name__', fn)!r} has no Python signature: "
                               "it is traced at its first call, with that call's arguments")
        params = [inspect.Parameter(f"x{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(n_args)]
    scope: dict = {"_fn": fn}
    declared, passed, keyword_only = [], [], False
    for i, p in enumerate(params):
        if p.kind == p.KEYWORD_ONLY and not keyword_only:
            declared.append("*")
            keyword_only = True
        if p.default is not p.empty:
            scope[f"_default{i}"] = p.default
        declared.append(p.name + (f"=_default{i}" if p.default is not p.empty else ""))
        passed.append(f"{p.name}={p.name}" if p.kind == p.KEYWORD_ONLY else p.name)
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "fn")
    name = name if name.isidentifier() else "fn"
    # an unbound tensor method (torch.Tensor.sigmoid) is called on its first argument:
    # the descriptor itself refuses fx's proxies
    call = (f"{passed[0]}.{name}({', '.join(passed[1:])})" if isinstance(fn, _METHOD_DESCRIPTORS) and passed
            else f"_fn({', '.join(passed)})")
    exec(f"def {name}({', '.join(declared)}):\n    return {call}\n", scope)
    return scope[name]


_METHOD_DESCRIPTORS = (types.MethodDescriptorType, types.WrapperDescriptorType)


def _plain_parameters(fn) -> list | None:
    """``fn``'s parameters, or None when it has no Python signature or takes
    ``*args``/``**kwargs`` (fx needs each argument by name)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    return params

