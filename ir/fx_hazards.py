"""What torch.fx would capture wrongly, found before tracing: then Dynamo captures instead.

``symbolic_trace`` runs forward once with proxies and keeps only the tensor ops it
saw. Some Python it runs once, at trace time, and some it cannot see at all;
either way the graph would compute other numbers than eager, with no error:

* assignments to attributes or globals (``self.step += 1``, ``self.state = ...``)
  and mutating calls on objects that outlive the call (``self.seen.append(...)``):
  done once, while tracing, with proxies written into the user's objects;
* grad-mode and autocast context managers (``torch.no_grad()``, ``torch.autocast``):
  fx records none of their effect;
* ``torch.autograd.Function`` subclasses: fx traces their forward, their backward
  is lost;
* tensor hooks registered in forward (``y.register_hook``): side effects on autograd;
* ``*args``/``**kwargs`` forwards, which fx cannot bind by name;
* module hooks (FSDP2's all-gathers, users' hooks): fx runs forward hooks once, while
  tracing, and backward hooks never.

Found statically in the user's code (``ir.state.user_code``: the forwards of the root
and of every submodule, and what they reach through globals), so nothing is traced
first: the user's objects are never touched by a proxy. A tensor made inside forward from constants
(``torch.zeros(2, 2)``, ``torch.randn(3)``) shows only after tracing, as a tensor
constant of the graph: ``constant_tensors``.
"""
from __future__ import annotations

import dis
import inspect
import types
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn.modules.module as module_globals

from ir.state import user_code

_TORCH_DIR = str(Path(torch.__file__).resolve().parent)

# context managers and calls whose effect fx cannot see
_INVISIBLE = {"no_grad", "enable_grad", "set_grad_enabled", "inference_mode", "autocast",
              "register_hook", "register_post_accumulate_grad_hook",
              # the random generator's state: a trace would make, seed or restore it once
              "Generator", "manual_seed", "seed", "get_rng_state", "set_rng_state", "fork_rng",
              # .data: writes autograd does not see, which a leaf module's call would miss
              "data"}
# methods that change the object they are called on (lists, dicts, sets, deques)
_MUTATORS = {"append", "extend", "insert", "pop", "popleft", "appendleft", "remove", "clear",
             "update", "setdefault", "popitem", "add", "discard", "sort", "reverse"}
_STORES = {"STORE_ATTR", "DELETE_ATTR", "STORE_GLOBAL", "DELETE_GLOBAL"}
_LOADS_OF_SHARED = {"LOAD_ATTR", "LOAD_GLOBAL", "LOAD_DEREF", "LOAD_CLASSDEREF"}


def fx_hazard(root) -> str | None:
    """Why torch.fx would capture ``root`` (a module or function) wrongly, or None."""
    forward = root.forward if isinstance(root, torch.nn.Module) else root
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        params = ()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return "forward takes *args or **kwargs"
    modules = list(root.modules()) if isinstance(root, torch.nn.Module) else []
    hooked = [m for m in modules if m._forward_pre_hooks or m._forward_hooks or m._backward_hooks
              or m._backward_pre_hooks] + [g for g in (module_globals._global_forward_hooks,
                                                        module_globals._global_forward_pre_hooks,
                                                        module_globals._global_backward_hooks,
                                                        module_globals._global_backward_pre_hooks) if g]
    if hooked:  # FSDP's all-gathers, users' hooks: fx would run them once (forward) or bypass them
        return "modules have hooks, which must run at every call"
    if isinstance(root, torch.nn.Module) and "forward" in vars(root):
        return "the module has its own forward attribute (fx traces its class's forward)"
    for fn in [root] if not modules else [type(m).forward for m in modules]:
        while fn is not None:  # @torch.no_grad(), @torch.autocast(...) on a forward: invisible to fx
            if _is_torch_code(getattr(getattr(fn, "__func__", fn), "__code__", None)) and \
                    getattr(fn, "__wrapped__", None) is not None:
                return f"{getattr(fn, '__qualname__', fn)} is wrapped by a torch decorator, whose effect fx drops"
            fn = getattr(fn, "__wrapped__", None)
    for site in user_code(root, modules):
        reason = _code_hazard(site)
        if reason:
            return f"{reason} (in {site.code.co_name}, {site.code.co_filename}:{site.code.co_firstlineno})"
    return None


def _code_hazard(site) -> str | None:
    names = set(site.code.co_names)
    invisible = names & _INVISIBLE
    if invisible:
        return f"it uses {', '.join(sorted(invisible))}, whose effect torch.fx does not record"
    if "apply" in names and any(_is_autograd_function(site.globals.get(n)) for n in names):
        return "it calls a torch.autograd.Function, whose backward torch.fx would drop"
    previous = None
    for ins in dis.get_instructions(site.code):
        if ins.opname in _STORES:
            return f"it assigns {ins.argval!r} (Python side effects run once in a trace)"
        if (ins.opname in ("LOAD_METHOD", "LOAD_ATTR") and ins.argval in _MUTATORS
                and previous is not None and previous.opname in _LOADS_OF_SHARED
                and not isinstance(site.globals.get(previous.argval), types.ModuleType)):  # torch.add
            return f"it calls .{ins.argval}() on {previous.argval!r} (a side effect run once in a trace)"
        previous = ins
    return None


def _is_torch_code(code) -> bool:
    return code is not None and code.co_filename.startswith(_TORCH_DIR)


def _is_autograd_function(value) -> bool:
    return isinstance(value, type) and issubclass(value, torch.autograd.Function)


def constant_tensors(gm: fx.GraphModule, root) -> list[str]:
    """The tensors fx baked into ``gm`` that ``root`` does not own (made inside forward:
    ``torch.zeros(2, 2)`` once, ``torch.randn(3)`` frozen; or a global or closure's)."""
    owned = set()
    if isinstance(root, torch.nn.Module):
        owned = {name for name, _ in root.named_parameters()} | {name for name, _ in root.named_buffers()}
    return [n.target for n in gm.graph.nodes if n.op == "get_attr" and n.target not in owned
            and isinstance(_fetch(gm, n.target), torch.Tensor) and not _fetch_owned(root, n.target)]


def _fetch(obj, qualname: str):
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _fetch_owned(root, qualname: str) -> bool:
    """Whether ``root`` itself holds the tensor at ``qualname`` (a plain tensor attribute)."""
    return isinstance(root, torch.nn.Module) and isinstance(_fetch(root, qualname), torch.Tensor)
