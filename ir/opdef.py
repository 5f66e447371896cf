"""What an op is: its kind, and the declaration every op-table entry fills in.

This module is the bottom of ``ir``: it declares the ``OpDef`` record and the
registry ``OPS``, and imports nothing of ours. The entries themselves live in
``ir/ops_*.py`` (one file per family) and register here when ``ir`` is
imported (``ir/__init__.py`` imports ``ir.ops``, which imports them all), so
whoever holds a ``Graph`` finds the table filled.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from typing import Callable


class OpKind(str, Enum):
    """What fusion reads of an op (tinygrad's ``Ops`` groups, TVM's fusion kinds)."""
    POINTWISE = "pointwise"    # one output element from the same element of each operand
    REDUCTION = "reduction"    # a full sum/mean: may end the pointwise kernel computing its input
    SUM_TO = "sum_to"          # reduce a broadcast gradient to an input's shape: run by torch
    VIEW = "view"              # no data moves: torch makes the view, kernels read it by strides
    MATMUL = "matmul"          # may anchor a matmul-epilogue kernel (form says how)
    EXTERN = "extern"          # not in the table: run by eager torch, reported by explain
    ELEMENT = "element"        # one element of an extern's tuple result (topk, max(dim), LSTM)
    INPUT = "input"            # structural: a graph argument
    PARAM = "param"            # structural: a module parameter or buffer, read at every call

    def __str__(self) -> str:
        return self.value


# op kinds a generated pointwise kernel may contain (a reduction only as its last step)
FUSIBLE = frozenset({OpKind.POINTWISE, OpKind.REDUCTION})
STRUCTURAL = frozenset({OpKind.INPUT, OpKind.PARAM})


@dataclass(frozen=True)
class MatmulForm:
    """How a matmul op maps onto ``out = A @ B (+ bias)``, by operand index.

    ``b_transposed``: B is given as [N, K] (linear's weight); the kernel reads
    it through swapped strides, never a copy. ``bias`` is added in the
    epilogue, broadcast over the output like any pointwise operand.
    """
    a: int
    b: int
    bias: int | None = None
    b_transposed: bool = False


@dataclass(frozen=True)
class ValueCheck:
    """A check eager makes on an operand's values at run time, and the error it raises.

    The rule is a closed range: every element of operand ``operand`` must lie in
    [``lo``, ``hi``] (NaN never does, as in eager's ``x >= lo && x <= hi``).
    Spelled once, it is evaluated in generated kernels (``triton``: a flag the
    host reads after the launch) and by eager references (``fails``).
    """
    label: str       # the op as the user called it ("binary_cross_entropy")
    operand: int
    lo: float
    hi: float
    error: type      # the exception eager raises
    message: str     # what eager says ("all elements of target should be between 0 and 1")

    def raise_error(self):
        """Raise eager's exception type, naming the op and what was wrong."""
        raise self.error(f"fusion: {self.label}: {self.message}")

    def triton(self, x: str) -> str:
        """A Triton expression, true where an element of ``x`` fails the check."""
        lo, hi = (repr(v).replace("inf", 'float("inf")') for v in (self.lo, self.hi))
        return f"~(({x} >= {lo}) & ({x} <= {hi}))"

    def fails(self, x) -> bool:
        """Whether a tensor ``x`` holds an element that fails the check."""
        return not bool(((x >= self.lo) & (x <= self.hi)).all())


def checked(checks: tuple, eager: Callable) -> Callable:
    """``eager`` preceded by ``checks``: for an eager reference whose torch call does
    not make them itself (a rewritten form of the op the user called)."""
    @functools.wraps(eager)  # its signature: the tests count the operands
    def run(*operands, **attrs):
        for c in checks:
            if c.fails(operands[c.operand]):
                c.raise_error()
        return eager(*operands, **attrs)
    return run


@dataclass(frozen=True)
class OpDef:
    """Everything about one op, side by side.

    ``infer(op, inputs, attrs) -> (shape, dtype, device)`` types a node;
    ``eager(*inputs, **attrs)`` is torch's reference (the oracle and the CPU
    fallback); ``vjp(b, out, g, *xs, **attrs)`` returns one gradient per input
    (``None`` where it has none), built with ``b.call``; ``triton(args, attrs,
    compute_type)`` spells a pointwise op as a Triton expression (a ``tiered`` op
    also finds ``attrs["tier"]`` there, one of ``TIERS``).
    """
    name: str
    kind: OpKind
    infer: Callable | None
    eager: Callable | None
    vjp: Callable | None       # derivative rule; None only for non-differentiable ops
    triton: Callable | None = None   # (arg exprs, attrs, compute type) -> expression
    promotion: str = "common"  # how operands are typed before the expression
    aliases: tuple = ()        # torch callables / method names capture maps here
    parse: Callable | None = None   # (alias, args, kwargs) -> (inputs, attrs); None: positional only
    module_attrs: tuple = ()   # nn.Module aliases: attributes read from the module at capture and
                               # given to parse as keyword arguments (nn.LeakyReLU's negative_slope)
    domain: str | tuple = "real"    # sample inputs the tests draw, one for all operands or one
                                    # per operand: real, positive, nonzero, bool (see SAMPLE_DOMAINS)
    arity: int = 1             # tensor operands (pointwise and view ops); attrs come on top
    sample_attrs: Callable = lambda shape: ({},)   # input shape -> the attrs the tests try
    internal: bool = False     # no torch spelling maps to it: made only by derivative rules,
                               # DECOMPOSITIONS or passes (the tests then need no aliases)
    differentiable: bool = True
    combine: Callable | None = None  # full reductions: (per-program partial sums, n) -> result
    tiered: bool = False       # its Triton expression takes the precision tier, attrs["tier"]
                               # (TIERS); under precision="exact" its fp32 results are computed
                               # in fp64 and rounded once
    form: MatmulForm | None = None  # matmul ops: which operand is A, B and the bias
    live_values: int = 1       # tile-sized temporaries its Triton expression keeps live at once:
                               # what a matmul epilogue adds to register pressure (helpers: 3)
    triton_reference: Callable | None = None  # the tutorial spelling (tl.sigmoid, tl.exp): fast,
                               # not tail-accurate; only the cost baseline (codegen's reference
                               # kernels, compiled beside ours and never run); None: ``triton``
    checks: tuple = ()         # ValueChecks eager makes on the operands' values (bce's ranges)

    def operand_domains(self) -> tuple:
        """The sample domain of each tensor operand."""
        return self.domain if isinstance(self.domain, tuple) else (self.domain,) * self.arity


# what each sample domain means, for the tests that draw inputs from the table
SAMPLE_DOMAINS = {
    "real": "any finite value (normal draws, plus exact 0, ±0.5, ±1, 2 for ties and kinks)",
    "positive": "values in [0.5, 2]: log, fractional powers",
    "nonzero": "values with |x| in [0.5, 2]: divisors",
    "probability": "values in [0.05, 0.95]: probabilities and targets",
    "bool": "True/False",
}


# The precision tiers of the numerics policy (docs/NUMERICS.md): what a tiered op's helper
# computes, chosen by the emitter from the node's dtype. "half": fp16/bf16 results, fp32
# forms whose error is far below their ulp; "fp32": fp32 forms within a few fp32 ulp and no
# fp64 instruction; "fp64": libdevice-quality double math.
TIERS = ("half", "fp32", "fp64")

OPS: dict[str, OpDef] = {}
# capture spellings that expand to several table ops: alias -> fn(builder, target, args, kwargs)
DECOMPOSITIONS: dict = {}


def op(name: str, kind: OpKind, infer, eager, vjp, **kw) -> OpDef:
    """Declare an op: its entry in the one table, ``OPS[name]``."""
    d = OpDef(name, kind, infer, eager, vjp, **kw)
    OPS[name] = d
    return d
