"""The public entry points: ``fusion.compile`` and the module it returns."""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from fusion.guards import PlanGuards
from fusion.modes import mode_for
from fusion.plan import Plan, build_plan
from fusion.runtime import run_plan
from ir.capture import CaptureError, trace
from ir.graph import Node
from ir.lower import Captured, fetch_attr, lower

DEFAULT_RECOMPILE_LIMIT = 8


@dataclass(eq=False)
class SignatureEntry:
    """What one call signature compiled to: the captured graph, its plan, and the
    guards on module state the plan was built with (``fusion.guards``)."""
    captured: Captured
    plan: Plan
    guards: PlanGuards


class CompiledModule(torch.nn.Module):
    """Runs a model's forward through fused kernels; otherwise it is the model.

    It shares the original's parameters, buffers and submodules (same tensors,
    same ``state_dict`` keys), so optimizers, hooks and checkpoints treat it
    like the original. Plans are cached per input signature (shapes, strides,
    dtypes, devices, requires_grad, training mode).
    """

    def __init__(self, model, fallback: str = "error", recompile_limit: int = DEFAULT_RECOMPILE_LIMIT):
        super().__init__()
        if fallback not in ("error", "eager"):
            raise ValueError(f"fusion.compile: fallback must be 'error' or 'eager', not {fallback!r}")
        self.__dict__["_orig"] = model  # not a submodule: the state_dict keys stay the original's
        if isinstance(model, torch.nn.Module):
            self._parameters = model._parameters
            self._buffers = model._buffers
            self._modules = model._modules
        fn = model.forward if isinstance(model, torch.nn.Module) else model
        try:
            self._signature = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins: no signature, positional calls only
            self._signature = None
        # calls passing exactly the positional parameters need no binding (the hot path)
        self._n_positional = -1 if self._signature is None or any(
            p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in self._signature.parameters.values()) else len(self._signature.parameters)
        self._entries: dict[tuple, SignatureEntry] = {}
        self._limit = recompile_limit
        self._warned_limit = False
        self._last_key = None
        self._fallback = fallback
        self._eager_reason = None
        self._warned: set[str] = set()   # what _warn_once has said
        self._specialized: dict[tuple, fx.GraphModule] = {}
        try:
            # a GraphModule (e.g. from Dynamo) is already captured: use it as it is.
            # Kept out of _modules (shared with the original): not a submodule of the model.
            self.__dict__["_gm"] = model if isinstance(model, fx.GraphModule) else trace(model)
            self._trace_error = None
        except CaptureError as e:
            # maybe control flow on a Python argument: retried per call with those
            # arguments fixed (see _graph_for); the error stands if that fails too
            self.__dict__["_gm"], self._trace_error = None, e

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
    def plans(self) -> list[Plan]:
        """The plan of every signature compiled so far, oldest first."""
        return [e.plan for e in self._entries.values()]

    def entry_for(self, *args, **kwargs) -> SignatureEntry | None:
        """What the call ``self(*args, **kwargs)`` runs, if it was compiled."""
        return self._entries.get(self.guard_key(*args, **kwargs))

    def plan_for(self, *args, **kwargs) -> Plan | None:
        """The plan the call ``self(*args, **kwargs)`` runs, if it was compiled."""
        entry = self.entry_for(*args, **kwargs)
        return entry.plan if entry is not None else None

    def guard_key(self, *args, **kwargs) -> tuple:
        """What identifies a call signature: training mode, default dtype, and each
        argument's type (tensors: shape, strides, dtype, device, requires_grad)."""
        return self._guard_key(self._bind(args, kwargs))

    # ---- calling -------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self._eager_reason is not None:
            return self._orig(*args, **kwargs)
        if _autocast_on():
            self._warn_once("autocast", "fusion: autocast is not applied by fused kernels yet; "
                            "calls under torch.autocast run eagerly.")
            return self._orig(*args, **kwargs)
        if kwargs and self._signature is None:  # a builtin: no names to bind keywords to
            self._warn_once("kwargs", f"fusion: {self._orig!r} has no Python signature: calls "
                            "with keyword arguments run eagerly (pass them positionally).")
            return self._orig(*args, **kwargs)
        args = self._bind(args, kwargs)
        key = self._guard_key(args)
        entry = self._entries.get(key)
        params = entry.guards.values() if entry is not None else None
        if entry is not None and params is None:
            # a parameter changed type or requires_grad, a submodule was replaced or
            # switched train/eval: rebuild this signature's plan
            del self._entries[key]
            entry = None
        if entry is None:
            if len(self._entries) >= self._limit:
                self._warn_limit(key)
                return self._orig(*args)
            gm = self._graph_for(args)
            if gm is None:
                return self._orig(*args)
            entry = self._entries[key] = self._build(args, gm)
            params = entry.guards.values()
        self._last_key = key
        return self._run(entry, args, params)

    def _graph_for(self, args: tuple):
        """The traced graph; if plain tracing failed, one traced with this call's
        non-tensor arguments fixed (as torch.compile specialises on them)."""
        if self._gm is not None:
            return self._gm
        fixed = {name: a for name, a in zip(self._signature.parameters if self._signature else (), args)
                 if not isinstance(a, torch.Tensor)}
        key = (len(args),) + tuple((k, _describe(v)) for k, v in fixed.items())
        if key not in self._specialized:
            try:
                if not fixed and self._signature is not None:
                    raise self._trace_error
                # builtins have no signature: traced with this call's number of arguments
                self._specialized[key] = trace(self._orig, concrete_args=fixed or None, n_args=len(args))
            except CaptureError as e:
                if self._signature is None:  # a builtin: this call's error is the one to show
                    self._trace_error = e
                if self._fallback == "error":
                    raise self._trace_error from None
                warnings.warn(f"{self._trace_error} Running it eagerly (fallback='eager').",
                              RuntimeWarning, stacklevel=4)
                self._eager_reason = str(self._trace_error)
                return None
        return self._specialized[key]

    def _build(self, args: tuple, gm: fx.GraphModule) -> SignatureEntry:
        """Capture, optimise, partition and prepare kernels for this signature."""
        # a function's constants live on its traced GraphModule; a module's state on itself
        root = self._orig if isinstance(self._orig, torch.nn.Module) else gm
        captured = lower(gm, args, root=root)
        tensors = _tensors(args) + [fetch_attr(root, p.name) for p in captured.graph.params]
        device = tensors[0].device if tensors else torch.device("cpu")
        plan = build_plan(captured.graph, mode_for(device))
        guards = PlanGuards(root, captured.modules, [p.name for p in captured.graph.params])
        return SignatureEntry(captured, plan, guards)

    def _run(self, entry: SignatureEntry, args: tuple, params: dict):
        outs = iter(run_plan(entry.plan, _tensors(args), params))
        cap = entry.captured
        leaves = [next(outs) if isinstance(x, Node) else x for x in cap.out_leaves]
        return pytree.tree_unflatten(leaves, cap.out_spec)

    def _bind(self, args, kwargs) -> tuple:
        if self._signature is None or (not kwargs and len(args) == self._n_positional):
            return args
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"fusion: calling {self._orig!r}: {e}") from None
        bound.apply_defaults()
        return tuple(bound.args) + tuple(bound.kwargs.values())

    def _guard_key(self, args) -> tuple:
        training = self._orig.training if isinstance(self._orig, torch.nn.Module) else True
        # parameters are guarded per signature, on the ones its graph reads (SignatureEntry.guards)
        key = [training, torch.get_default_dtype()]
        for a in args:
            key.append(_describe(a))
        return tuple(key)

    def _warn_once(self, what: str, message: str):
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _warn_limit(self, key):
        if self._warned_limit:
            return
        self._warned_limit = True
        names = list(self._signature.parameters) if self._signature else []
        changing = "the module state (training mode or parameters)"
        if self._last_key is not None:
            for i, (a, b) in enumerate(zip(key[2:], self._last_key[2:])):
                if a != b:
                    changing = f"argument {names[i]!r} ({b} -> {a})" if i < len(names) else changing
                    break
        warnings.warn(f"fusion: recompile limit ({self._limit}) reached; {changing} keeps changing. "
                      "New signatures now run eagerly.", RuntimeWarning, stacklevel=3)


