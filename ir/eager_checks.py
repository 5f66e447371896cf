"""Eager's checks on a call's static arguments, made at capture.

Eager refuses some calls whatever the values: a literal the tensor's type cannot
hold (``torch.where(c, u8, 300)``, ``u8 ** 300``), a refused type (``-bool``,
``bool - 1``), a promotion it does not do (``bool / 2**63``), an int beyond
uint64. Capture asks eager itself, once per captured node, by making the call on
empty tensors of the operands' types, so a compiled call raises what the eager
call raises, of the same type, before any kernel runs. (Checks on values are
the op table's ``ValueCheck``s, made by the kernels.)
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ir.graph import Graph, Node
from ir.types import describe


def call_checked(g: Graph, name: str, inputs, attrs, eager: Exception | None) -> Node:
    """``g.call(name, ...)``, raising what eager raises for the call (``eager``). Our
    type rule's error wins where it is of eager's type: it names shapes and types."""
    try:
        node = g.call(name, *inputs, **attrs)
    except NotImplementedError:
        raise
    except Exception as ours:  # noqa: BLE001 (any rule error: eager's type decides)
        if eager is not None and type(eager) is not type(ours):
            raise eager from None
        raise
    if eager is not None:
        raise eager
    return node


def eager_error(n: fx.Node, target, args, kwargs) -> Exception | None:
    """What eager raises for this call's operand types and Python scalars, before
    any data is seen (None: nothing).

    Eager checks a call's static arguments whatever the values: a literal its type
    cannot hold (``torch.where(c, u8, 300)``, ``u8 ** 300``), a refused type
    (``-bool``, ``bool - 1``), a promotion it does not do (``bool / 2**63``).
    The call is made as the user wrote it (``2**63 / b`` is ``b.reciprocal() *
    2**63`` in torch, not ``torch.div``) on empty CPU tensors of the operands'
    types: meta tensors skip some of these checks, empty ones make them all and
    cost microseconds, once per captured node. ``NotImplementedError`` (no kernel
    for a type) is left to the caller: the op then runs eagerly.
    """
    empty_args, empty_kwargs = pytree.tree_map(_empty_like, (args, kwargs))
    try:
        if n.op == "call_method":
            getattr(empty_args[0], target)(*empty_args[1:], **empty_kwargs)
        else:
            target(*empty_args, **empty_kwargs)
    except NotImplementedError:
        raise
    except Exception as e:  # noqa: BLE001 (eager's own exception type is the contract)
        return _same_type(e, f"fusion: {_call_name(n, target)}: eager refuses "
                             f"{', '.join(describe(a) for a in args)}: {e}")
    return None


def _empty_like(x):
    """An operand as the probe passes it: no elements, same type and rank class (a 0-d
    tensor promotes like a scalar; it holds one element, zero)."""
    if not isinstance(x, Node):
        return x
    return torch.zeros((), dtype=x.dtype) if x.shape == () else torch.empty((0,), dtype=x.dtype)


def _call_name(n: fx.Node, target) -> str:
    return f"Tensor.{target}" if n.op == "call_method" else getattr(target, "__name__", type(target).__name__)


def _same_type(error: Exception, message: str) -> Exception:
    """``error``'s type with our message, or ``error`` itself where the type takes other arguments."""
    try:
        return type(error)(message)
    except TypeError:
        return error
