"""The graph passes, in the order they run. Each is a pure ``Graph -> Graph``."""
from __future__ import annotations

from ir.graph import Graph, Node
from ir.rewrite import eliminate_dead_code


def rewrite_sigmoid_bce(graph: Graph) -> Graph:
    """``bce(sigmoid(z), y)`` -> ``bce_logits_checked(z, y)``: bce_logits with bce's value checks.

    On probabilities, torch clamps log at -100, so once sigmoid saturates
    (|z| > ~17 in fp32) the loss is capped and the gradient vanishes; the logits
    form is exact for any z. The sigmoid stays if something else reads it.
    """
    hits = [n for n in graph.nodes if n.op == "bce" and isinstance(n.inputs[0], Node)
            and n.inputs[0].op == "sigmoid"]

    def logits_form(n: Node, out: Graph, env: dict) -> Node:
        z, y = n.inputs[0].inputs[0], n.inputs[1]
        out.notes.append(f"%{n.id} = bce(sigmoid(%{z.id}), ...) rewritten to the stable "
                         f"bce_logits(%{z.id}, ...) form")
        # the logits form, with the value checks eager makes on bce's operands
        return out.call("bce_logits_checked", env[z], env[y] if isinstance(y, Node) else y)
    return _rewrite(graph, hits, logits_form)  # the sigmoid, if nothing else reads it, goes in the next pass


def rewrite_outer_product_matmul(graph: Graph) -> Graph:
    """``a @ b`` with K = 1 (a: [..., M, 1], b: [..., 1, N]) -> ``a * b``, broadcast.

    An outer product, as eager computes it: each output is one product, with no sum
    started from +0.0 (a product of -0.0 stays -0.0), in a pointwise kernel instead of a dot.
    """
    hits = [n for n in graph.nodes if n.op == "matmul" and all(len(x.shape) >= 2 for x in n.inputs)
            and n.inputs[0].shape[-1] == 1]

    def outer(n: Node, out: Graph, env: dict) -> Node:
        out.notes.append(f"%{n.id} = matmul with K = 1 rewritten to a broadcast mul")
        return out.call("mul", env[n.inputs[0]], env[n.inputs[1]])
    return _rewrite(graph, hits, outer)


def _rewrite(graph: Graph, hits: list, replace) -> Graph:
    """``graph`` with each node of ``hits`` replaced by what ``replace(node, out, env)`` adds."""
    if not hits:
        return graph
    out = Graph()
    env: dict[Node, Node] = {}
    for n in graph.nodes:
        if n in hits:
            env[n] = replace(n, out, env)
            continue
        ins = tuple(env[i] if isinstance(i, Node) else i for i in n.inputs)
        env[n] = out.add_node(n.op, ins, n.attrs, n.shape, n.dtype, n.device, n.name)
    out.outputs = [env[o] for o in graph.outputs]
    out.notes = list(graph.notes) + out.notes
    return out


PASSES = [
    rewrite_sigmoid_bce,
    rewrite_outer_product_matmul,
    eliminate_dead_code,
]
