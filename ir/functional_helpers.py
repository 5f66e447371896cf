"""The functions a functionalized graph calls where no functional twin exists.

Each is a plain Python function (a closure named after the node it replaces), so a
lowering sees one opaque extern call, and none mutates its arguments: whatever they
write is a clone they made. ``view_chain`` builds the small fx graphs that replay a
chain of view nodes on a new base (for ``view_scatter`` and for returning views of
the caller's tensors).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ir.alias_analysis import FunctionalizeError, module_with_state


def view_chain(target: fx.Node, s, nodes: dict, si):
    """A graph ``(base, *externals) -> target``: copies of the view nodes leading from
    storage ``s``'s root to ``target``; externals are the other nodes they read."""
    order, seen = [], set()

    def visit(n):
        if n in seen:
            return
        seen.add(n)
        if _is_root_of(n, si):
            return
        if n is si.root:  # a container root read whole by a view node: not replayable
            raise FunctionalizeError(f"{target.format_node()} views a tuple of fresh tensors; run eagerly")
        if nodes[n].kind == "alias":
            visit(nodes[n].alias_of)
        else:
            for a in n.all_input_nodes:
                if s in nodes[a].storages:
                    visit(a)
        order.append(n)
    visit(target)
    g = fx.Graph()
    base = g.placeholder("base")
    env = {si.root: base} if si.leaf is None else {}  # an alias (a second get_attr) may name it
    externals = []
    for n in [target] if _is_root_of(target, si) else order:
        for a in n.all_input_nodes:
            if a not in env and (a not in seen or _is_root_of(a, si)):
                if _is_root_of(a, si):
                    env[a] = base
                else:
                    externals.append(a)
                    env[a] = g.placeholder(f"ext_{a.name}")
        if nodes[n].kind == "alias":
            env[n] = env[nodes[n].alias_of]
        elif _is_root_of(n, si):
            env[n] = base
        else:
            env[n] = g.node_copy(n, env.__getitem__)
    g.output(env[target])
    return g, externals


def _is_root_of(n: fx.Node, si) -> bool:
    if si.leaf is None:
        return n is si.root
    return (n.op == "call_function" and n.target is operator.getitem and n.args == (si.root, si.leaf))


def clone_then_mutate(n: fx.Node, writes, with_result: bool = True) -> callable:
    """A function running ``n``'s op on clones of what it writes: called as
    ``helper(module, state, args, kwargs)``, returns ``(result, *new values)`` in the
    order of ``writes`` (module state is a tuple of the current buffer values), or
    the one new value alone when ``with_result`` is false and there is one write
    (setitem, zero_, copy_, ...: a lowering then sees a plain tensor-valued call)."""
    op, target = n.op, n.target
    positions = [w.positions for w in writes if w.arg is not None]
    state_names = [w.state for w in writes if w.arg is None]
    order = ["arg" if w.arg is not None else "state" for w in writes]

    def helper(module, state, args, kwargs):
        leaves, spec = pytree.tree_flatten((args, kwargs))
        clones = []
        for where in positions:  # one clone per written tensor, wherever it appears
            clone = leaves[where[0]].clone()
            for i in where:
                leaves[i] = clone
            clones.append(clone)
        args, kwargs = pytree.tree_unflatten(leaves, spec)
        new_state = {name: t.clone() for name, t in zip(state_names, state)}
        if op == "call_module":
            result = module_with_state(module, new_state)(*args, **kwargs)
        elif op == "call_method":
            result = getattr(args[0], target)(*args[1:], **kwargs)
        else:
            result = target(*args, **kwargs)
        arg_values, state_values = iter(clones), iter(new_state.values())
        new = [next(arg_values) if o == "arg" else next(state_values) for o in order]
        return (result, *new) if with_result or len(new) != 1 else new[0]
    helper.__name__ = helper.__qualname__ = f"functional_{short_name(n)}"
    return helper


def view_scatter(chain, label: str) -> callable:
    """``scatter(base, value, *externals)``: a clone of ``base`` with ``value`` copied
    into the view the chain derives (eager's write through a view; strides kept)."""
    sub = fx.GraphModule(torch.nn.Module(), chain)

    def scatter(base, value, *externals):
        new = base.clone()
        sub(new, *externals).copy_(value)
        return new
    scatter.__name__ = scatter.__qualname__ = f"view_scatter_{label}"
    scatter.chain = sub  # for explain: scatter.chain.code
    return scatter


class _Rebase(torch.autograd.Function):
    @staticmethod
    def forward(ctx, old, new):
        return new.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def rebase_autograd(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``new``'s values with ``old``'s autograd identity. Eager's in-place op under
    no_grad changes a tensor's data but not its history (a parameter stays the leaf
    that gets the gradient): later reads must pass gradients to the old value."""
    if not old.requires_grad:
        return new
    with torch.enable_grad():
        return _Rebase.apply(old, new)


def short_name(n: fx.Node) -> str:
    if n.op == "call_module":
        return n.target.replace(".", "_")
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
