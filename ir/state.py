"""The Python state a torch.fx capture baked in, and the guards that re-check it.

``symbolic_trace`` runs forward with proxies for tensors; every other value the
code reads (``self.scale``, a global ``EPS``, a closure's ``k``, which function
``self.act`` is) is baked into the graph as a constant or a call target. Like
Dynamo's guards, ``state_reads`` lists those values and ``StateGuards.hold``
re-checks them at every call; a change means the graph is stale and the caller
recaptures.

What is read is found statically in the code objects capture ran: the forward
of the root and of every module fx traced into (``functools.wraps`` wrappers
followed), the functions they reach through globals (user code only: not
torch's), and the functions and comprehensions nested in them. For each, the
names in ``co_names`` are looked up in its globals, in ``self``'s attributes
and submodules, and one level into plain objects held by ``self`` (a config
object's fields); closure cells are read through ``co_freevars``. A name that
only looks like a read (the same word used for another object's attribute)
costs a needless guard, never a missed one. Values are guarded by value when
they are plain data (numbers, strings, None, dtypes, tuples and lists of them),
by identity otherwise (functions, classes, submodules, other objects).
Tensors are not guarded here: they are read at every call.
"""
from __future__ import annotations

import enum
import inspect
import sysconfig
import types
from dataclasses import dataclass
from pathlib import Path

import torch

_MISSING = object()
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_STDLIB_DIR = sysconfig.get_paths()["stdlib"]
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device,
          torch.memory_format, torch.layout, enum.Enum)
_MAX_DEPTH = 4  # functions reached through globals, from a forward
_OBJECT_DEPTH = 2  # levels of plain objects' fields guarded (self.cfg.sub.eps, CFG.sub.a)


@dataclass(frozen=True, eq=False)
class StateRead:
    """One value capture read: ``where[key]`` (a dict: globals, an object's
    ``__dict__``, a module's ``_modules``) or a closure cell (``key`` None)."""
    where: object
    key: str | None
    value: object
    by_value: bool
    label: str                       # for the recapture message: "self.scale", "global EPS"

    def holds(self) -> bool:
        if self.key is None:
            try:
                now = self.where.cell_contents
            except ValueError:       # an empty cell
                return False
        else:
            now = self.where.get(self.key, _MISSING)
        if not self.by_value:
            return now is self.value
        return type(now) is type(self.value) and (now is self.value or now == self.value)


@dataclass(frozen=True, eq=False)
class ComputedRead:
    """A value computed from live objects at every check, equal to what capture saw."""
    compute: object
    value: object
    label: str

    def holds(self) -> bool:
        return self.compute() == self.value


def module_structure_read(root) -> ComputedRead | None:
    """What fx baked in of ``root``'s module tree without reading an attribute by name:
    that no module has hooks (fx ran none of them into the graph), that no instance has its
    own ``forward``, and the members of each container (``ModuleList.append`` adds a layer
    the unrolled loop never runs)."""
    if not isinstance(root, torch.nn.Module):
        return None
    modules = list(root.modules())
    containers = [m for m in modules if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential,
                                                        torch.nn.ModuleDict))]

    def structure():
        return (any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                    or "forward" in m.__dict__ for m in modules),
                tuple(tuple(c._modules) for c in containers))
    return ComputedRead(structure, structure(), "the module tree (hooks, an instance forward, containers)")


class StateGuards:
    """The reads of one capture; ``hold()`` is True while none has changed."""

    def __init__(self, reads: list[StateRead]):
        self.reads = reads

    def hold(self) -> bool:
        for r in self.reads:
            if not r.holds():
                return False
        return True

    def changed(self) -> str | None:
        """What changed, in words (for warnings), or None."""
        return next((r.label for r in self.reads if not r.holds()), None)


@dataclass(frozen=True)
class CodeSite:
    """A code object capture runs: its globals, the module it is a method of (or None),
    and the function it is the body of (None for a nested code object)."""
    code: types.CodeType
    globals: dict
    owner: object
    fn: object


def user_code(root, modules: list) -> list[CodeSite]:
    """The user's code capturing ``root`` runs: the forward of the root (or the root
    function) and of ``modules`` (``functools.wraps`` wrappers followed), functions the
    modules hold as attributes, the functions they reach through globals and closures,
    and the code nested in them; torch's own code left out."""
    sites: list[CodeSite] = []
    seen: set = set()
    owners = [(root, None)] if not isinstance(root, torch.nn.Module) else []
    owners += [(type(m).forward, m) for m in [root] + list(modules) if isinstance(m, torch.nn.Module)]
    # functions a module holds in an attribute (self.act = my_activation), which forward calls
    owners += [(v, None) for m in [root] + list(modules) if isinstance(m, torch.nn.Module)
               for v in vars(m).values() if isinstance(v, types.FunctionType)]
    for fn, owner in owners:
        _walk_function(fn, owner, sites, seen, 0)
    return sites


def _walk_function(fn, owner, sites: list, seen: set, depth: int) -> None:
    while fn is not None:  # a decorated forward: the wrapper, then what it wraps
        fn = getattr(fn, "__func__", fn)
        code = getattr(fn, "__code__", None)
        if code is None or (code, id(owner)) in seen:
            return
        seen.add((code, id(owner)))
        if not _is_torch(code):  # torch's own decorators (no_grad) are skipped, what they wrap is not
            _walk_code(code, fn.__globals__, owner, fn, sites, seen, depth)
            for value in _closure_functions(fn):  # functions it reaches through closure cells
                if depth < _MAX_DEPTH:
                    _walk_function(value, None, sites, seen, depth + 1)
        fn = getattr(fn, "__wrapped__", None)


