"""Shape and dtype rules shared by the op table (torch broadcasting and promotion)."""
from __future__ import annotations

import torch

from ir.graph import Node
from ir.opdef import OPS

FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(x) -> str:
    """An operand as an error message shows it: ``f32[3, 4]`` or ``2.0``."""
    return x.type_str() if isinstance(x, Node) else repr(x)


def meta(x):
    """A meta tensor with ``x``'s type (constants pass through): free to compute on."""
    if isinstance(x, Node):
        if x.dtype is None:
            raise TypeError(f"{x!r} is not a tensor")
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    return x


def device_of(op: str, inputs) -> torch.device:
    """The common device of the tensor operands; 0-d CPU tensors may mix, as in torch."""
    devices = {n.device for n in inputs if isinstance(n, Node) and n.dtype is not None
               and not (n.device.type == "cpu" and n.shape == ())}
    if len(devices) > 1:
        raise RuntimeError(f"fusion: {op}: expected all tensors on one device, got "
                           f"{', '.join(sorted(map(str, devices)))} "
                           f"({', '.join(describe(i) for i in inputs)})")
    if devices:
        return devices.pop()
    nodes = [n for n in inputs if isinstance(n, Node)]
    return nodes[0].device if nodes else torch.device("cpu")


def broadcast_shape(op: str, inputs) -> tuple:
    """torch broadcasting of the operands' shapes (constants have none)."""
    return broadcast_shapes(op, [tuple(n.shape) for n in inputs if hasattr(n, "shape")])


def broadcast_shapes(op: str, shapes: list) -> tuple:
    """torch broadcasting; the error names the op and the shapes, with eager's type.
    (Written out: torch.broadcast_shapes imports sympy on first use, ~0.5 s.)"""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for s in shapes:
        for i, size in enumerate(s, start=rank - len(s)):
            if size != 1 and out[i] not in (1, size):
                raise RuntimeError(
                    f"fusion: {op}: shapes {' and '.join(str(list(t)) for t in shapes)} "
                    f"do not broadcast")
            if size != 1:
                out[i] = size  # 0 wins over 1, as in torch
    return tuple(out)


def promote(inputs) -> torch.dtype:
    """torch.result_type over tensors and Python scalars (0-d tensors count as scalars)."""
    # only a Python scalar's kind matters to torch's promotion, never its value; an int
    # beyond int64 would take result_type's uint64 path, which refuses bool tensors
    ops = [0 if isinstance(i, int) and not isinstance(i, bool) else meta(i) for i in inputs]
    if len(ops) == 1:
        x = ops[0]
        return x.dtype if isinstance(x, torch.Tensor) else torch.tensor(x).dtype
    dtype = torch.result_type(ops[0], ops[1])
    for other in ops[2:]:
        # fold: result_type of the first pair stands in as a tensor of that dtype
        dtype = torch.result_type(torch.empty(1, dtype=dtype, device="meta"), other)
    return dtype


def to_float(dtype: torch.dtype) -> torch.dtype:
    """Integer and bool results of float ops become the default float, as in torch."""
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def elementwise(promotion: str):
    """The rule for a pointwise op: broadcast shapes, dtype by ``promotion``.

    ``promotion`` is "common" (result_type), "float" (result_type, ints -> float),
    "bool" (comparisons), "select" (where: the first operand is the condition).
    """
    def rule(op, inputs, attrs):
        shape = broadcast_shape(op, inputs)
        device = device_of(op, inputs)
        if promotion == "select":
            cond = inputs[0]
            if not (isinstance(cond, Node) and cond.dtype == torch.bool):
                raise RuntimeError(f"fusion: {op}: condition must be a bool tensor, got "
                                   f"{describe(cond)}")  # eager's error type
            dtype = promote(inputs[1:])
        else:
            dtype = promote(inputs)
        if promotion == "float":
            dtype = to_float(dtype)
        elif promotion == "bool":
            dtype = torch.bool
        return shape, dtype, device
    return rule


def cast_rule(op, inputs, attrs):
    (x,) = inputs
    return x.shape, attrs["dtype"], x.device


def sum_to_rule(op, inputs, attrs):
    (x,) = inputs
    return tuple(attrs["shape"]), x.dtype, x.device


def meta_rule(op, inputs, attrs):
    """Run the op's eager reference on meta tensors: torch's own shape rule, no data."""
    device = device_of(op, inputs)
    try:
        out = OPS[op].eager(*[meta(i) for i in inputs], **attrs)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise type(e)(f"fusion: {op}: invalid for {', '.join(describe(i) for i in inputs)}"
                      f"{' with ' + str(attrs) if attrs else ''}: {e}") from None
    return tuple(out.shape), out.dtype, device


def require_kernel_types(op, inputs, attrs) -> None:
    """Refuse (NotImplementedError: the op then runs eagerly) a type no kernel holds:
    uint16/32/64, for which torch 2.13 itself has few kernels."""
    types = [i.dtype for i in inputs if isinstance(i, Node)] + [
        v for v in attrs.values() if isinstance(v, torch.dtype)]
    for t in types:
        if t not in _TRITON:
            raise NotImplementedError(f"{op} on {t} is not fused (no kernel type for it)")


# Triton spellings of dtypes, as strings: ir/ imports no triton.
_TRITON = {torch.float32: "tl.float32", torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16",
           torch.float64: "tl.float64", torch.int64: "tl.int64", torch.int32: "tl.int32",
           torch.int16: "tl.int16", torch.int8: "tl.int8", torch.uint8: "tl.uint8", torch.bool: "tl.int1"}


def triton_type(dtype: torch.dtype) -> str:
    """The Triton type a tensor of ``dtype`` is stored as."""
    return _TRITON[dtype]


def compute_type(dtype: torch.dtype) -> str:
    """The type a value is computed in: half types widen to fp32, fp64 stays fp64."""
    if dtype in (torch.float16, torch.bfloat16):
        return "tl.float32"
    return _TRITON[dtype]