def _describe(a):
    """What a call's argument contributes to the guard key. Containers are walked
    (their tensors are graph inputs); other objects are guarded by identity, held by
    the key so that a new object can never reuse an old one's id."""
    if isinstance(a, torch.Tensor):
        return ("tensor", a.shape, a.stride(), a.dtype, a.device, a.requires_grad)
    if isinstance(a, (bool, int, float, str, type(None), torch.dtype, torch.device)):
        return (type(a).__name__, a)
    if isinstance(a, (list, tuple, dict)):
        leaves, spec = pytree.tree_flatten(a)
        return (str(spec), tuple(_describe(v) for v in leaves))
    return ("object", _Identity(a))


class _Identity:
    """Equal only to the same object; keeps it alive while a plan keyed on it exists."""
    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


def _tensors(args) -> list:
    """The tensor leaves of the arguments, in the order capture made them inputs."""
    return [t for t in pytree.tree_leaves(list(args)) if isinstance(t, torch.Tensor)]


def _autocast_on() -> bool:
    return any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda"))


def compile(model, *, fallback: str = "error",
            recompile_limit: int = DEFAULT_RECOMPILE_LIMIT) -> CompiledModule:
    """Compile ``model`` (an ``nn.Module`` or a function of tensors).

    Returns a module computing the same results with fused Triton kernels.
    ``fallback="eager"`` runs a model that torch.fx cannot trace eagerly
    (with one warning) instead of raising ``fusion.CaptureError``.
    """
    return CompiledModule(model, fallback=fallback, recompile_limit=recompile_limit)
