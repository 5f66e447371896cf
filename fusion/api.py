"""The public entry points: ``fusion.compile`` and the module it returns.

Capture, per call signature, takes the first path that works:

1. torch.fx (``symbolic_trace``, milliseconds), once per model; the Python
   values it baked in (``self.k``, globals, closures: ``ir.state``) are
   guarded, and a change recaptures;
2. torch.fx again with the call's Python arguments fixed (control flow on them);
3. Dynamo (``torch.compile`` with our backend), for what fx cannot trace:
   shape-dependent control flow, decorated forwards, loops, data-dependent
   Python (then only with ``fallback="eager"``: graph breaks run eagerly).
   Dynamo guards Python state itself; each graph it captures becomes a
   ``CompiledModule`` of its own (a region).

Each signature's graph is lowered to the IR, planned (``fusion.plan``) and run
(``fusion.runtime``). The Dynamo path lives in ``fusion.dynamo_capture``.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from codegen.pointwise import NUMERICS
from fusion.dynamo_capture import DynamoCapture, model_name
from fusion.guards import PlanGuards
from fusion.hot_path import MISS, hooks_set, make_hot
from fusion.modes import mode_for
from fusion.plan import Plan, build_plan
from fusion.runtime import run_plan
from fusion.signature import Binder, describe_arg, signature_key, tensor_leaves, transformed
from ir.capture import CaptureError, NotLowered, Traced, trace_with_state
from ir.extern import ProbedTypeMismatch
from ir.functional_write_back import inputs_alias, write_back
from ir.graph import Node
from ir.inplace_ops import may_mutate
from ir.lower import Captured, fetch_attr, lower
from ir.state import StateGuards, module_reads

DEFAULT_RECOMPILE_LIMIT = 8


@dataclass(eq=False)
class SignatureEntry:
    """What one call signature compiled to: the captured graph, its plan, the guards
    on module state the plan was built with (``fusion.guards``) and on the Python
    values its capture baked in (``ir.state``); for a graph with in-place ops, its
    functionalization (what to write back into the caller's tensors after the plan ran)."""
    captured: Captured
    plan: Plan
    guards: PlanGuards
    state: StateGuards
    traced: Traced
    root: object                       # where parameters and written-back attributes live
    functional: object | None = None   # ir.functionalize.Functionalized, when it wrote anything
    hot: dict = field(default_factory=dict)  # positional arguments given -> its hot path
                                             # (fusion.hot_path), False where none applies


class CompiledModule(DynamoCapture, torch.nn.Module):
    """Runs a model's forward through fused kernels; otherwise it is the model.

    It shares the original's parameters, buffers and submodules (same tensors,
    same ``state_dict`` keys), so optimizers, hooks and checkpoints treat it
    like the original. Plans are cached per input signature (``fusion.signature``).
    """

    def __init__(self, model, fallback: str = "error", recompile_limit: int = DEFAULT_RECOMPILE_LIMIT,
                 precision: str = "default"):
        super().__init__()
        if fallback not in ("error", "eager"):
            raise ValueError(f"fusion.compile: fallback must be 'error' or 'eager', not {fallback!r}")
        if precision not in NUMERICS:
            raise ValueError(f"fusion.compile: precision must be one of {NUMERICS}, not {precision!r}")
        self._numerics = precision  # "numerics" inside: "precision" names tl.dot's (tf32/ieee) there
        self.__dict__["_orig"] = model  # not a submodule: the state_dict keys stay the original's
        if isinstance(model, torch.nn.Module):
            self._parameters = model._parameters
            self._buffers = model._buffers
            self._modules = model._modules
        self._binder = Binder(model.forward if isinstance(model, torch.nn.Module) else model, model)
        self._entries: dict[tuple, SignatureEntry] = {}
        self._limit = recompile_limit
        self._warned_limit = False
        self._last_key = None
        self._fallback = fallback
        self._eager_reason = None
        self._warned: set[str] = set()   # what _warn_once has said
        self._capture = "torch.fx"       # how calls are captured, in words (explain)
        self._specialized: dict[tuple, Traced] = {}
        self.__dict__["_dynamo"] = None  # the Dynamo-compiled model, once capture moved there
        self.__dict__["_hot"] = None     # the last signature's hot path (fusion.hot_path)
        self._regions: list[CompiledModule] = []  # what Dynamo's graphs became
        self._trace_error: CaptureError | None = None
        self._last_change: str | None = None   # the Python value whose change last recaptured
        # a GraphModule (from Dynamo) is already captured: used as it is, nothing baked in
        self.__dict__["_traced"] = Traced(model, []) if isinstance(model, fx.GraphModule) else None

    # ---- nn.Module behaviour delegated to the original ---------------------------
    @property
    def training(self) -> bool:
        """The original module's mode (model.train()/eval() on either is seen)."""
        orig = self.__dict__.get("_orig")
        return orig.training if isinstance(orig, torch.nn.Module) else self.__dict__.get("_training", True)

    @training.setter
    def training(self, mode: bool) -> None:
        orig = self.__dict__.get("_orig")
        if isinstance(orig, torch.nn.Module):
            orig.training = mode
        else:
            self.__dict__["_training"] = mode

    def train(self, mode: bool = True):
        if isinstance(self._orig, torch.nn.Module):
            self._orig.train(mode)
        else:
            self.training = mode
        return self

    def __repr__(self) -> str:
        return f"fusion.compile({self._orig!r})"

    # ---- what was compiled (explain, tests) ----------------------------------------
    @property
    def original(self):
        """The module or function that was compiled."""
        return self._orig

    @property
    def eager_reason(self) -> str | None:
        """Why calls run eagerly (capture failed and fallback='eager'), or None."""
        return self._eager_reason

    @property
    def capture(self) -> str:
        """How calls are captured, in words: torch.fx, or Dynamo and why."""
        return self._capture

    @property
    def regions(self) -> list["CompiledModule"]:
        """Under Dynamo capture: the compiled module of each graph Dynamo captured."""
        return list(self._regions)

    @property
    def plans(self) -> list[Plan]:
        """The plan of every signature compiled so far, oldest first (under Dynamo
        capture, those of every region)."""
        own = [e.plan for e in self._entries.values()]
        return own + [p for r in self._regions for p in r.plans]

    def entry_for(self, *args, **kwargs) -> SignatureEntry | None:
        """What the call ``self(*args, **kwargs)`` runs, if it was compiled by torch.fx capture."""
        return self._entries.get(self.guard_key(*args, **kwargs))

    def plan_for(self, *args, **kwargs) -> Plan | None:
        """The plan the call ``self(*args, **kwargs)`` runs, if it was compiled by torch.fx capture."""
        entry = self.entry_for(*args, **kwargs)
        return entry.plan if entry is not None else None

    def guard_key(self, *args, **kwargs) -> tuple:
        """What identifies a call signature (``fusion.signature``)."""
        return signature_key(self.training, self._binder.bind(args, kwargs))

    # ---- calling -------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        # the hot path of the last signature: straight-line guards and run (fusion.hot_path);
        # nn.Module's call machinery only when hooks must run
        if hooks_set(self):
            return super().__call__(*args, **kwargs)
        hot = self._hot
        if hot is not None and not kwargs:
            out = hot(args)
            if out is not MISS:
                return out
        # forward itself, not nn.Module.__call__: while another thread captures a model,
        # torch.fx has nn.Module.__call__ patched to record calls into its own graph
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        self.__dict__["_hot"] = None  # set again below when a compiled signature runs
        if self._dynamo is not None:
            return self._call_dynamo(args, kwargs)
        if self._eager_reason is not None:
            return self._orig(*args, **kwargs)
        if _autocast_on():
            self._warn_once("autocast", "fusion: autocast is not applied by fused kernels yet; "
                            "calls under torch.autocast run eagerly.")
            return self._orig(*args, **kwargs)
        why = transformed((args, kwargs))
        if why:
            self._warn_once(why, f"fusion: {why} run eagerly: generated kernels would not follow them.")
            return self._orig(*args, **kwargs)
        if kwargs and self._binder.signature is None:  # a builtin: no names to bind keywords to
            self._warn_once("kwargs", f"fusion: {self._orig!r} has no Python signature: calls "
                            "with keyword arguments run eagerly (pass them positionally).")
            return self._orig(*args, **kwargs)
        given = -1 if kwargs else len(args)   # positional arguments as passed (the hot path's)
        call = (args, kwargs)                  # as passed: what eager and Dynamo are called with
        args = self._binder.bind(args, kwargs)
        key = signature_key(self.training, args)
        entry = self._entries.get(key)
        params = self._valid(entry, key) if entry is not None else None
        if params is None:
            if len(self._entries) >= self._limit:
                self._warn_limit(key)
                return self._orig(*call[0], **call[1])
            entry = self._capture_signature(args)
            if entry is None:  # capture moved to Dynamo, or runs eagerly
                return self.forward(*call[0], **call[1])
            self._entries[key] = entry
            params = entry.guards.values()
        self._last_key = key
        if given >= 0 and given not in entry.hot:
            entry.hot[given] = make_hot(self, entry, args, given) or False
        self.__dict__["_hot"] = entry.hot.get(given) or None
        try:
            return self._run(entry, args, params)
        except ProbedTypeMismatch as e:  # nothing was written yet: eager gives the answer
            del self._entries[key]
            return self._run_eagerly(CaptureError(f"{e}; data-dependent shapes cannot be captured."), call)

    def _valid(self, entry: SignatureEntry, key: tuple) -> dict | None:
        """The parameters ``entry`` reads, or None when a guard failed (the entry is dropped;
        a changed Python value makes its trace stale for every signature)."""
        params = entry.guards.values()
        if params is not None and entry.state.hold():
            return params
        if not entry.state.hold():
            self._last_change = entry.state.changed()
            for k in [k for k, e in self._entries.items() if e.traced is entry.traced]:
                del self._entries[k]
            self._specialized = {k: t for k, t in self._specialized.items() if t is not entry.traced}
        else:
            del self._entries[key]  # a parameter changed type, a submodule was replaced or switched mode
        return None

    def _capture_signature(self, args: tuple) -> SignatureEntry | None:
        """Capture and plan this signature with torch.fx; if fx cannot, move capture to Dynamo
        (a graph Dynamo captured, which cannot be lowered, runs as it is: eagerly)."""
        try:
            return self._build(args, self._traced_for(args))
        except NotLowered as e:  # captured, but not something the IR lowers: eager is right
            self._eager_reason = str(e)
            self._warn_once("not-lowered", f"{e}; {model_name(self._orig)} runs eagerly.")
            return None
        except CaptureError as e:
            if not isinstance(self._orig, fx.GraphModule):
                self._use_dynamo(e)
            elif self._fallback == "error":
                raise
            else:
                self._eager_reason = str(e)
                self._warn_once("region", f"{e}; this graph runs eagerly.")
            return None

    def _run_eagerly(self, error: CaptureError, call: tuple):
        """What cannot be captured: an error, or (fallback='eager') eager from now on."""
        if self._fallback == "error" and not isinstance(self._orig, fx.GraphModule):
            raise error
        self._eager_reason = str(error)
        self._warn_once("eager", f"{error} Running it eagerly.")
        return self._orig(*call[0], **call[1])

    def _traced_for(self, args: tuple) -> Traced:
        """The fx capture for this call: traced with its Python arguments fixed (as
        torch.compile specialises on them: ``if mask is not None`` takes the branch the
        call takes), once per their values and the default dtype (which the trace bakes
        into factories such as ``torch.ones(3)`` and ``torch.get_default_dtype()``)."""
        if isinstance(self._orig, fx.GraphModule):
            return self._traced  # from Dynamo: captured already
        if self._trace_error is not None:
            raise self._trace_error
        dtype = torch.get_default_dtype()
        if self._binder.signature is None:  # a builtin: traced per number of arguments
            fixed, key = None, ("n_args", len(args), dtype)
        else:
            fixed = {name: a for name, a in zip(self._binder.names, args) if not _holds_tensors(a)}
            if not all(_plain(v) for v in fixed.values()):
                # an object's fields would be baked in with only its identity guarded: Dynamo guards them
                raise CaptureError("fusion: a Python object argument's fields would be fixed into the trace")
            key = (dtype,) + tuple((k, describe_arg(v)) for k, v in fixed.items())
        if key not in self._specialized:
            try:
                self._specialized[key] = trace_with_state(self._orig, concrete_args=fixed or None,
                                                          n_args=len(args))
            except CaptureError as e:
                self._trace_error = e
                raise
        return self._specialized[key]

    def _build(self, args: tuple, traced: Traced) -> SignatureEntry:
        """Functionalize (when the graph may mutate), lower, optimise, partition and prepare
        kernels for this signature."""
        # a function's constants live on its traced GraphModule; a module's state on itself
        root = self._orig if isinstance(self._orig, torch.nn.Module) else traced.gm
        gm, functional, reads = traced.gm, None, list(traced.state)
        if may_mutate(gm):
            # imported here: fake tensors cost ~0.15 s to import and ~2 s on first use,
            # which only graphs with in-place ops (or opaque calls) pay
            from ir.functionalize import functionalize
            functional = functionalize(gm, list(args))
            gm = functional.gm
            reads += module_reads(functional.modules)
        captured = lower(gm, args, root=root)
        # the attributes lowering read from the modules it resolved (negative_slope, approximate...)
        reads += module_reads({q: m for q, (m, _) in captured.modules.items()})
        if functional is not None:
            captured.graph.notes += functional.notes
            captured.modules.update({q: (m, m.training) for q, m in functional.modules.items()})
            functional = functional if functional.writebacks else None
        tensors = tensor_leaves(args) + [fetch_attr(root, p.name) for p in captured.graph.params]
        device = tensors[0].device if tensors else torch.device("cpu")
        plan = build_plan(captured.graph, mode_for(device), numerics=self._numerics)
        guards = PlanGuards(root, captured.modules, [p.name for p in captured.graph.params])
        return SignatureEntry(captured, plan, guards, StateGuards(reads), traced, root, functional)

    def _run(self, entry: SignatureEntry, args: tuple, params: dict):
        functional = entry.functional
        if functional is not None and inputs_alias(args):
            return self._orig(*args)  # written inputs sharing storage: only eager gets that right
        outs = iter(run_plan(entry.plan, tensor_leaves(args), params))
        cap = entry.captured
        result = pytree.tree_unflatten([next(outs) if isinstance(x, Node) else x for x in cap.out_leaves],
                                       cap.out_spec)
        return result if functional is None else write_back(functional, entry.root, args, result)

    # ---- warnings ------------------------------------------------------------------
    def _warn_once(self, what: str, message: str):
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, RuntimeWarning, stacklevel=_user_stacklevel())

    def _warn_limit(self, key):
        if self._warned_limit:
            return
        self._warned_limit = True
        names = self._binder.names
        changing = self._last_change or "the module state (training mode or parameters)"
        if self._last_key is not None:
            for i, (a, b) in enumerate(zip(key[3:], self._last_key[3:])):
                if a != b:
                    changing = f"argument {names[i]!r} ({b} -> {a})" if i < len(names) else changing
                    break
        warnings.warn(f"fusion: recompile limit ({self._limit}) reached; {changing} keeps changing. "
                      "New signatures now run eagerly.", RuntimeWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the caller's line: frames of this
    package and of torch (nn.Module's call, Dynamo) are skipped."""
    ours = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(ours):
        frame, level = frame.f_back, level + 1
    return level


def _holds_tensors(value) -> bool:
    """A tensor, or a container with tensors: graph inputs, never fixed into a trace."""
    return any(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(value))


def _plain(value) -> bool:
    """A Python argument fixing it into a trace guards completely (by value)."""
    if isinstance(value, (bool, int, float, str, type(None), torch.dtype, torch.device)):
        return True
    return isinstance(value, (tuple, list)) and all(_plain(v) for v in value)


def _autocast_on() -> bool:
    return any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda"))


def compile(model, *, fallback: str = "error", recompile_limit: int = DEFAULT_RECOMPILE_LIMIT,
            precision: str = "default") -> CompiledModule:
    """Compile ``model`` (an ``nn.Module`` or a function of tensors).

    Returns a module computing the same results with fused Triton kernels.
    Capture is torch.fx where it can trace the model, Dynamo otherwise (see the
    module docstring). ``fallback="eager"`` lets what cannot be captured
    (data-dependent control flow) run eagerly, with a warning, instead of raising
    ``fusion.CaptureError``. ``precision="exact"`` computes the fp32 results of the
    sigmoid family, tanh and exp in fp64 and rounds them once (within 0.5 ulp; the
    default policy is fp32-only, within 2 ulp forward and 4 backward: docs/NUMERICS.md).
    """
    return CompiledModule(model, fallback=fallback, recompile_limit=recompile_limit, precision=precision)
