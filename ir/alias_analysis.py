"""Alias analysis for functionalization: run the fx graph once on FakeTensors.

Node by node, every tensor value is keyed by its storage (``StorageWeakRef``; fake
views share their base's fake storage, as real ones do). Each storage has a *root*:
the first value holding it (a placeholder, a get_attr, an op's fresh output, or the
state of a module). A later value in an already-known storage is a *view* (its node
re-derives it from its arguments: no list of view ops is needed, anything fake
reports as aliasing counts, ``reshape``-when-a-view and ``contiguous``-of-contiguous
included) or, for an in-place op returning its argument, an *alias* of that argument.

Which node WRITES which storage is read off the ATen calls, not guessed from names:
a ``TorchDispatchMode`` under the fake mode sees every ATen op with its schema, and
records the storages of the arguments annotated as written (``Tensor(a!)``).
Measured in PyTorch 2.13, the two other candidate signals both miss batch_norm's
running-stat update: ``aten::native_batch_norm`` mutates ``running_mean`` and
``running_var`` without a ``!`` in its schema, and no version counter is bumped (not
even on real tensors), so those few ops are listed by hand (``ir.write_recorder``).
Version counters are still compared, for arguments, as a cross-check (they are
exact for autograd-visible in-place ops; inference tensors have none: skipped).

The fake tensors keep ``requires_grad`` and leaf-ness, so eager's errors (an in-place
op on a leaf that requires grad, on an inference tensor, an int tensor ``+= 1.5``)
are raised here; a failing node is re-run on real zeros of the same types to tell
eager's error (re-raised as is) from a limitation of fake tensors
(``FunctionalizeError``: the caller runs the graph eagerly).
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef

from ir.capture import FunctionalizeError
from ir.inplace_ops import Twin, functional_twin
from ir.write_recorder import WriteRecorder, storage_key


@dataclass
class StorageInfo:
    """One storage seen in the graph and the value that first held it."""
    root: fx.Node | None  # None: a module's parameter or buffer written inside its call
    leaf: int | None      # index into the root's flattened value; None: the value is the tensor
    fake: torch.Tensor    # the root value (its geometry is what "the whole base" means)
    origin: tuple | None  # ("input", i) / ("attr", qualname) for caller-owned tensors
    roots: int = 1        # > 1: inputs alias each other (only an error if written)


@dataclass
class Write:
    """A node writes ``storage`` through argument ``arg`` (or module state ``state``)."""
    storage: StorageWeakRef
    arg: fx.Node | None
    state: str | None = None
    positions: tuple = ()  # where the written tensor sits in pytree leaves of (args, kwargs)
    detached: bool = False  # written through a view outside the root's autograd (detach)
    no_grad: bool = False   # autograd saw none of the node's writes (no_grad or .detach() inside
                            # the call: F.embedding's max_norm renorm)


@dataclass
class NodeInfo:
    kind: str                  # "root" (fresh storages), "view", "alias" (in-place result), "plain"
    fake: object
    storages: tuple = ()       # storages the value lives in
    alias_of: fx.Node | None = None
    writes: list = field(default_factory=list)
    twin: Twin | None = None   # out-of-place twin, when the single write is to args[0]
    cast: torch.dtype | None = None  # the twin promotes: cast back to self's dtype
    grad_enabled: bool = True  # grad mode once the node ran (the graph may toggle it)


@dataclass
class Analysis:
    nodes: dict
    storages: dict
    grad_at_entry: bool

    @property
    def writes_anything(self) -> bool:
        return any(i.writes for i in self.nodes.values())


def analyze(gm: fx.GraphModule, example_inputs) -> Analysis:
    """Run ``gm`` on fake copies of ``example_inputs`` (one per placeholder) and of its
    attributes; return per-node aliasing and writes. Grad mode is restored after."""
    placeholders = sum(n.op == "placeholder" for n in gm.graph.nodes)
    if len(example_inputs) != placeholders:
        raise TypeError(f"functionalize: {len(example_inputs)} example inputs for "
                        f"{placeholders} placeholders")
    a = _Analyzer(gm, FakeTensorMode())
    grad = torch.is_grad_enabled()
    inputs = iter(example_inputs)
    try:
        with _quiet_fake_errors():
            for n in gm.graph.nodes:
                if n.op == "placeholder":
                    a.source(n, next(inputs), ("input", len(a.placeholders)))
                    a.placeholders.append(n)
                elif n.op == "get_attr":  # fx's constants are made afresh by each eager call
                    fresh = n.target.startswith("_tensor_constant")
                    a.source(n, _fetch(gm, n.target), None if fresh else ("attr", n.target))
                elif n.op != "output":
                    a.call(n)
    finally:
        torch.set_grad_enabled(grad)
    return Analysis(a.nodes, a.storages, grad)


def same_geometry(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same elements of the same storage: writing one writes the whole other."""
    return (a.shape == b.shape and a.stride() == b.stride()
            and a.storage_offset() == b.storage_offset() and a.dtype == b.dtype)


