"""Partition a graph into kernel groups, reading only op kinds.

Pointwise nodes are grown into maximal groups: working from the outputs
back, a node joins the groups of its users when the shapes agree (the
group's iteration space), or, when its shape is smaller and broadcasts into
it, when every user is in that one group (it is then recomputed per element
instead of written and re-read). Merges that would close a cycle through an
outside node are refused. Every other node is a group of its own.
``check_partition`` verifies the result: every node in exactly one group,
groups in an order that respects every dependency.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ir.graph import Graph, Node
from ir.ops import OPS


@dataclass(eq=False)
class Group:
    """One step of the plan: a fused kernel, or a single node run some other way."""
    kind: str                        # pointwise | matmul | view | reduce | extern | input | param
    nodes: list[Node]
    inputs: list[Node] = field(default_factory=list)   # outside values read
    outputs: list[Node] = field(default_factory=list)  # values needed outside the group

    @property
    def shape(self) -> tuple:
        return self.outputs[0].shape if self.outputs else self.nodes[-1].shape


def kind_of(n: Node) -> str:
    return n.op if n.op in ("input", "param") else OPS[n.op].kind


def partition(graph: Graph) -> list[Group]:
    """Group the graph's nodes; returns the groups in execution order."""
    users = graph.users()
    is_output = set(graph.outputs)
    group_of: dict[Node, int] = {}
    members: dict[int, list[Node]] = {}
    shape_of: dict[int, tuple] = {}
    next_id = 0

    for n in reversed(graph.nodes):
        if kind_of(n) != "pointwise":
            continue
        pointwise_users = {group_of[u] for u in users[n] if u in group_of}
        same = [gid for gid in pointwise_users if shape_of[gid] == n.shape]
        target = None
        if same:
            # join (and so horizontally merge) every equal-shape user group, if acyclic
            merged = {n, *[m for gid in same for m in members[gid]]}
            if _acyclic(merged, users):
                target = same
            else:
                for gid in same:
                    if _acyclic({n, *members[gid]}, users):
                        target = [gid]
                        break
        elif (len(pointwise_users) == 1 and n not in is_output
              and all(u in group_of for u in users[n])):
            (gid,) = pointwise_users
            if _broadcasts(n.shape, shape_of[gid]) and _acyclic({n, *members[gid]}, users):
                target = [gid]
        if target is None:
            gid, next_id = next_id, next_id + 1
            members[gid], shape_of[gid] = [n], n.shape
        else:
            gid = target[0]
            for other in target[1:]:
                for m in members.pop(other):
                    group_of[m] = gid
                    members[gid].append(m)
                del shape_of[other]
            members[gid].append(n)
        group_of[n] = gid

    order = {n: i for i, n in enumerate(graph.nodes)}
    groups: list[Group] = []
    for n in graph.nodes:
        if n in group_of:
            continue
        groups.append(Group(kind_of(n), [n]))
    for gid, nodes in members.items():
        groups.append(Group("pointwise", sorted(nodes, key=order.__getitem__)))
    for grp in groups:
        inside = set(grp.nodes)
        grp.inputs = list(dict.fromkeys(i for m in grp.nodes for i in m.operands() if i not in inside))
        grp.outputs = [m for m in grp.nodes
                       if m in is_output or any(u not in inside for u in users[m])]
    return _schedule(groups)


def _broadcasts(small: tuple, big: tuple) -> bool:
    if len(small) > len(big):
        return False
    return all(s in (1, b) for s, b in zip(reversed(small), reversed(big)))


def _acyclic(nodes: set, users: dict) -> bool:
    """No path leaves ``nodes`` and comes back into them."""
    frontier = [u for n in nodes for u in users[n] if u not in nodes]
    seen = set()
    while frontier:
        u = frontier.pop()
        if u in seen:
            continue
        seen.add(u)
        for v in users[u]:
            if v in nodes:
                return False
            frontier.append(v)
    return True


def _schedule(groups: list[Group]) -> list[Group]:
    """Order groups so each runs after the groups that produce its inputs."""
    owner = {n: g for g in groups for n in g.nodes}
    deps = {g: {owner[i] for i in g.inputs} for g in groups}
    first = {g: min(n.id for n in g.nodes) for g in groups}
    done, order = set(), []
    pending = sorted(groups, key=first.__getitem__)
    while pending:
        for g in pending:
            if deps[g] <= done:
                order.append(g)
                done.add(g)
                pending.remove(g)
                break
        else:
            raise AssertionError("partition has a cycle between groups")
    return order


def check_partition(graph: Graph, groups: list[Group]) -> None:
    """Every node in exactly one group; groups ordered after their producers;
    pointwise groups write only values of their iteration shape."""
    seen: dict[Node, Group] = {}
    for g in groups:
        for n in g.nodes:
            if n in seen:
                raise AssertionError(f"{n!r} is in two groups")
            seen[n] = g
    missing = [n for n in graph.nodes if n not in seen]
    if missing:
        raise AssertionError(f"nodes in no group: {missing}")
    done: set[Node] = set()
    for g in groups:
        for i in g.inputs:
            if i not in done:
                raise AssertionError(f"group of {g.nodes} reads {i!r} before it is computed")
        if g.kind == "pointwise":
            shapes = {o.shape for o in g.outputs}
            if len(shapes) > 1:
                raise AssertionError(f"pointwise group writes several shapes {shapes}")
            if any(kind_of(n) != "pointwise" for n in g.nodes):
                raise AssertionError(f"non-pointwise node in a pointwise group: {g.nodes}")
        done.update(g.nodes)
