"""Functionalization: an fx graph with in-place ops -> an equivalent graph without.

``x.add_(1)``, ``h[:, 0] = 0``, ``F.relu(h, inplace=True)``, ``g += 1`` through an
alias ``g = h``, BatchNorm's running-stat updates: fx and Dynamo graphs record them as
calls whose *result* later nodes may not even use, so a lowering that treats nodes
as pure values computes the wrong numbers. This pass rewrites them away:

1. Alias analysis (ir/alias_analysis.py): one run on FakeTensors gives, for every
   value, its storage and how it derives from that storage's root, and for every
   node, the storages it writes (from ATen schemas, exact for opaque ops too).
2. Rewrite, in program order, keeping per written storage its current functional
   base value (the role of FunctionalTensorWrapper's storage in PyTorch's own
   functionalization; here the graph is rewritten once instead of re-traced):
   - a write with a known out-of-place twin becomes the twin (``add_`` -> ``add``,
     cast back when it promotes; ir/inplace_ops.py): fusable;
   - any other write runs in an opaque clone-then-mutate helper (the op on clones
     of what it writes; ir/functional_helpers.py); helpers are plain functions, so
     a lowering sees one extern call each;
   - a write through a view (of either kind) then lands in a ``view_scatter`` helper:
     clone the base, replay the view chain on it, ``copy_`` the new view value;
   - every later read of any alias of a written storage is re-derived from the
     current base by replaying its view nodes (so ``g = h; g += 1; h * 2`` is right);
   - written inputs and attributes (parameters, buffers) become extra outputs with
     write-back entries, copied into the caller's tensors by the runtime.
   Autograd follows eager: a write under the graph's own no_grad keeps the tensor's
   autograd identity (``rebase_autograd``: a parameter updated under no_grad still
   gets its gradient), and a twin reading a caller's tensor that requires grad reads
   a clone (the write-back would otherwise overwrite what backward saved).
   Why not ``torch.func.functionalize`` / AOTAutograd: they re-trace to ATen (our
   lowering reads torch-level ops; ``F.relu`` must stay ``F.relu`` to be fused) and
   cost far more than one fake run. Why replay view *nodes* rather than a list of
   view ops: whatever fake tensors report as aliasing is replayed exactly as traced.

The result depends on what the analysis saw: shapes, strides, dtypes and
requires_grad of the inputs, grad mode, and the training flags and ``inplace``
attributes of ``Functionalized.modules``: a runtime keys its plans on them. Inputs
that alias each other at run time (two views of one tensor) cannot be seen from the
example inputs: a runtime running a graph with write-backs must call
``inputs_alias(args)`` and run eagerly when it is true. Not handled (FunctionalizeError,
run eagerly): in-place metadata changes (``t_``, ``resize_``), writes to an input
that aliases another input, to a tensor nested in a list input, through a view
returned by the writing op itself. Eager errors (in-place on a leaf requiring grad,
``int_tensor += 1.5``) are raised as eager raises them; an overwritten saved tensor
that would make eager's backward fail does not fail here (more permissive, never less).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ir.alias_analysis import Analysis, FunctionalizeError, analyze, same_geometry
from ir.capture import CaptureError
from ir.functional_helpers import clone_then_mutate, rebase_autograd, short_name, view_chain, view_scatter
from ir.functional_write_back import Functionalized, inputs_alias, write_back
from ir.inplace_ops import may_mutate
from ir.write_recorder import storage_key

__all__ = ["FunctionalizeError", "Functionalized", "functionalize", "inputs_alias", "may_mutate",
           "run_functionalized", "write_back"]


def functionalize(gm: fx.GraphModule, example_inputs: list) -> Functionalized:
    """Rewrite ``gm`` so that no node mutates a tensor, preserving eager semantics.

    ``example_inputs``: one per placeholder, tensors (any shape, dtype, device,
    requires_grad) or Python values; attributes are read from ``gm``. Runs ``gm``
    once on fake tensors (no real computation). Raises eager's own error when eager
    would fail (an in-place op on a leaf requiring grad, ``int_tensor += 1.5``), and
    ``FunctionalizeError`` for patterns not handled (metadata mutation such as
    ``t_()``, a written input aliasing another input, an op that writes through a
    view it returns): run those eagerly. Returns ``gm`` itself when nothing is written.
    """
    info = analyze(gm, example_inputs)
    aliases = _output_aliases(gm, info)
    if not info.writes_anything:
        return Functionalized(gm, output_aliases=aliases)
    return _Rewriter(gm, info).run(aliases)


def run_functionalized(f: Functionalized, root, args):
    """Reference runtime: run ``f.gm(*args)``, copy write-backs into the caller's
    tensors (inputs in ``args``, attributes on ``root``), return eager's output
    structure with aliased outputs replaced by the caller's tensors (or their views)."""
    return write_back(f, root, args, f.gm(*args))


