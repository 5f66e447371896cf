"""Reverse mode: the backward graph of a subgraph, from the op table's rules.

The backward graph takes the subgraph's inputs (saved), any forward values
kept instead of recomputed, and one gradient per differentiable output; it
recomputes the forward values it needs and returns one gradient per input
that needs one. Through pointwise ops a gradient is kept at the broadcast
shape and reduced (``sum_to``) only where it reaches an input: the reduction
commutes with elementwise products, and doing it last keeps the whole
backward one fused kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

from ir.graph import Graph, Node
from ir.ops import OPS, OpKind
from ir.types import broadcast_shapes


def differentiable(n: Node) -> bool:
    """A value gradients can flow through: a floating-point tensor."""
    return n.dtype is not None and n.dtype.is_floating_point


@dataclass(frozen=True)
class BackwardGraph:
    """A backward graph and the order of its inputs: the one contract between this
    module and whoever runs it (``BackwardGraph.arrange`` builds the argument list).

    Graph inputs, in order: one per forward input (same names and types), then
    ``saved_k`` for each kept forward value, then ``grad_k`` for each
    differentiable forward output k (``grad_of`` lists those k). Graph outputs:
    the gradient of each input that ``needs_grad`` marks, in order.
    """
    graph: Graph
    n_inputs: int
    saved: tuple               # the forward values read instead of recomputed (forward Nodes)
    grad_of: tuple[int, ...]

    def arrange(self, inputs: list, saved: list, grads: list) -> list:
        """The graph's inputs from the forward ``inputs`` (None where not saved),
        one value per ``saved`` node and the gradients of all forward outputs."""
        assert len(inputs) == self.n_inputs and len(saved) == len(self.saved)
        return list(inputs) + list(saved) + [grads[k] for k in self.grad_of]


def backward_graph(nodes: list[Node], inputs: list[Node], outputs: list[Node],
                   needs_grad: tuple, saved: tuple = ()) -> BackwardGraph:
    """Build the backward of ``nodes`` (topological) reading ``inputs``; ``saved``
    names forward values the backward reads instead of recomputing them (a matmul
    result). An input with no path to an output gets a zero gradient here (callers
    ask only for inputs with a path, and return None for the others, as eager)."""
    bwd = Graph()
    env: dict[Node, Node] = {}
    for i, x in enumerate(inputs):
        env[x] = bwd.add_node("input", (), {}, x.shape, x.dtype, x.device, name=x.name or f"in{i}")
    for k, x in enumerate(saved):
        env[x] = bwd.add_node("input", (), {}, x.shape, x.dtype, x.device, name=f"saved_{k}")
    grads_in = {}
    for k, o in enumerate(outputs):
        if differentiable(o):
            grads_in[o] = bwd.add_node("input", (), {}, o.shape, o.dtype, o.device, name=f"grad_{k}")
    for n in nodes:  # recompute the forward; dead code elimination drops the unused
        if n in saved:
            continue
        env[n] = bwd.call(n.op, *[env[i] if isinstance(i, Node) else i for i in n.inputs], **n.attrs)

    grad: dict[Node, Node] = dict(grads_in)
    for n in reversed(nodes):
        g = grad.get(n)
        if g is None or not OPS[n.op].differentiable:
            continue
        if n.kind != OpKind.POINTWISE:
            g = fit(bwd, g, n.shape)
        xs = [env[i] if isinstance(i, Node) else i for i in n.inputs]
        contribs = OPS[n.op].vjp(bwd, env[n], g, *xs, **n.attrs)
        for x, c in zip(n.inputs, contribs):
            if c is None or not isinstance(x, Node) or not differentiable(x):
                continue
            # a broadcast operand's gradient is reduced here, as eager's backward formulas
            # do (sum_to(g * y, x.shape)): carried on at the broadcast shape, the chain
            # below would multiply before summing (inf * (1 - 1 + 0.5) is inf; inf - inf NaN).
            # A smaller gradient (a mean's 0-d g / n) is left to broadcast where it is used
            if broadcast_shapes("gradient", [c.shape, x.shape]) != tuple(x.shape):
                c = fit(bwd, c, x.shape)
            if c.dtype != x.dtype:  # as autograd: each gradient in its input's dtype
                c = bwd.call("cast", c, dtype=x.dtype)
            grad[x] = c if x not in grad else bwd.call("add", grad[x], c)

    outs = []
    for x, need in zip(inputs, needs_grad):
        if not need:
            continue
        g = grad.get(x)
        if g is None:
            g = bwd.call("mul", env[x], 0.0)  # no path from x to an output: zero gradient
        g = fit(bwd, g, x.shape)
        if g.dtype != x.dtype:
            g = bwd.call("cast", g, dtype=x.dtype)
        outs.append(g)
    bwd.outputs = outs
    grad_of = tuple(k for k, o in enumerate(outputs) if differentiable(o))
    return BackwardGraph(bwd, len(inputs), tuple(saved), grad_of)


def fit(bwd: Graph, g: Node, shape: tuple) -> Node:
    """A gradient kept at a broadcast shape, brought to ``shape`` by broadcasting
    rules: expanded to the common shape of the two (a full reduction passes a 0-d
    gradient down), then summed over the dimensions ``shape`` broadcast along."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    common = broadcast_shapes("gradient", [g.shape, shape])
    if g.shape != common:
        g = bwd.call("expand", g, shape=common)
    return g if common == shape else bwd.call("sum_to", g, shape=shape)