class _Analyzer:
    def __init__(self, gm: fx.GraphModule, mode: FakeTensorMode):
        self.gm, self.mode = gm, mode
        self.recorder = WriteRecorder()
        self.nodes: dict[fx.Node, NodeInfo] = {}
        self.storages: dict[StorageWeakRef, StorageInfo] = {}
        self.placeholders: list[fx.Node] = []
        self.modules: dict[str, tuple] = {}
        self.attrs: dict[int, fx.Node] = {}  # id of an attribute tensor -> its first get_attr

    def fake(self, value):
        return pytree.tree_map_only(torch.Tensor, self.mode.from_tensor, value)

    def source(self, n: fx.Node, value, origin: tuple):
        """A placeholder or get_attr: caller-owned tensors, roots of their storages."""
        fake = value if isinstance(value, torch.nn.Module) else self.fake(value)
        if n.op == "get_attr" and isinstance(value, torch.Tensor):
            if id(value) in self.attrs:  # the same tensor again (fx reads self.w per use; tied weights)
                first = self.attrs[id(value)]
                self.nodes[n] = NodeInfo("alias", fake, self.nodes[first].storages, alias_of=first)
                return
            self.attrs[id(value)] = n
        leaves = _tensor_leaves(fake)
        for k, t in enumerate(leaves):
            key = storage_key(t)
            if key in self.storages:  # inputs (or attributes) that are views of one tensor
                self.storages[key].roots += 1
            else:
                leaf = None if isinstance(fake, torch.Tensor) else k
                self.storages[key] = StorageInfo(n, leaf, t, origin)
        self.nodes[n] = NodeInfo("root" if leaves else "plain", fake,
                                 tuple(dict.fromkeys(storage_key(t) for t in leaves)))

    def call(self, n: fx.Node):
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: self.nodes[a].fake)
        mod, state = self._fake_module(n.target) if n.op == "call_module" else (None, {})
        in_leaves = _tensor_leaves((args, kwargs))
        before = [(t, _version(t), (t.shape, t.stride(), t.storage_offset())) for t in in_leaves]
        self.recorder.clear()
        try:
            with self.mode, self.recorder:
                value = _run(n, mod, args, kwargs, state)
        except FunctionalizeError:
            raise
        except Exception as e:  # eager's own error, or something fake tensors cannot run
            raise _explain_failure(n, mod, args, kwargs, state, e) from e
        written = dict.fromkeys(storage_key(t) for t in self.recorder.written)  # ordered
        for t, version, geometry in before:
            if (t.shape, t.stride(), t.storage_offset()) != geometry:
                raise FunctionalizeError(f"{n.format_node()} changes the shape or strides of its "
                                         "argument in place (t_, unsqueeze_, resize_, ...)")
            if version is not None and t._version != version:
                written[storage_key(t)] = None
        info = NodeInfo("plain", value, grad_enabled=torch.is_grad_enabled())
        state_keys = {storage_key(t): name for name, t in state.items()}
        info.writes = self._writes(n, args, kwargs, written, state_keys, state)
        self._classify_output(n, info, args, kwargs)
        if info.writes:
            self._find_twin(n, mod, info, args, kwargs)
        self.nodes[n] = info

    def _fake_module(self, qualname: str):
        """The submodule with fake parameters and buffers (one copy per submodule, so a
        second call sees the first call's writes), and that fake state by name."""
        if qualname not in self.modules:
            mod = self.gm.get_submodule(qualname)
            named = list(mod.named_parameters(remove_duplicate=False)) + \
                list(mod.named_buffers(remove_duplicate=False))
            state = {name: self.mode.from_tensor(t) for name, t in named}
            self.modules[qualname] = (module_with_state(mod, state), state)
        return self.modules[qualname]

    def _writes(self, n, args, kwargs, written, state_keys, state) -> list[Write]:
        flat = pytree.tree_leaves((args, kwargs))
        writes = []
        for key in written:
            if key not in self.storages and key not in state_keys:
                continue  # a temporary made inside the node
            candidates = list(dict.fromkeys(
                a for a in n.all_input_nodes
                if isinstance(self.nodes[a].fake, torch.Tensor) and storage_key(self.nodes[a].fake) == key))
            if not candidates and key in state_keys:
                name = state_keys[key]
                if key not in self.storages:
                    self.storages[key] = StorageInfo(None, None, state[name], ("attr", f"{n.target}.{name}"))
                writes.append(Write(key, None, name, no_grad=state[name].requires_grad
                                    and key not in self.recorder.recorded))
                continue
            arg = self._written_arg(n, candidates)
            fake = self.nodes[arg].fake
            positions = tuple(i for i, t in enumerate(flat) if t is fake)
            if not positions:
                raise FunctionalizeError(f"{n.format_node()} writes {arg} inside an argument "
                                         "structure pytree does not flatten")
            root = self.storages[key].fake
            detached = root.requires_grad and not fake.requires_grad
            no_grad = root.requires_grad and key not in self.recorder.recorded
            writes.append(Write(key, arg, None, positions, detached, no_grad))
        return writes

    def _written_arg(self, n: fx.Node, candidates: list) -> fx.Node:
        if len(candidates) == 1:
            return candidates[0]
        out = n.kwargs.get("out")
        for preferred in (out, n.args[0] if n.args else None):
            if isinstance(preferred, fx.Node) and preferred in candidates:
                return preferred
        what = "no tensor argument" if not candidates else f"several arguments {candidates}"
        raise FunctionalizeError(f"{n.format_node()} writes a storage held by {what}")

    def _classify_output(self, n, info: NodeInfo, args, kwargs):
        value = info.fake
        leaves = _tensor_leaves(value)
        if info.writes and isinstance(value, torch.Tensor):
            same = [a for a in n.all_input_nodes if self.nodes[a].fake is value]
            if same:  # in-place ops return their argument
                info.kind, info.alias_of, info.storages = "alias", same[0], (storage_key(value),)
                return
        keys = [storage_key(t) for t in leaves]
        known = [k for k in keys if k in self.storages]
        if known and info.writes:
            raise FunctionalizeError(f"{n.format_node()} writes in place and returns a view")
        info.kind = "view" if known else ("root" if leaves else "plain")
        for k, (key, t) in enumerate(zip(keys, leaves)):
            if key not in self.storages:
                leaf = None if isinstance(value, torch.Tensor) else k
                self.storages[key] = StorageInfo(n, leaf, t, None)
        info.storages = tuple(dict.fromkeys(keys))

    def _find_twin(self, n, mod, info: NodeInfo, args, kwargs):
        """Use the out-of-place twin when it yields self's shape (and, when it replaces a
        whole base, its strides: views are replayed on it); cast back when it promotes."""
        write = info.writes[0] if len(info.writes) == 1 else None
        if write is None or not n.args or write.arg is not n.args[0]:
            return
        twin = functional_twin(n, mod)
        if twin is None:
            return
        self_fake = self.nodes[n.args[0]].fake
        try:
            with self.mode:
                out = _run_twin(twin, lambda a: self.nodes[a].fake)
        except Exception:  # the twin does not accept these arguments: use the generic path
            return
        whole = same_geometry(self_fake, self.storages[write.storage].fake) and not write.detached
        if isinstance(out, torch.Tensor) and out.shape == self_fake.shape and \
                (out.stride() == self_fake.stride() or not whole):
            info.twin = twin
            info.cast = self_fake.dtype if out.dtype != self_fake.dtype else None


