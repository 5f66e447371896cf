"""Graph rewriting utilities shared by passes: renumbering and dead-code elimination."""
from __future__ import annotations

import torch.utils._pytree as pytree

from ir.graph import Graph, Node
from ir.opdef import OpKind


def eliminate_dead_code(graph: Graph) -> Graph:
    """Drop nodes no output depends on (inputs stay: they are the signature)."""
    live = set(graph.outputs)
    for n in reversed(graph.nodes):
        if n in live or n.kind == OpKind.INPUT:
            live.add(n)
            live.update(n.operands())
    return renumber(graph, [n for n in graph.nodes if n in live])


def renumber(graph: Graph, keep: list[Node]) -> Graph:
    """A new graph of ``keep`` (topological), ids 0..n-1, outputs remapped."""
    out = Graph()
    env: dict[Node, Node] = {}
    for n in keep:
        ins = tuple(env[i] if isinstance(i, Node) else i for i in n.inputs)
        attrs = n.attrs
        if n.kind == OpKind.EXTERN:  # its argument template refers to nodes too
            attrs = dict(attrs, **dict(zip(("args", "kwargs"), pytree.tree_map(
                lambda v: env.get(v, v) if isinstance(v, Node) else v,
                (attrs["args"], attrs["kwargs"]), is_leaf=lambda v: isinstance(v, Node)))))
        env[n] = out.add_node(n.op, ins, attrs, n.shape, n.dtype, n.device, n.name)
    out.outputs = [env[o] for o in graph.outputs]
    out.notes = list(graph.notes)
    return out
