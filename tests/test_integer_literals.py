"""Python scalars applied to integer (and bool) tensors exactly as eager applies them.

A sweep over every integer dtype x every pointwise op of the table x literal
edges (0, -1, the type's min - 1 and max + 1, 2**31, 2**32, 2**63 - 1, -2**63,
2**63, halves, large floats, inf, NaN), each literal in every operand position,
through ``fusion.compile`` and compared with eager: the same values and dtype
(integer arithmetic wraps, float literals promote as torch.result_type says,
comparisons see the literal converted as eager converts it), or the same
exception type where eager refuses the call (``torch.where(u8, 300)``,
``u8 ** 300``, ``-bool``, an int beyond uint64).
"""
from __future__ import annotations

import math

import pytest
import torch

import fusion
from ir.ops import OPS, OpKind

from helpers import DEVICE, SHORT

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
SWEPT_DTYPES = INT_DTYPES + (torch.bool,)
# torch 2.13 has kernels for few ops on uint16/32/64 (add, comparisons, neg... raise
# NotImplementedError on CPU): ops on them are left to eager (extern), tested below
WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
FLOAT_EDGES = (2.5, -0.5, 1e10, -1e10, 1e39, 1e300, -1e300, math.inf, -math.inf, math.nan)
TABLE_OPS = [n for n, d in OPS.items() if d.kind == OpKind.POINTWISE and not d.internal]
SHORT = {**SHORT, torch.uint8: "u8", torch.int8: "i8", torch.int16: "i16"}


def int_edges(dtype: torch.dtype) -> tuple:
    """Python ints at and beyond the edges of ``dtype``, and of every wider type."""
    lo, hi = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    return tuple(dict.fromkeys((0, 1, -1, 2, lo - 1, hi + 1, lo, hi, 300, 2**31, 2**32,
                                2**63 - 1, -2**63, 2**63, 2**64 - 1)))


def edges(dtype: torch.dtype) -> tuple:
    return int_edges(dtype) + FLOAT_EDGES


def values(dtype: torch.dtype) -> torch.Tensor:
    """A tensor holding the type's extremes and small values (both signs where it has them)."""
    if dtype == torch.bool:
        return torch.tensor([True, False, True, False], device=DEVICE)
    info = torch.iinfo(dtype)
    picks = [info.min, info.min + 1, -3, -1, 0, 1, 2, 3, 100, info.max - 1, info.max]
    return torch.tensor([v for v in dict.fromkeys(picks) if info.min <= v <= info.max],
                        dtype=dtype, device=DEVICE)


def spelling(name: str):
    """How users write the op: the Python operator where there is one (so the
    literal may come first, ``300 - t``), else its torch function."""
    d = OPS[name]
    return next((a for a in d.aliases if getattr(a, "__module__", "") in ("_operator", "operator")),
                d.eager)


def fixed_arity(fn, n: int):
    """``fn(*tensors)`` as a function of exactly ``n`` tensors (torch.fx cannot trace ``*args``)."""
    return (lambda a: fn(a)) if n == 1 else (lambda a, b: fn(a, b))


