"""Python scalars in generated kernels, converted the way eager applies them.

Eager never computes with a Python number as such: it first converts it to the
type the op works in. For integers that conversion wraps (``u8 + 256`` adds 0,
``u8 < -1`` compares with 255, ``i32 + 2**32`` adds 0); for floats it rounds
(``f32 * 1e300`` multiplies by inf, ``f16 == 0.1`` compares with fp16(0.1)).
Triton instead refuses an int that does not fit the tensor's type and keeps a
float literal as fp32 or fp64 as it sees fit, so a literal is converted here,
at emission, and written as a value of the target type.

Which type eager converts to, per op (ATen's TensorIterator and opmath):
arithmetic on fp16/bf16 keeps the scalar in fp32 (``h * 1e-8`` is not 0);
comparisons and ``where`` convert it to the operands' own type. Literals that
eager refuses outright (``torch.where(u8, 300)``, ``u8 ** 300``) never get here:
capture runs eager's own argument checks (``ir.lower``).
"""
from __future__ import annotations

import math

import torch

from ir.types import triton_type

HALF_TYPES = (torch.float16, torch.bfloat16)


def scalar_type(result: torch.dtype, operands: torch.dtype, promotion: str) -> torch.dtype:
    """The type eager converts a Python scalar operand to, for an op that computes
    ``result`` from operands promoted to ``operands`` (``promotion`` as in ir.types)."""
    if promotion == "bool":      # comparisons: the literal takes the operands' type
        return operands
    if promotion == "select":    # where: the literal takes the result's type
        return result
    # arithmetic: fp16/bf16 compute in fp32 (opmath) with the scalar as given
    return torch.float32 if result in HALF_TYPES else result


def convert(value, dtype: torch.dtype):
    """``value`` (bool, int or float) converted to ``dtype`` as eager converts it:
    integers wrap modulo 2**bits, floats round to nearest (overflowing to inf)."""
    if dtype == torch.bool:
        return bool(value)
    if not dtype.is_floating_point:
        bits = torch.iinfo(dtype).bits
        wrapped = int(value) % (1 << bits)
        return wrapped - (1 << bits) if dtype.is_signed and wrapped >> (bits - 1) else wrapped
    if isinstance(value, float) and not math.isfinite(value):
        return value
    return torch.tensor(float(value), dtype=torch.float64).to(dtype).item()


def emit_literal(value, dtype: torch.dtype, compute: str, typed: bool) -> str:
    """A Python scalar as a kernel expression in ``compute`` (a Triton type),
    converted to ``dtype`` first. ``typed``: spell it as a scalar of ``compute``
    (``tl.full``) because no tensor operand gives Triton the type: ``where(c, 0.1,
    0.2)`` in fp64 would otherwise compute in fp32."""
    v = convert(value, dtype)
    if dtype == torch.bool:
        text = "1" if v else "0"
        return f"tl.full([], {text}, tl.int1)" if typed else text
    if dtype.is_floating_point:
        text = _float(v)
    else:
        text = repr(int(v))
    if typed or (dtype.is_floating_point and compute == triton_type(torch.float64)):
        # fp64: Triton reads a bare literal as fp32 when it fits (0.1 loses digits)
        return f"tl.full([], {text}, {compute})"
    return text


def _float(v: float) -> str:
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else 'float("-inf")'
    return repr(float(v))