def _run(n: fx.Node, mod, args, kwargs, state: dict):
    if n.op == "call_module":  # mod already holds ``state``
        return mod(*args, **kwargs)
    if n.op == "call_method":
        return getattr(args[0], n.target)(*args[1:], **kwargs)
    return n.target(*args, **kwargs)


def _run_twin(twin: Twin, value_of):
    args, kwargs = fx.node.map_arg((twin.args, twin.kwargs), value_of)
    if twin.op == "call_method":
        return getattr(args[0], twin.target)(*args[1:], **kwargs)
    return twin.target(*args, **kwargs)


def _explain_failure(n, mod, args, kwargs, state, error) -> Exception:
    """Eager's error if the node fails on real zeros of the same types, else ours."""
    args, kwargs, state = pytree.tree_map_only(FakeTensor, _real_zeros, (args, kwargs, state))
    try:
        _run(n, module_with_state(mod, state) if mod is not None else None, args, kwargs, state)
    except Exception as eager_error:
        return eager_error
    return FunctionalizeError(f"fusion: cannot analyse {n.format_node()} on fake tensors: "
                              f"{type(error).__name__}: {error}")


def _real_zeros(fake: FakeTensor) -> torch.Tensor:
    t = torch.zeros(fake.shape, dtype=fake.dtype, device=fake.device)
    if fake.requires_grad:
        t.requires_grad_(True)
        if not fake.is_leaf:  # keep non-leaf-ness: eager allows in-place on non-leaves
            t = t.clone()
    return t