def outcome(fn, *args):
    """Eager's (or ours') result, or the type of the exception it raised."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 (any refusal counts: its type is compared)
        return type(e)


def assert_same(ours, ref, what: str):
    if isinstance(ref, type):
        assert isinstance(ours, type) and issubclass(ours, ref), f"{what}: eager raises {ref.__name__}, " \
            f"we give {ours if isinstance(ours, type) else ours.tolist()}"
        return
    assert not isinstance(ours, type), f"{what}: we raise {ours.__name__}, eager gives {ref.tolist()}"
    outs, refs = (ours, ref) if isinstance(ref, tuple) else ((ours,), (ref,))
    for o, r in zip(outs, refs):
        assert o.dtype == r.dtype, f"{what}: dtype {o.dtype} vs eager {r.dtype}"
        if r.is_floating_point():
            torch.testing.assert_close(o, r, equal_nan=True, msg=lambda m: f"{what}\n{m}")
        else:
            assert torch.equal(o, r), f"{what}: {o.tolist()} vs eager {r.tolist()}"


def operand_cases(name: str, dtype: torch.dtype):
    """(label, fn, tensors): the op with each non-condition operand in turn a literal,
    all literals that eager accepts in one function (one kernel), each refused one alone."""
    d = OPS[name]
    domains = d.operand_domains()
    x, cond = values(dtype), values(torch.bool).repeat(4)[:len(values(dtype))]
    call = spelling(name)
    tensors = [cond if dom == "bool" else x for dom in domains]
    for k, dom in enumerate(domains):
        if dom == "bool":
            continue
        rest = [t for j, t in enumerate(tensors) if j != k]

        def with_literal(lit, k=k, n=len(rest)):
            def fn(*ts):
                args = list(ts)
                args.insert(k, lit)
                return call(*args)
            return fixed_arity(fn, n)
        yield from _batched(f"{name} operand {k}", with_literal, rest, edges(dtype))


def _batched(label, make, tensors, literals):
    eager = {lit: outcome(make(lit), *tensors) for lit in literals}
    ok = [lit for lit in literals if not isinstance(eager[lit], type)]
    # TypeError: torch has no such overload (torch.maximum(x, 300)); fx cannot trace the call
    refused = [lit for lit in literals if lit not in ok and eager[lit] is not TypeError]

    def all_ok(*ts):
        return tuple(make(lit)(*ts) for lit in ok)
    if ok:
        yield f"{label} literals {ok}", fixed_arity(all_ok, len(tensors)), tensors
    for lit in refused:
        yield f"{label} literal {lit!r} (eager refuses it)", make(lit), tensors


def cases(name: str, dtype: torch.dtype):
    d = OPS[name]
    if name == "pow":  # the exponent is the literal
        yield from _batched("pow exponent", lambda e: lambda t: t ** e, [values(dtype)], edges(dtype))
    elif name == "cast":
        targets = SWEPT_DTYPES + (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        yield from _batched("cast to", lambda to: lambda t: t.to(to), [values(dtype)], targets)
    elif d.arity == 1:
        yield name, spelling(name), [values(dtype)]
    else:
        yield from operand_cases(name, dtype)


@pytest.mark.parametrize("dtype", SWEPT_DTYPES, ids=lambda t: SHORT[t])
@pytest.mark.parametrize("name", TABLE_OPS)
def test_literals_on_integer_tensors_match_eager(name, dtype):
    for label, fn, tensors in cases(name, dtype):
        ref = outcome(fn, *tensors)
        ours = outcome(fusion.compile(fn), *tensors)
        if isinstance(ours, type) and not isinstance(ref, type):  # show our error
            fusion.compile(fn)(*tensors)
        assert_same(ours, ref, f"{label} on {SHORT[dtype]}")


@pytest.mark.parametrize("dtype", SWEPT_DTYPES, ids=lambda t: SHORT[t])
def test_where_with_two_literals_takes_their_type(dtype):
    """torch.where(c, 300, -1) is int64 (float for float literals), whatever the
    condition came from, and a chain after it computes in that type."""
    x = values(dtype)
    for a, b in ((300, -1), (2**40, 0), (0.1, 0.2), (2.5, -7)):
        fn = lambda t, a=a, b=b: torch.where(t == 1, a, b) * 3 + 2**33  # noqa: E731
        assert_same(outcome(fusion.compile(fn), x), outcome(fn, x), f"where(.., {a}, {b})")


def test_the_issues_example():
    t = torch.tensor([1, 2], dtype=torch.uint8, device=DEVICE)
    out = fusion.compile(lambda t: t + 256)(t)
    assert out.dtype == torch.uint8 and out.tolist() == [1, 2]


@pytest.mark.parametrize("dtype", WIDE_UNSIGNED, ids=str)
def test_wide_unsigned_tensors_run_eagerly_like_torch(dtype):
    """uint16/32/64: what torch computes we compute (by running torch); what it
    refuses (no kernel for the type) raises the same error."""
    x = torch.tensor([0, 1, 7], dtype=dtype, device=DEVICE)
    for label, fn in (("mul", lambda t: t * 3), ("div", lambda t: t / 2), ("cast", lambda t: t.float() + 1),
                      ("add", lambda t: t + 1), ("lt", lambda t: t < 5), ("sigmoid", torch.sigmoid)):
        assert_same(outcome(fusion.compile(fn), x), outcome(fn, x), f"{label} on {dtype}")


def test_half_tensors_compare_with_the_literal_rounded_to_their_type():
    """Comparisons convert the literal to the tensor's type (h == 0.1 holds for
    h = fp16(0.1)); arithmetic keeps it in fp32 (h * 1e-8 is not 0)."""
    for dtype in (torch.float16, torch.bfloat16):
        h = torch.tensor([0.1, 1e-8, 65504.0, 3.0], dtype=dtype, device=DEVICE)
        for fn in (lambda h: h == 0.1, lambda h: h > 1e-8, lambda h: h < 65519.5, lambda h: h * 1e-8,
                   lambda h: torch.where(h > 1, h, 1e-8) * 1e8):
            assert_same(outcome(fusion.compile(fn), h), outcome(fn, h), f"{dtype}")