def _closure_functions(fn) -> list:
    values = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not yet filled
            continue
        if isinstance(value, types.FunctionType):
            values.append(value)
    return values


def _walk_code(code, globals_: dict, owner, fn, sites: list, seen: set, depth: int) -> None:
    sites.append(CodeSite(code, globals_, owner, fn))
    for name in set(code.co_names) & globals_.keys():
        value = globals_[name]
        if isinstance(value, types.FunctionType) and depth < _MAX_DEPTH:
            _walk_function(value, None, sites, seen, depth + 1)
    for const in code.co_consts:  # nested functions, lambdas and comprehensions
        if isinstance(const, types.CodeType) and not _is_torch(const):
            _walk_code(const, globals_, owner, None, sites, seen, depth)


def state_reads(root, traced_modules: list) -> list[StateRead]:
    """What the code run by capturing ``root`` (a module or function) read, with
    ``traced_modules`` the modules fx traced into (their forwards ran)."""
    reads: dict[tuple, StateRead] = {}
    for site in user_code(root, traced_modules):
        names = set(site.code.co_names)
        if site.fn is not None:
            for cell_name, cell in zip(site.code.co_freevars, site.fn.__closure__ or ()):
                _add_cell(reads, cell, f"closure {cell_name} of {site.fn.__qualname__}")
                value = getattr(cell, "cell_contents", None)
                if isinstance(value, types.ModuleType) and _is_user_module(value):
                    _scan_object(value, names, reads, cell_name, depth=1)
        for name in names & site.globals.keys():
            value = site.globals[name]
            if isinstance(value, types.ModuleType):
                if _is_user_module(value):  # ``config.SCALE`` where ``config`` is the user's module
                    _scan_object(value, names, reads, name, depth=1)
                continue
            _add(reads, site.globals, name, value, f"global {name}")
            if _is_plain_object(value):  # a global config object's fields
                _scan_object(value, names, reads, f"global {name}", depth=_OBJECT_DEPTH)
        if isinstance(site.owner, torch.nn.Module):
            _scan_object(site.owner, names, reads, "self", depth=_OBJECT_DEPTH + 1)
    return list(reads.values())


def module_reads(modules: dict) -> list[StateRead]:
    """Every plain attribute of ``modules`` (qualname -> module): what a rewrite that
    replaced their calls baked in (``inplace``, ``p``, ``negative_slope``...)."""
    reads: dict = {}
    for qualname, module in modules.items():
        for name, value in vars(module).items():
            if not name.startswith("_") and _is_plain(value):
                _add(reads, vars(module), name, value, f"{qualname}.{name}")
    return list(reads.values())


def _scan_object(obj, names: set, reads: dict, label: str, depth: int) -> None:
    """``obj``'s fields named in ``names``, and ``depth - 1`` levels into plain objects."""
    attrs = getattr(obj, "__dict__", {})
    for name in names & attrs.keys():
        value = attrs[name]
        if name.startswith("__") or isinstance(value, torch.Tensor):
            continue
        _add(reads, attrs, name, value, f"{label}.{name}")
        if depth > 1 and _is_plain_object(value):
            _scan_object(value, names, reads, f"{label}.{name}", depth - 1)
    if isinstance(obj, torch.nn.Module):
        for name in names & obj._modules.keys():
            _add(reads, obj._modules, name, obj._modules[name], f"{label}.{name}")


def _add(reads: dict, where, key, value, label) -> None:
    if (id(where), key) in reads:
        return
    plain = _is_plain(value)
    if not plain and isinstance(value, (list, dict, set)):
        return  # a container of objects: nothing a guard could compare cheaply
    reads[(id(where), key)] = StateRead(where, key, _snapshot(value) if plain else value, plain, label)


def _add_cell(reads: dict, cell, label) -> None:
    try:
        value = cell.cell_contents
    except ValueError:
        return
    if not isinstance(value, (torch.Tensor, torch.nn.Module, types.ModuleType)):
        plain = _is_plain(value)
        reads[(id(cell), None)] = StateRead(cell, None, _snapshot(value) if plain else value, plain, label)


def _is_plain(value) -> bool:
    """Data a guard compares by value: scalars, strings, dtypes, and containers of them."""
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (tuple, list, frozenset, set)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(k) and _is_plain(v) for k, v in value.items())
    return False


def _snapshot(value):
    """A copy of mutable plain containers, so a later in-place change is seen."""
    if isinstance(value, list):
        return [_snapshot(v) for v in value]
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, set):
        return set(value)
    return value


def _is_plain_object(value) -> bool:
    """An object whose fields forward may read (a config): not a module, tensor,
    function, class or container."""
    return (hasattr(value, "__dict__") and not isinstance(
        value, (torch.nn.Module, torch.Tensor, type, types.FunctionType, types.MethodType,
                types.ModuleType, types.BuiltinFunctionType)) and not inspect.isroutine(value))


def _is_torch(code) -> bool:
    return code.co_filename.startswith(_TORCH_DIR)


def _is_user_module(module) -> bool:
    """A module of the user's (not torch's, not the standard library's or a builtin)."""
    path = getattr(module, "__file__", None)
    return bool(path) and not path.startswith((_TORCH_DIR, _STDLIB_DIR))