class _Rewriter:
    """Builds the functional graph; ``current(n)`` is what reading ``n`` means now."""

    def __init__(self, gm: fx.GraphModule, info: Analysis):
        self.gm, self.info, self.nodes = gm, info, info.nodes
        self.graph = fx.Graph()
        self.env: dict[fx.Node, tuple] = {}      # node -> (emitted value, versions it saw)
        self.emitted: dict[fx.Node, object] = {}  # node -> its value as first emitted
        self.base: dict = {}                     # storage -> current value of its root
        self.version: dict = {}                  # storage -> writes so far
        self.last_grad: dict = {}
        self.notes: list[str] = []
        self.modules: dict = {}

    def run(self, aliases) -> Functionalized:
        output = None
        for n in self.gm.graph.nodes:
            if n.op == "output":
                output = n
            elif n.op in ("placeholder", "get_attr") or not self.nodes[n].writes:
                if n.op == "call_module":
                    self._check_state_is_current(n)
                self._emit(n, self.graph.node_copy(n, self.current))
            else:
                self._rewrite_write(n, self.nodes[n])
        return self._finish(output, aliases)

    def _check_state_is_current(self, n: fx.Node):
        """A submodule call reads its own parameters and buffers, not the graph's values: one
        written earlier in forward (``w.data.mul_()``, ``w.detach()[0] = ...``) would be read
        stale. Dynamo passes them as graph inputs instead: capture moves there."""
        written = [si.origin[1] for s, si in self.info.storages.items()
                   if s in self.version and si.origin and si.origin[0] == "attr"]
        stale = [q for q in written if q.startswith(f"{n.target}.")]
        if stale:
            raise CaptureError(f"fusion: {n.format_node()} reads {', '.join(stale)}, written earlier "
                               "in forward: torch.fx would call it with the old values")

    # ---- reading values -------------------------------------------------------------
    def current(self, n: fx.Node):
        info = self.nodes[n]
        if info.kind == "alias":
            return self.current(info.alias_of)
        value, seen = self.env[n]
        now = self._versions(info.storages)
        if seen == now:
            return value
        if info.kind == "view":  # re-derive from the current values of what it views
            value = self.graph.node_copy(n, self.current)
            self.notes.append(f"%{n.name}: re-derived after a write to what it views")
        else:
            value = self._root_value(n)
        self.env[n] = (value, now)
        return value

    def _versions(self, storages) -> tuple:
        return tuple(self.version.get(s, 0) for s in storages)

    def _emit(self, n: fx.Node, value):
        self.emitted[n] = value
        self.env[n] = (value, self._versions(self.nodes[n].storages))

    def _root_value(self, n: fx.Node):
        """A root node's value with its written leaves replaced by their new values."""
        info = self.nodes[n]
        if isinstance(info.fake, torch.Tensor):
            return self.base.get(info.storages[0], self.emitted[n])
        leaves, spec = pytree.tree_flatten(info.fake)
        values = [self.base_value(storage_key(t)) if isinstance(t, torch.Tensor)
                  else t for t in leaves]
        return pytree.tree_unflatten(values, spec)

    def base_value(self, s):
        """The current value of storage ``s``'s root tensor."""
        if s in self.base:
            return self.base[s]
        si = self.info.storages[s]
        if si.root is None:  # a module buffer first touched inside the module's call
            value = self.graph.get_attr(si.origin[1])
        elif si.leaf is None:
            value = self.emitted[si.root]
        else:
            value = self.graph.call_function(operator.getitem, (self.emitted[si.root], si.leaf))
        self.base[s] = value
        return value

    # ---- writes -----------------------------------------------------------------------
    def _rewrite_write(self, n: fx.Node, info):
        if info.twin is not None:
            args, kwargs = fx.node.map_arg((info.twin.args, info.twin.kwargs), self.current)
            if info.grad_enabled and self._still_callers(info.writes[0].storage):
                # the twin would save the caller's tensor for backward, which the write-back
                # then overwrites; eager's in-place op saves a copy of what it needs
                args = (self.graph.call_method("clone", (args[0],)), *args[1:])
            new = self.graph.create_node(info.twin.op, info.twin.target, args, kwargs, name=n.name)
            if info.cast is not None:
                new = self.graph.call_method("to", (new, info.cast))
            if n.op == "call_module":
                self.modules[n.target] = self.gm.get_submodule(n.target)
            self.notes.append(f"%{n.name}: {_describe(n)} -> {info.twin.describe()}"
                              + (f" then .to({info.cast})" if info.cast else ""))
            self._emit(n, new)
            self._commit(n, info.writes[0], new)
            return
        # the result of setitem (None) or of an in-place method (its argument) is not needed
        with_result = not (info.kind == "alias" or info.fake is None) or len(info.writes) > 1
        helper = clone_then_mutate(n, info.writes, with_result)
        module = self.graph.get_attr(n.target) if n.op == "call_module" else None
        if module is not None:
            self.modules[n.target] = self.gm.get_submodule(n.target)
        state = tuple(self.base_value(w.storage) for w in info.writes if w.arg is None)
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), self.current)
        call = self.graph.call_function(helper, (module, state, args, kwargs))
        self.notes.append(f"%{n.name}: {_describe(n)} -> clone-then-mutate ({helper.__name__})")
        if not with_result:
            self._emit(n, None)
            self._commit(n, info.writes[0], call)
            return
        self._emit(n, self.graph.call_function(operator.getitem, (call, 0)))
        for k, w in enumerate(info.writes, start=1):
            self._commit(n, w, self.graph.call_function(operator.getitem, (call, k)))

    def _still_callers(self, s) -> bool:
        si = self.info.storages[s]
        return si.origin is not None and s not in self.version and si.fake.requires_grad

    def _commit(self, n: fx.Node, w, new_value):
        """``new_value`` is the new value of the written argument: update its base."""
        s = w.storage
        si = self.info.storages[s]
        if si.roots > 1:
            raise FunctionalizeError(f"{n.format_node()} writes a tensor that aliases another "
                                     "input or attribute; run eagerly")
        if si.root is not None and self.nodes[si.root].kind == "view":
            raise FunctionalizeError(f"{n.format_node()} writes into a value returned together "
                                     "with a view; run eagerly")
        old = self.base_value(s)
        if w.arg is None or (same_geometry(self.nodes[w.arg].fake, si.fake) and not w.detached):
            self.base[s] = new_value
        else:
            if may_overlap(self.nodes[w.arg].fake):
                # unfold/as_strided views: elements written twice; a scatter would write once
                raise FunctionalizeError(f"{n.format_node()} writes through a view whose elements "
                                         "overlap; run eagerly")
            chain, externals = self._chain(w.arg, s)
            scatter = view_scatter(chain, w.arg.name)
            self.base[s] = self.graph.call_function(
                scatter, (old, new_value, *[self.current(e) for e in externals]))
            self.notes.append(f"%{n.name}: write through view %{w.arg.name} -> {scatter.__name__}")
        # a write under no_grad or through .data/.detach() changes values, not autograd history
        grad = self.nodes[n].grad_enabled and not w.detached and not w.no_grad
        if not grad and self.info.grad_at_entry:
            self.base[s] = self.graph.call_function(rebase_autograd, (old, self.base[s]))
            self.notes.append(f"%{n.name}: written under no_grad or through a detached view "
                              "-> rebase_autograd")
        self.version[s] = self.version.get(s, 0) + 1
        self.last_grad[s] = None if grad == self.info.grad_at_entry else grad

    def _chain(self, target: fx.Node, s):
        """The view nodes deriving ``target`` from storage ``s``'s root, as a graph
        (base, *externals) -> view, and the outside nodes it reads."""
        return view_chain(target, s, self.nodes, self.info.storages[s])

    # ---- outputs ----------------------------------------------------------------------
    def _finish(self, output: fx.Node, aliases) -> Functionalized:
        result = fx.node.map_arg(output.args[0], self.current)
        writebacks, extras, grads = [], [], []
        for s, si in self.info.storages.items():
            if s in self.version and si.origin is not None:
                if si.leaf is not None:
                    raise FunctionalizeError("writes a tensor nested in a container input; run eagerly")
                writebacks.append(si.origin)
                extras.append(self.base[s])
                grads.append(self.last_grad[s])
                self.notes.append(f"write-back: {si.origin[0]} {si.origin[1]}")
        is_tuple = isinstance(result, tuple)
        if not extras:
            self.graph.output(result)
        else:
            self.graph.output((*result, *extras) if is_tuple else (result, *extras))
        _drop_dead(self.graph)
        gm = fx.GraphModule(self.gm, self.graph)
        gm.meta.update(self.gm.meta)  # Dynamo's notes on the graph (original FQNs, ...)
        return Functionalized(gm, writebacks, aliases, self.notes, grads, self.modules, is_tuple)


