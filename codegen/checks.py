"""Value checks in generated kernels: eager's run-time checks on operands (op table
``OpDef.checks``, e.g. binary cross-entropy's input and target in [0, 1]).

A checked kernel takes one more argument, ``checks_ptr``: int32 flags, one per
check, zero on entry. A program whose block holds a failing element stores 1
into that check's flag (every writer stores the same 1: no atomics needed); the
host reads the flags after the launch and raises eager's error
(``fusion.checks``). Shared by the pointwise and matmul-epilogue emitters.
"""
from __future__ import annotations

import torch

from ir.graph import Node
from ir.ops import OPS
from ir.triton_exprs import cast_expr

CHECKS_PARAM = ("checks_ptr", "int32 flags, one per value check, set to 1 where an element fails it")


def checks_of(nodes) -> tuple:
    """``(node, ValueCheck)`` pairs in flag order: the checks a kernel over ``nodes`` makes."""
    return tuple((n, c) for n in nodes for c in OPS[n.op].checks)


def check_lines(checks: tuple, operand) -> list[str]:
    """The kernel lines that set each check's flag; ``operand(node, k)`` is the
    expression of operand ``k`` of ``node`` (as the op itself reads it). ``mask``
    (the lanes in bounds) must be defined; a full reduction runs over 1-d and
    2-d blocks alike."""
    lines = []
    for j, (n, c) in enumerate(checks):
        bad = c.triton(_as_stored(operand(n, c.operand), n.inputs[c.operand]))
        lines.append(f"# value check {j} of %{n.id} = {n.op}: {c.label}: {c.message}")
        lines.append(f"tl.store(checks_ptr + {j}, 1, mask=tl.max(tl.where(mask, {bad}, 0).to(tl.int32)) > 0)")
    return lines


def _as_stored(expr: str, x) -> str:
    """An fp16/bf16 operand computed in fp32 inside the kernel, rounded to its own type
    first: eager checks the rounded value (1.00002 is 1.0 in fp16, and valid)."""
    if isinstance(x, Node) and x.dtype in (torch.float16, torch.bfloat16):
        return cast_expr(expr, x.dtype)
    return expr
