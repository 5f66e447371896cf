"""The graph IR: a flat, topologically ordered list of typed nodes.

Every node produces exactly one value with a known shape, dtype and device
(an extern op returning a tuple has dtype None; ``getitem`` nodes pick its
elements). Operands are other nodes or Python scalars (inlined constants).
``format_node`` is THE printer (``%3 = sigmoid(%2) : f32[32, 32]``), used by
``Graph.__str__``, explain and the generated kernels' comments; ``verify``
checks the invariants every pass must keep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from ir.opdef import OPS, OpKind

Scalar = (bool, int, float)

_DTYPE_SHORT = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
    torch.float64: "f64", torch.int64: "i64", torch.int32: "i32",
    torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "b1",
}


def numel(shape) -> int:
    """The number of elements of a tensor of ``shape``."""
    n = 1
    for s in shape:
        n *= s
    return n


def dtype_name(dtype: torch.dtype) -> str:
    """Short dtype name used by the printer and in kernel comments."""
    return _DTYPE_SHORT.get(dtype, str(dtype).replace("torch.", ""))


@dataclass(eq=False)
class Node:
    """One value of the graph: ``op`` applied to ``inputs`` with ``attrs``.

    ``op`` is an op-table name (``OPS[op]``), including the structural ops
    ``input`` (a graph argument) and ``param`` (a module parameter or buffer,
    read from the module at every call so weights are never stale).
    """
    id: int
    op: str
    inputs: tuple
    attrs: dict
    shape: tuple
    dtype: torch.dtype | None
    device: torch.device
    name: str = ""

    @property
    def kind(self) -> OpKind:
        return OPS[self.op].kind

    @property
    def numel(self) -> int:
        return numel(self.shape)

    def operands(self) -> list["Node"]:
        """The inputs that are nodes (constants left out)."""
        return [i for i in self.inputs if isinstance(i, Node)]

    def type_str(self) -> str:
        if self.dtype is None:
            return "object"
        return f"{dtype_name(self.dtype)}[{', '.join(map(str, self.shape))}]"

    def __repr__(self) -> str:
        return f"%{self.id}"


def format_node(n: Node) -> str:
    """One node as the IR dump, explain and kernel comments print it."""
    if n.kind in (OpKind.INPUT, OpKind.PARAM):
        rhs = f"{n.op}({n.name!r})"
    elif n.kind == OpKind.EXTERN:
        rhs = f"extern[{n.attrs['label']}]({', '.join(map(repr, n.inputs))})"
    elif n.kind == OpKind.ELEMENT:
        rhs = f"{n.inputs[0]!r}[{n.attrs['index']}]"
    else:
        args = [repr(i) if isinstance(i, Node) else _fmt_const(i) for i in n.inputs]
        args += [f"{k}={_fmt_const(v)}" for k, v in n.attrs.items()]
        rhs = f"{n.op}({', '.join(args)})"
    return f"%{n.id} = {rhs} : {n.type_str()}"


def format_value(n: Node) -> str:
    """A value as argument lists show it: ``%0 x: f32[37, 53]``."""
    return f"%{n.id} {n.name or n.op}: {n.type_str()}"


@dataclass
class Graph:
    """A list of nodes in topological order plus its outputs."""
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Node] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # rewrites passes applied, for explain

    # ---- building -------------------------------------------------------
    def add_node(self, op: str, inputs: Iterable, attrs: dict | None, shape, dtype, device,
                 name: str = "") -> Node:
        """Append a node whose type the caller already knows."""
        node = Node(len(self.nodes), op, tuple(inputs), dict(attrs or {}), tuple(shape),
                    dtype, torch.device(device), name)
        self.nodes.append(node)
        return node

    def call(self, op: str, *inputs, **attrs) -> Node:
        """Append ``op(*inputs, **attrs)``, typed by the op table's shape rule."""
        shape, dtype, device = OPS[op].infer(op, inputs, attrs)
        return self.add_node(op, inputs, attrs, shape, dtype, device)

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == OpKind.INPUT]

    @property
    def params(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == OpKind.PARAM]

    def users(self) -> dict[Node, list[Node]]:
        """Map each node to the nodes that read it, in order."""
        out: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.operands():
                if n not in out[i]:
                    out[i].append(n)
        return out

    # ---- printing and checking -----------------------------------------
    def __str__(self) -> str:
        lines = [format_node(n) for n in self.nodes]
        lines.append(f"return ({', '.join(map(repr, self.outputs))})")
        return "\n".join(lines)

    def verify(self) -> None:
        """Check ids, topological order, operand types and each node's type rule."""
        seen: set[int] = set()
        for pos, n in enumerate(self.nodes):
            if n.id != pos:
                raise AssertionError(f"node {n!r} is at position {pos}")
            for i in n.inputs:
                if isinstance(i, Node):
                    if i.id not in seen or self.nodes[i.id] is not i:
                        raise AssertionError(f"{n!r} = {n.op} reads {i!r} before it is defined")
                elif not isinstance(i, Scalar) and i is not None:
                    raise AssertionError(f"{n!r} = {n.op} has a non-scalar constant {i!r}")
            if n.op not in OPS:
                raise AssertionError(f"{n!r}: unknown op {n.op!r}")
            if OPS[n.op].infer is not None:  # structural and extern nodes carry their own type
                shape, dtype, _ = OPS[n.op].infer(n.op, n.inputs, n.attrs)
                if tuple(shape) != n.shape or dtype != n.dtype:
                    raise AssertionError(
                        f"{n!r} = {n.op}: recorded {n.type_str()} but the rule gives "
                        f"{dtype_name(dtype)}{list(shape)}")
            seen.add(n.id)
        for o in self.outputs:
            if o.id not in seen:
                raise AssertionError(f"output {o!r} is not a node of the graph")


def _fmt_const(v: Any) -> str:
    if isinstance(v, torch.dtype):
        return dtype_name(v)
    return repr(v)