def module_with_state(mod: torch.nn.Module, state: dict) -> torch.nn.Module:
    """A shallow copy of ``mod`` whose parameters and buffers named in ``state``
    (dotted names) are the given tensors; ``mod`` is untouched, so the copy's in-place
    updates land in ``state``'s tensors. ~20 us where torch.func.functional_call,
    which swaps the attributes of ``mod`` itself and restores them, takes ~2 ms."""
    new = copy.copy(mod)
    new._parameters, new._buffers, new._modules = dict(mod._parameters), dict(mod._buffers), \
        dict(mod._modules)
    children: dict = {}
    for name, t in state.items():
        head, _, rest = name.partition(".")
        if rest:
            children.setdefault(head, {})[rest] = t
        elif head in new._parameters:
            new._parameters[head] = t
        else:
            new._buffers[head] = t
    for child, sub in children.items():
        new._modules[child] = module_with_state(mod._modules[child], sub)
    return new


def _version(t: torch.Tensor):
    return None if t.is_inference() else t._version  # inference tensors have no counter


def _tensor_leaves(value) -> list:
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def _fetch(root, qualname: str):
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@contextmanager
def _quiet_fake_errors():
    # fake tensors log every failing meta kernel at ERROR level before raising; the
    # error itself is handled (re-raised as eager's, or as FunctionalizeError)
    log = logging.getLogger("torch._subclasses.fake_tensor")
    disabled, log.disabled = log.disabled, True  # setLevel would clear every logger's cache
    try:
        yield
    finally:
        log.disabled = disabled
