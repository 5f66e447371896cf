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
    eliminate_dead_code,
]
