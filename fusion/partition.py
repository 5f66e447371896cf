"""Partition a graph into kernel groups, reading only op kinds.

Pointwise nodes are grown into maximal groups: working from the outputs
back, a node joins the groups of its users when the shapes agree (the
group's iteration space), or, when its shape is smaller and broadcasts into
it, when every user is in that one group (it is then recomputed per element
instead of written and re-read). Independent groups of one shape then merge
(siblings: the gradients of a backward). Merges that would close a cycle
through an outside node are refused. A matmul whose result such a group reads (at the
matmul's shape) then anchors it: the group becomes one matmul kernel with the
pointwise ops as its epilogue (``GroupKind.MATMUL_EPILOGUE``). Every other node is a
group of its own; a matmul with no pointwise consumer stays a torch call
(``GroupKind.MATMUL``).
``check_partition`` verifies the result: every node in exactly one group,
groups in an order that respects every dependency.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ir.graph import Graph, Node
from ir.ops import FUSIBLE, OPS, OpKind
from ir.types import FLOAT_TYPES


class GroupKind(str, Enum):
    """How a group runs."""
    POINTWISE = "pointwise"              # one generated pointwise kernel (may end in a full reduction)
    MATMUL_EPILOGUE = "matmul_epilogue"  # one generated matmul kernel carrying pointwise ops
    MATMUL = "matmul"                    # a lone matmul: a torch (cuBLAS) call, nothing to fuse
    REDUCTION = "reduction"              # a full sum/mean of a value no kernel computes: torch
    SUM_TO = "sum_to"                    # a broadcast gradient reduced by torch
    VIEW = "view"                        # torch makes the view; kernels read it by strides
    EXTERN = "extern"                    # not in the op table: eager torch
    ELEMENT = "element"                  # one element of an extern's tuple result
    INPUT = "input"
    PARAM = "param"

    def __str__(self) -> str:
        return self.value


FUSED = frozenset({GroupKind.POINTWISE, GroupKind.MATMUL_EPILOGUE})  # generated kernels
# a node alone in a group runs as its op kind says
_SINGLE = {OpKind.POINTWISE: GroupKind.POINTWISE, OpKind.REDUCTION: GroupKind.REDUCTION,
           OpKind.SUM_TO: GroupKind.SUM_TO, OpKind.VIEW: GroupKind.VIEW,
           OpKind.MATMUL: GroupKind.MATMUL, OpKind.EXTERN: GroupKind.EXTERN,
           OpKind.ELEMENT: GroupKind.ELEMENT,
           OpKind.INPUT: GroupKind.INPUT, OpKind.PARAM: GroupKind.PARAM}


@dataclass(eq=False)
class Group:
    """One step of the plan: a fused kernel, or a single node run some other way."""
    kind: GroupKind
    nodes: list[Node]
    inputs: list[Node] = field(default_factory=list)   # outside values read
    outputs: list[Node] = field(default_factory=list)  # values needed outside the group

    @property
    def shape(self) -> tuple:
        """The iteration space: the shape of the element-wise outputs (a full
        reduction output is 0-d; its input has the iteration shape)."""
        for o in self.outputs:
            if o.kind != OpKind.REDUCTION:
                return o.shape
        last = self.nodes[-1]
        return last.inputs[0].shape if last.kind == OpKind.REDUCTION else last.shape


def partition(graph: Graph) -> list[Group]:
    """Group the graph's nodes; returns the groups in execution order."""
    users = graph.users()
    is_output = set(graph.outputs)
    group_of: dict[Node, int] = {}
    members: dict[int, list[Node]] = {}
    shape_of: dict[int, tuple] = {}
    next_id = 0

    for n in reversed(graph.nodes):
        if n.kind != OpKind.POINTWISE:
            continue
        pointwise_users = {group_of[u] for u in users[n] if u in group_of}
        same = [gid for gid in pointwise_users if shape_of[gid] == n.shape]
        target = None
        if same:
            # join (and so horizontally merge) every equal-shape user group, if acyclic
            merged = {n, *[m for gid in same for m in members[gid]]}
            if _acyclic(merged, users, group_of, members):
                target = same
            else:
                for gid in same:
                    if _acyclic({n, *members[gid]}, users, group_of, members):
                        target = [gid]
                        break
        elif (len(pointwise_users) == 1 and n not in is_output
              and all(u in group_of for u in users[n])):
            (gid,) = pointwise_users
            if (_broadcasts(n.shape, shape_of[gid])
                    and _acyclic({n, *members[gid]}, users, group_of, members)):
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

    # a full reduction (sum/mean) ends the kernel that computes its input:
    # each program writes a partial sum, so the input is never written out
    for n in graph.nodes:
        if n.kind != OpKind.REDUCTION:
            continue
        src = n.inputs[0]
        gid = group_of.get(src)
        if (gid is not None and shape_of[gid] == src.shape
                and _acyclic({n, *members[gid]}, users, group_of, members)):
            members[gid].append(n)
            group_of[n] = gid

    # a matmul anchors the pointwise group of its shape that reads its result: the
    # group becomes the epilogue of one matmul kernel. Later matmuls go first, so in
    # sigmoid(x @ W + h @ U) the second anchors and the first is an epilogue input.
    anchored: set[int] = set()
    for n in reversed(graph.nodes):
        if not anchors_epilogue(n):
            continue
        for gid in dict.fromkeys(group_of[u] for u in users[n] if u in group_of):
            nodes = members[gid]
            if (gid not in anchored and shape_of[gid] == n.shape
                    and all(m.kind == OpKind.POINTWISE for m in nodes)
                    and not any(i in nodes for i in n.operands())  # A and B come from outside
                    and _acyclic({n, *nodes}, users, group_of, members)):
                anchored.add(gid)
                nodes.append(n)
                group_of[n] = gid
                break

    order = {n: i for i, n in enumerate(graph.nodes)}
    _merge_siblings(members, shape_of, group_of, anchored, users, order)
    groups: list[Group] = []
    for n in graph.nodes:
        if n in group_of:
            continue
        groups.append(Group(_SINGLE[n.kind], [n]))
    for gid, nodes in members.items():
        groups.append(Group(GroupKind.MATMUL_EPILOGUE if gid in anchored else GroupKind.POINTWISE,
                            sorted(nodes, key=order.__getitem__)))
    for grp in groups:
        inside = set(grp.nodes)
        grp.inputs = list(dict.fromkeys(i for m in grp.nodes for i in m.operands() if i not in inside))
        grp.outputs = [m for m in grp.nodes
                       if m in is_output or any(u not in inside for u in users[m])]
    return _schedule(groups)