def _output_aliases(gm: fx.GraphModule, info: Analysis) -> list:
    """Per leaf of the output, as the runtime flattens it: which caller tensor it is."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    aliases = []
    for leaf in pytree.tree_leaves(output.args[0]):
        if not isinstance(leaf, fx.Node):
            aliases.append(None)
            continue
        fake = info.nodes[leaf].fake
        if not isinstance(fake, torch.Tensor):  # a container node: its elements, unnamed
            aliases.extend(_alias(t, None, info) for t in pytree.tree_leaves(fake))
        else:
            aliases.append(_alias(fake, leaf, info))
    return aliases


def _alias(fake, node: fx.Node | None, info: Analysis):
    si = info.storages.get(storage_key(fake)) if isinstance(fake, torch.Tensor) else None
    if si is None or si.origin is None or si.leaf is not None or si.roots > 1:
        return None
    if same_geometry(fake, si.fake):
        return (*si.origin, None)
    view = _replay(node, fake, info, si)
    return None if view is None else (*si.origin, view)


def _replay(node: fx.Node | None, fake, info: Analysis, si):
    """The view of the caller's tensor that eager returns: the chain with its
    externals fixed to their (shape-like) values, or as_strided when one is a tensor."""
    size, stride, offset = tuple(fake.shape), fake.stride(), fake.storage_offset()
    strided = None if fake.dtype != si.fake.dtype else (lambda t: t.as_strided(size, stride, offset))
    if node is None:
        return strided
    chain, externals = view_chain(node, storage_key(fake), info.nodes, si)
    values = [info.nodes[e].fake for e in externals]
    if any(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(values)):
        return strided
    sub = fx.GraphModule(torch.nn.Module(), chain)
    return lambda t: sub(t, *values)


def _drop_dead(graph: fx.Graph):
    # only the nodes this pass made are dropped: the user's dead nodes may be impure
    # (a random op feeding nothing still advances the generator, as in eager)
    for n in reversed(list(graph.nodes)):
        if not n.users and (n.op == "get_attr" or n.op == "call_function" and (
                n.target is operator.getitem or getattr(n.target, "__name__", "").startswith(
                    ("functional_", "view_scatter_", "rebase_autograd")))):
            graph.erase_node(n)


def _describe(n: fx.Node) -> str:
    if n.op == "call_module":
        return f"{n.target} (module)"
    kw = "".join(f", {k}={v}" for k, v in n.kwargs.items() if not isinstance(v, fx.Node))
    return f"{short_name(n)}(...{kw})"


def may_overlap(t: torch.Tensor) -> bool:
    """False when ``t``'s elements are provably distinct memory: its dims, sorted by stride,
    each step past all the elements of the smaller ones (unfold, expand: they do not)."""
    if t.numel() == 0:
        return False
    span = 0
    for stride, size in sorted((abs(st), sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False
