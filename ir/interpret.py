"""The reference interpreter: run IR nodes with each op's eager torch callable.

The oracle for differential tests, the CPU path without Triton, and how the
runtime runs every node that no generated kernel covers (views, lone
matmuls, sum_to, extern calls).
"""
from __future__ import annotations

from ir.extern import run_extern
from ir.graph import Graph, Node
from ir.ops import OPS, OpKind


def eval_node(n: Node, env: dict):
    """Run one node; ``env`` maps its operand nodes to values."""
    if n.kind == OpKind.EXTERN:
        return run_extern(n, env)
    args = [env[i] if isinstance(i, Node) else i for i in n.inputs]
    return OPS[n.op].eager(*args, **n.attrs)


def interpret(graph: Graph, inputs: list, params: dict | None = None) -> list:
    """Run the whole graph eagerly: ``inputs`` one per graph input, ``params`` by name."""
    env: dict[Node, object] = {}
    it = iter(inputs)
    for n in graph.nodes:
        if n.kind == OpKind.INPUT:
            env[n] = next(it)
        elif n.kind == OpKind.PARAM:
            env[n] = params[n.name]
        else:
            env[n] = eval_node(n, env)
    return [env[o] for o in graph.outputs]
