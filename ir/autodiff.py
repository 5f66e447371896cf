"""Reverse mode: the backward graph of a subgraph, from the op table's rules.

The backward graph takes the subgraph's inputs (saved) and one gradient per
differentiable output, recomputes the forward values it needs, and returns
one gradient per input that needs one. Through pointwise ops a gradient is
kept at the broadcast shape and reduced (``sum_to``) only where it reaches an
input: the reduction commutes with elementwise products, and doing it last
keeps the whole backward one fused kernel.
"""
from __future__ import annotations

from ir.graph import Graph, Node
from ir.ops import OPS


def differentiable(n: Node) -> bool:
    """A value gradients can flow through: a floating-point tensor."""
    return n.dtype is not None and n.dtype.is_floating_point


def backward_graph(nodes: list[Node], inputs: list[Node], outputs: list[Node],
                   needs_grad: tuple, saved: tuple = ()) -> Graph:
    """Build the backward of ``nodes`` (topological) reading ``inputs``.

    Graph inputs: the forward ``inputs`` (same names and types), then
    ``saved_k`` for each node of ``saved`` (forward values kept rather than
    recomputed, e.g. a matmul result), then ``grad_k`` for each
    differentiable output k. Graph outputs: the gradient
    of each input with ``needs_grad`` set, in order (an input with no path to an
    output gets a zero gradient here; ``fusion.autograd`` asks only for inputs
    with a path and returns None for the others, as eager does).
    """
    b = Graph()
    env: dict[Node, Node] = {}
    for i, x in enumerate(inputs):
        env[x] = b.add_node("input", (), {}, x.shape, x.dtype, x.device, name=x.name or f"in{i}")
    for k, x in enumerate(saved):
        env[x] = b.add_node("input", (), {}, x.shape, x.dtype, x.device, name=f"saved_{k}")
    grads_in = {}
    for k, o in enumerate(outputs):
        if differentiable(o):
            grads_in[o] = b.add_node("input", (), {}, o.shape, o.dtype, o.device, name=f"grad_{k}")
    for n in nodes:  # recompute the forward; dead code elimination drops the unused
        if n in saved:
            continue
        env[n] = b.call(n.op, *[env[i] if isinstance(i, Node) else i for i in n.inputs], **n.attrs)

    grad: dict[Node, Node] = dict(grads_in)
    for n in reversed(nodes):
        g = grad.get(n)
        if g is None or not OPS[n.op].differentiable:
            continue
        if OPS[n.op].kind != "pointwise":
            g = fit(b, g, n.shape)
        xs = [env[i] if isinstance(i, Node) else i for i in n.inputs]
        contribs = OPS[n.op].vjp(b, env[n], g, *xs, **n.attrs)
        for x, c in zip(n.inputs, contribs):
            if c is None or not isinstance(x, Node) or not differentiable(x):
                continue
            if c.dtype != x.dtype:  # as autograd: each gradient in its input's dtype
                c = b.call("cast", c, dtype=x.dtype)
            grad[x] = c if x not in grad else b.call("add", grad[x], c)

    outs = []
    for x, need in zip(inputs, needs_grad):
        if not need:
            continue
        g = grad.get(x)
        if g is None:
            g = b.call("mul", env[x], 0.0)  # no path from x to an output: zero gradient
        g = fit(b, g, x.shape)
        if g.dtype != x.dtype:
            g = b.call("cast", g, dtype=x.dtype)
        outs.append(g)
    b.outputs = outs
    return b


def fit(b: Graph, g: Node, shape: tuple) -> Node:
    """A gradient kept at a broadcast shape, brought to ``shape`` by broadcasting
    rules: expanded to the common shape of the two (a full reduction passes a 0-d
    gradient down), then summed over the dimensions ``shape`` broadcast along."""
    from ir.types import broadcast_shape
    shape = tuple(shape)
    if g.shape == shape:
        return g
    common = broadcast_shape("gradient", [g, _Shape(shape)])
    if g.shape != common:
        g = b.call("expand", g, shape=common)
    return g if common == shape else b.call("sum_to", g, shape=shape)


class _Shape:
    def __init__(self, shape):
        self.shape = shape


def eliminate_dead_code(graph: Graph) -> Graph:
    """Drop nodes no output depends on (inputs stay: they are the signature)."""
    live = set(graph.outputs)
    for n in reversed(graph.nodes):
        if n in live or n.op == "input":
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
        if n.op == "extern":  # its argument template refers to nodes too
            import torch.utils._pytree as pytree
            attrs = dict(attrs, **dict(zip(("args", "kwargs"), pytree.tree_map(
                lambda v: env.get(v, v) if isinstance(v, Node) else v,
                (attrs["args"], attrs["kwargs"]), is_leaf=lambda v: isinstance(v, Node)))))
        env[n] = out.add_node(n.op, ins, attrs, n.shape, n.dtype, n.device, n.name)
    out.outputs = [env[o] for o in graph.outputs]
    out.notes = list(graph.notes)
    return out
