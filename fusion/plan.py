"""A compiled plan: the pipeline that builds it, and the loop that runs it.

    graph --verify--> passes --verify--> partition --check--> steps

Pointwise groups run as generated kernels (``fusion.kernel``), matmul groups
with an epilogue as matmul kernels (``fusion.matmul_kernel``), each wrapped in a
``torch.autograd.Function`` when gradients are needed; every other group runs
its eager torch reference, so autograd sees it as usual.
"""
from __future__ import annotations

import torch

from fusion.backend import EAGER
from fusion.partition import Group, check_partition, partition
from fusion.passes import PASSES
from ir.capture import run_extern
from ir.graph import Graph, Node
from ir.ops import OPS


class Plan:
    """A graph split into groups, ready to run with one executor per group."""

    def __init__(self, graph: Graph, mode: str, role: str = "forward"):
        from fusion.kernel import PointwiseKernel
        from fusion.matmul_kernel import MatmulKernel
        graph.verify()
        for p in PASSES:
            graph = p(graph)
            graph.verify()
        self.graph = graph
        self.mode = mode
        self.role = role
        self.groups = partition(graph)
        check_partition(graph, self.groups)
        # one kernel class per fused group kind; a lone matmul stays a torch call
        kernel_for = {"pointwise": PointwiseKernel, "matmul": MatmulKernel}
        self.kernels: dict[Group, PointwiseKernel | MatmulKernel] = {
            g: kernel_for[g.kind](g, mode, role) for g in self.groups
            if mode != EAGER and (g.kind == "pointwise" or (g.kind == "matmul" and len(g.nodes) > 1))}

    def run(self, inputs: list, params: dict | None = None) -> list:
        """Run on ``inputs`` (one per graph input, in order); returns the outputs."""
        env: dict[Node, object] = {}
        it = iter(inputs)
        for g in self.groups:
            if g.kind == "input":
                env[g.nodes[0]] = next(it)
            elif g.kind == "param":
                env[g.nodes[0]] = params[g.nodes[0].name]
            elif g in self.kernels:
                outs = run_kernel(self.kernels[g], [env[i] for i in g.inputs])
                env.update(zip(g.outputs, outs))
            else:
                for n in g.nodes:
                    env[n] = eval_node(n, env)
        return [env[o] for o in self.graph.outputs]


def eval_node(n: Node, env: dict):
    """Run one node with its eager reference (the oracle and the CPU fallback)."""
    if n.op == "extern":
        return run_extern(n, env)
    args = [env[i] if isinstance(i, Node) else i for i in n.inputs]
    return OPS[n.op].eager(*args, **n.attrs)


def run_kernel(kernel, inputs: list) -> list:
    """Launch a fused kernel, through autograd when some input needs a gradient."""
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
        from fusion.autograd import FusedKernelFunction
        return list(FusedKernelFunction.apply(kernel, *inputs))
    return kernel(inputs)
