"""Shape rules for views and matmuls, written out (torch's semantics).

Running the eager reference on meta tensors would give the same answers, but
the first meta call imports torch's symbolic-shapes machinery (and sympy):
about half a second of every cold compile. Valid inputs are typed here; an
invalid one falls back to ``meta_rule``, so the error is torch's own, with
its type, prefixed by the op and the shapes.
"""
from __future__ import annotations

from ir.graph import Node, numel
from ir.types import broadcast_shapes, device_of, meta_rule


def _dim(d: int, n: int) -> int | None:
    """``d`` normalised for a rank-``n`` tensor (rank 0 accepts 0 and -1), or None."""
    size = max(n, 1)
    return d + size if -size <= d < 0 else (d if 0 <= d < size else None)


def _transpose(shape, dim0, dim1):
    a, b = _dim(dim0, len(shape)), _dim(dim1, len(shape))
    if a is None or b is None:
        return None
    if not shape:
        return ()
    out = list(shape)
    out[a], out[b] = out[b], out[a]
    return tuple(out)


def _permute(shape, dims):
    norm = [_dim(d, len(shape)) for d in dims]
    if len(dims) != len(shape) or sorted(d for d in norm if d is not None) != list(range(len(shape))):
        return None
    return tuple(shape[d] for d in norm)


def _reshape(have, shape):
    shape_to, shape = tuple(shape), have
    if shape_to.count(-1) > 1 or any(s < -1 for s in shape_to):
        return None
    n, known = numel(shape), numel(s for s in shape_to if s != -1)
    if -1 in shape_to:
        if known == 0 or n % known:
            return None
        shape_to = tuple(n // known if s == -1 else s for s in shape_to)
    return tuple(shape_to) if numel(shape_to) == n else None


def _unsqueeze(shape, dim):
    d = dim + len(shape) + 1 if dim < 0 else dim
    return shape[:d] + (1,) + shape[d:] if 0 <= d <= len(shape) else None


def _expand(have, shape):
    shape_to, shape = tuple(shape), have
    lead = len(shape_to) - len(shape)
    if lead < 0 or any(s < 0 for s in shape_to[:lead]):
        return None
    out = list(shape_to[:lead])
    for have, want in zip(shape, shape_to[lead:]):
        if want == -1 or want == have:
            out.append(have)
        elif have == 1 and want >= 0:
            out.append(want)
        else:
            return None
    return tuple(out)


def _narrow(shape, dim, start, length):
    d = _dim(dim, len(shape))
    if d is None or not shape:
        return None
    start = start + shape[d] if start < 0 else start
    if start < 0 or length < 0 or start + length > shape[d]:
        return None
    return shape[:d] + (length,) + shape[d + 1:]


def _pad_to(shape, dim, start, size):
    d = _dim(dim, len(shape))
    return None if d is None or not shape else shape[:d] + (size,) + shape[d + 1:]


def view_rule(fn):
    """A rule for a view op: ``fn(shape, **attrs)`` gives the new shape (None: invalid)."""
    def rule(op, inputs, attrs):
        x = inputs[0]
        shape = fn(tuple(x.shape), **attrs) if isinstance(x, Node) else None
        if shape is None:
            return meta_rule(op, inputs, attrs)
        return shape, x.dtype, x.device
    return rule


transpose_rule, permute_rule, reshape_rule = view_rule(_transpose), view_rule(_permute), view_rule(_reshape)
unsqueeze_rule, expand_rule = view_rule(_unsqueeze), view_rule(_expand)
narrow_rule, pad_to_rule = view_rule(_narrow), view_rule(_pad_to)


def _matmul_shape(a: tuple, b: tuple):
    """torch.matmul's result shape, or None when the operands do not fit."""
    if not a or not b:
        return None
    if len(a) == 1 and len(b) == 1:
        return () if a[0] == b[0] else None
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        return None
    try:
        batch = broadcast_shapes("matmul", [a2[:-2], b2[:-2]])
    except RuntimeError:
        return None
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def matmul_rule(op, inputs, attrs):
    a, b = inputs
    shape = _matmul_shape(a.shape, b.shape) if a.dtype == b.dtype else None
    if shape is None:
        return meta_rule(op, inputs, attrs)
    return shape, a.dtype, device_of(op, inputs)


def linear_rule(op, inputs, attrs):
    x, w, *bias = inputs
    shape = _matmul_shape(x.shape, tuple(reversed(w.shape))) if len(w.shape) == 2 else None
    ok = shape is not None and x.dtype == w.dtype and all(b.dtype == x.dtype for b in bias)
    if ok and bias:
        try:
            ok = broadcast_shapes(op, [bias[0].shape, shape]) == shape
        except RuntimeError:
            ok = False
    if not ok:
        return meta_rule(op, inputs, attrs)
    return shape, x.dtype, device_of(op, inputs)


def addmm_rule(op, inputs, attrs):
    bias, a, b = inputs
    shape = _matmul_shape(a.shape, b.shape) if len(a.shape) == len(b.shape) == 2 else None
    ok = shape is not None and a.dtype == b.dtype == bias.dtype
    if ok:
        try:
            ok = broadcast_shapes(op, [bias.shape, shape]) == shape
        except RuntimeError:
            ok = False
    if not ok:
        return meta_rule(op, inputs, attrs)
    return shape, a.dtype, device_of(op, inputs)
