"""Plans: one function (``build_plan``) builds a plan from a graph, forward and backward alike.

    graph --verify--> passes --verify--> partition --check--> steps

Each fused group becomes a step with its generated kernel (``fusion.kernel``,
``fusion.matmul_kernel``); every other step runs its nodes with the reference
interpreter. A fused forward step pairs with its backward through a
``BackwardPlan``, built on first use for each pattern of needed input
gradients: what the forward saves (inputs, and values its kernel keeps such as
a matmul result) and the backward plan that reads them. The runtime
(``fusion.runtime``) runs plans; nothing here runs a kernel.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from fusion.kernel import FusedKernel, PointwiseKernel
from fusion.matmul_kernel import MatmulKernel
from fusion.modes import Mode
from fusion.partition import FUSED, Group, GroupKind, check_partition, partition
from fusion.passes import PASSES
from ir.autodiff import BackwardGraph, backward_graph, differentiable
from ir.graph import Graph
from ir.ops import OPS

KERNEL_FAMILIES = {GroupKind.POINTWISE: PointwiseKernel, GroupKind.MATMUL_EPILOGUE: MatmulKernel}


@dataclass(eq=False)
class Step:
    """One group of a plan; ``kernel`` is None where no generated kernel runs it."""
    group: Group
    kernel: FusedKernel | None
    backward: dict = field(default_factory=dict)  # needs -> BackwardPlan, built on first use

    @functools.cached_property
    def grad_paths(self) -> tuple:
        """Per group input: whether a gradient can flow from it to a group output
        (not one that only feeds a comparison)."""
        outputs = set(self.group.outputs)
        return tuple(bool(_reaches(self.group, {x}) & outputs) for x in self.group.inputs)

    def backward_for(self, needs: tuple) -> "BackwardPlan":
        """The backward of this step for one pattern of needed input gradients (cached)."""
        if needs not in self.backward:
            self.backward[needs] = plan_backward(self, needs)
        return self.backward[needs]


@dataclass(eq=False)
class Plan:
    """A graph split into steps, in execution order."""
    graph: Graph
    mode: Mode
    role: str                  # "forward" | "backward"
    steps: list[Step]

    @property
    def groups(self) -> list[Group]:
        return [s.group for s in self.steps]

    @property
    def kernels(self) -> dict[Group, FusedKernel]:
        """The generated kernels, by group."""
        return {s.group: s.kernel for s in self.steps if s.kernel is not None}


def build_plan(graph: Graph, mode: Mode, role: str = "forward", numerics: str = "default") -> Plan:
    """Verify, optimise and partition ``graph``; one kernel per fused group (none in eager mode).
    ``numerics``: the policy kernels are emitted for (codegen.pointwise.NUMERICS)."""
    graph.verify()
    for p in PASSES:
        graph = p(graph)
        graph.verify()
    groups = partition(graph)
    check_partition(graph, groups)
    steps = [Step(g, KERNEL_FAMILIES[g.kind](g, mode, role, numerics)
                  if g.kind in FUSED and mode != Mode.EAGER else None) for g in groups]
    return Plan(graph, mode, role, steps)


@dataclass(frozen=True)
class BackwardPlan:
    """The pairing of one fused forward step with its backward, for one pattern of
    needed input gradients.

    The forward kernel writes ``kept`` (a subset of its ``keep_for_backward``)
    besides its outputs, and saves the group inputs at positions ``saved`` and
    the kept values; the backward plan reads them and the gradients of the
    forward outputs, in the order ``graph.arrange`` gives (``inputs`` builds it).
    """
    needs: tuple               # per group input: its gradient is computed
    saved: tuple               # positions of the group inputs the forward saves
    kept: tuple                # forward values the kernel writes for the backward (Nodes)
    differentiable_outputs: tuple   # per group output: gradients flow through it
    graph: BackwardGraph       # its saved slots are the kernel's keep_for_backward, in order
    plan: Plan
    reaches: tuple = ()        # per group input: the outputs (positions) its gradient comes from

    def inputs(self, saved_tensors: list, grads: list) -> list:
        """The backward plan's inputs from what the forward saved (the ``saved``
        inputs, then the ``kept`` values) and the gradients of every forward output."""
        inputs = [None] * self.graph.n_inputs
        for k, t in zip(self.saved, saved_tensors):
            inputs[k] = t
        kept = dict(zip(self.kept, saved_tensors[len(self.saved):]))
        return self.graph.arrange(inputs, [kept.get(x) for x in self.graph.saved], grads)


def plan_backward(step: Step, needs: tuple) -> BackwardPlan:
    """Build the backward of a fused step: which gradients exist, what to save."""
    g, kernel = step.group, step.kernel
    # An input with no differentiable path to an output gets None, as in eager (not
    # zeros); an output reached from no input needing a gradient is non-differentiable.
    needs = tuple(need and bool(_reaches(g, {x}) & set(g.outputs)) for x, need in zip(g.inputs, needs))
    reached = _reaches(g, {x for x, need in zip(g.inputs, needs) if need})
    outputs_differentiable = tuple(differentiable(o) and o in reached for o in g.outputs)
    bgraph = backward_graph(g.nodes, g.inputs, g.outputs, needs, saved=kernel.keep_for_backward)
    plan = build_plan(bgraph.graph, kernel.mode, role="backward", numerics=kernel.numerics)
    # save only what the backward reads: forward inputs, and kept values
    used = {i for grp in plan.groups for i in grp.inputs} | set(plan.graph.outputs)
    ins = plan.graph.inputs
    saved = tuple(k for k in range(len(g.inputs)) if ins[k] in used)
    kept = tuple(x for k, x in enumerate(bgraph.saved) if ins[len(g.inputs) + k] in used)
    reaches = tuple(tuple(j for j, o in enumerate(g.outputs) if o in _reaches(g, {x})) for x in g.inputs)
    return BackwardPlan(needs, saved, kept, outputs_differentiable, bgraph, plan, reaches)


def _reaches(group: Group, sources: set) -> set:
    """The group values a gradient can flow to from ``sources`` (forward direction):
    only through differentiable ops and float operands."""
    reached = set(sources)
    for n in group.nodes:
        if OPS[n.op].differentiable and any(i in reached and differentiable(i) for i in n.operands()):
            reached.add(n)
    return reached