def anchors_epilogue(n: Node) -> bool:
    """A matmul our kernel runs: the table gives its form, and A and B are float
    matrices (rank >= 2, the result's dtype). Others stay torch calls."""
    if n.kind != OpKind.MATMUL or OPS[n.op].form is None or n.dtype not in FLOAT_TYPES:
        return False
    form = OPS[n.op].form
    return all(isinstance(x, Node) and x.dtype == n.dtype and len(x.shape) >= 2
               for x in (n.inputs[form.a], n.inputs[form.b]))


def _merge_siblings(members: dict, shape_of: dict, group_of: dict, skip: set, users: dict,
                    order: dict) -> None:
    """Independent pointwise groups of one iteration shape become one group when no
    path runs between them: a backward that writes several input gradients is then one
    kernel reading each saved input once, not one kernel per gradient."""
    plain = sorted((gid for gid in members if gid not in skip
                    and all(m.kind == OpKind.POINTWISE for m in members[gid])),
                   key=lambda gid: min(order[m] for m in members[gid]))
    kept: list[int] = []
    for gid in plain:
        for target in kept:
            if shape_of[target] == shape_of[gid] and _acyclic(
                    {*members[target], *members[gid]}, users, group_of, members):
                for m in members.pop(gid):
                    group_of[m] = target
                    members[target].append(m)
                del shape_of[gid]
                break
        else:
            kept.append(gid)


def _broadcasts(small: tuple, big: tuple) -> bool:
    if len(small) > len(big):
        return False
    return all(s in (1, b) for s, b in zip(reversed(small), reversed(big)))


def _acyclic(nodes: set, users: dict, group_of: dict, members: dict) -> bool:
    """No path leaves ``nodes`` and comes back into them. A node already in another
    group stands for its whole group (the group runs as one kernel), so a path
    entering any member continues from every member: two groups can never come to
    depend on each other."""
    frontier = [u for n in nodes for u in users[n] if u not in nodes]
    seen = set()
    while frontier:
        u = frontier.pop()
        if u in seen:
            continue
        unit = members[group_of[u]] if u in group_of and group_of[u] in members else [u]
        seen.update(unit)
        for w in unit:
            for v in users[w]:
                if v in nodes:
                    return False
                if v not in seen:
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
        if g.kind == GroupKind.POINTWISE:
            shapes = {o.shape for o in g.outputs if o.kind != OpKind.REDUCTION}
            if len(shapes) > 1:
                raise AssertionError(f"pointwise group writes several shapes {shapes}")
            if any(n.kind not in FUSIBLE for n in g.nodes):
                raise AssertionError(f"non-pointwise node in a pointwise group: {g.nodes}")
            for r in g.nodes:
                if r.kind == OpKind.REDUCTION and (r.inputs[0] not in g.nodes
                                                  or r.inputs[0].shape != g.shape):
                    raise AssertionError(f"{r!r} reduces a value its group does not compute")
        if g.kind == GroupKind.MATMUL_EPILOGUE:
            anchor = [n for n in g.nodes if n.kind == OpKind.MATMUL]
            if len(anchor) != 1 or any(n.kind != OpKind.POINTWISE for n in g.nodes if n is not anchor[0]):
                raise AssertionError(f"a matmul group is one matmul and pointwise ops: {g.nodes}")
            if any(o.shape != anchor[0].shape for o in g.outputs):
                raise AssertionError(f"matmul group writes a shape other than its result's: {g.outputs}")
            if any(i in g.nodes for i in anchor[0].operands()):
                raise AssertionError(f"{anchor[0]!r} reads an operand its own epilogue computes")
        done.update(g.nodes)
