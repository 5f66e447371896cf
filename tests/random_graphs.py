"""Random programs from the op table, run compiled and eager, compared.

A program is a list of steps over a growing list of values; every step is an
op-table entry's eager callable, so fx captures exactly the torch spellings
the table maps. Programs mix pointwise chains with fan-out, broadcasting,
views (unsqueeze, expand, narrow, transpose), comparisons feeding ``where``,
casts, Python scalars and matmuls whose results feed the chain; inputs are
non-contiguous at random; values include the extremes (±88.7, ±1e4, ±inf,
NaN, zeros, denormals).

Used by tests/test_random_graphs.py (hypothesis: bounded, shrinking) and by
tools/fuzz_graphs.py (any number of seeded programs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from graph_judge import RTOL, accurate_grads, compare, witness

import fusion
from ir.ops import OPS, OpKind

from helpers import LIMITS, eager_with_limits

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
EXTREMES = (88.7, -88.7, 89.0, -89.0, 1e4, -1e4, math.inf, -math.inf, math.nan, 0.0, -0.0, 17.0, -17.0)
SIZES = (1, 3, 5, 7, 13, 16)
UNARY = [n for n, d in OPS.items() if d.kind == OpKind.POINTWISE and not d.internal and d.arity == 1
         and d.operand_domains()[0] != "bool" and not d.sample_attrs(()) == ()]
BINARY = [n for n, d in OPS.items() if d.kind == OpKind.POINTWISE and not d.internal and d.arity == 2
          and d.differentiable and "probability" not in d.operand_domains()]
TENSORS_ONLY = ("maximum", "minimum")  # torch refuses Python scalars there
COMPARE = [n for n, d in OPS.items() if d.kind == OpKind.POINTWISE and d.arity == 2 and not d.differentiable]

# the judge (tolerances, references) is tests/graph_judge.py


@dataclass
class Program:
    """Values in creation order: inputs ("input", shape, layout) of one dtype and
    steps ("step", op, refs, attrs), a ref being a value index or ("const", v)."""
    dtype: torch.dtype
    shape: tuple
    values: list = field(default_factory=list)
    outputs: list = field(default_factory=list)    # value indices returned
    grads: list = field(default_factory=list)      # input numbers (0, 1, ...) that require grad
    extremes: float = 0.0                          # fraction of extreme values

    @property
    def tol_dtype(self) -> torch.dtype:
        """The least precise float type the program computes in (casts included)."""
        casts = [v[3]["dtype"] for v in self.values if v[0] == "step" and v[1] == "cast"]
        return max([self.dtype] + casts, key=lambda d: RTOL[d])

    @property
    def inputs(self) -> list:
        return [(v[1], v[2]) for v in self.values if v[0] == "input"]

    def describe(self) -> str:
        lines = [f"dtype={self.dtype} shape={self.shape} grads={self.grads} extremes={self.extremes}"]
        n = 0
        for k, v in enumerate(self.values):
            if v[0] == "input":
                lines.append(f"  v{k} = input {n}: {list(v[1])} {v[2]}")
                n += 1
            else:
                _, op, refs, attrs = v
                args = [f"v{r}" if isinstance(r, int) else repr(r[1]) for r in refs]
                args += [f"{a}={x}" for a, x in attrs.items()]
                lines.append(f"  v{k} = {op}({', '.join(args)})")
        lines.append(f"  return {', '.join(f'v{o}' for o in self.outputs)}")
        return "\n".join(lines)


def generate(choose, n_steps: int) -> Program:
    """Build a program; ``choose(name, options)`` picks one option (hypothesis or random)."""
    dtype = choose("dtype", DTYPES)
    rank = choose("rank", (1, 2, 2, 3))
    shape = tuple(choose(f"size{d}", SIZES) for d in range(rank))
    prog = Program(dtype, shape, extremes=choose("extremes", (0.0, 0.0, 0.1, 0.3)))
    shapes: list[tuple] = []     # shape of every value so far
    kinds: list[str] = []        # "float" or "bool"

    def new_input(in_shape, layout="contiguous", kind="float"):
        prog.values.append(("input", in_shape, layout))
        shapes.append(in_shape)
        kinds.append(kind)  # "operand": a matmul or narrow source, not for broadcasting ops
        return len(shapes) - 1

    def broadcast_variant():
        # the full shape, or with some dimensions 1 or dropped: all broadcast to ``shape``
        drop = choose("drop", (0, 0, 0, 1)) if rank > 1 else 0
        return tuple(1 if choose(f"one{d}", (False, False, True)) else s
                     for d, s in enumerate(shape))[drop:]

    for _ in range(choose("n_inputs", (1, 2, 3))):
        new_input(broadcast_variant(), choose("layout", ("contiguous", "contiguous", "transposed", "sliced")))

    def add_step(op, refs, attrs, out_shape, kind="float"):
        prog.values.append(("step", op, refs, attrs))
        shapes.append(out_shape)
        kinds.append(kind)
        return len(shapes) - 1

    def pick_value(kind="float"):
        return choose("operand", [i for i, k in enumerate(kinds) if k == kind][-4:])

    for _ in range(n_steps):
        what = choose("step", ("unary", "unary", "binary", "binary", "scalar", "where", "view", "matmul", "cast"))
        if what == "unary":
            op = choose("unary", UNARY)
            attrs = choose("attrs", OPS[op].sample_attrs(shape)) if OPS[op].sample_attrs(shape) else {}
            if op == "cast":
                continue
            x = pick_value()
            add_step(op, [x], attrs, shapes[x])
        elif what in ("binary", "scalar"):
            op = choose("binary", [b for b in BINARY if what == "binary" or b not in TENSORS_ONLY])
            x = pick_value()
            y = ("const", choose("const", (2.0, -0.5, 3, 0.0))) if what == "scalar" else pick_value()
            if op == "div" and isinstance(y, tuple) and y[1] == 0.0:
                y = ("const", 2.0)
            out = _broadcast(shapes[x], shapes[y] if isinstance(y, int) else ())
            add_step(op, [y, x] if choose("swap", (False, True)) and isinstance(y, int) else [x, y], {}, out)
        elif what == "where":
            a, b = pick_value(), pick_value()
            cond = add_step(choose("compare", COMPARE), [a, b], {}, _broadcast(shapes[a], shapes[b]), "bool")
            x, y = pick_value(), ("const", 0.0) if choose("where_const", (False, True)) else pick_value()
            out = _broadcast(shapes[cond], shapes[x], shapes[y] if isinstance(y, int) else ())
            add_step("where", [cond, x, y], {}, out)
        elif what == "cast":
            x = pick_value()
            other = choose("cast_to", [d for d in DTYPES if d != dtype])
            y = add_step("cast", [x], {"dtype": other}, shapes[x])
            add_step("cast", [y], {"dtype": dtype}, shapes[x])
        elif what == "view":
            view = choose("view", ("unsqueeze", "expand", "narrow", "transpose"))
            x = pick_value()
            if view == "unsqueeze":
                add_step("unsqueeze", [x], {"dim": 0}, (1,) + shapes[x])
            elif view == "expand":
                add_step("expand", [x], {"shape": _broadcast(shapes[x], shape)}, _broadcast(shapes[x], shape))
            elif view == "narrow" and shapes[x] and shapes[x][-1] == shape[-1]:
                wide = new_input(shapes[x][:-1] + (shapes[x][-1] + 3,), kind="operand")
                add_step("narrow", [wide], {"dim": -1, "start": 2, "length": shape[-1]}, shapes[x])
            elif view == "transpose" and len(shapes[x]) >= 2 and shapes[x][-1] == shapes[x][-2]:
                add_step("transpose", [x], {"dim0": -1, "dim1": -2}, shapes[x])
        elif what == "matmul" and rank >= 2:
            k = choose("k", (1, 4, 9))
            a = new_input(shape[:-1] + (k,), kind="operand")
            b = new_input(shape[:-2] + (shape[-1], k), kind="operand")  # used as b.T: strided
            bt = add_step("transpose", [b], {"dim0": -1, "dim1": -2}, shape[:-2] + (k, shape[-1]),
                          kind="operand")
            add_step("matmul", [a, bt], {}, shape)
    outs = [i for i, k in enumerate(kinds) if k == "float"][-2:]
    prog.outputs = outs
    prog.grads = [i for i in range(len(prog.inputs)) if choose(f"grad{i}", (True, False))]
    return prog


def _broadcast(*shapes):
    return tuple(torch.broadcast_shapes(*shapes))


def make_fn(prog: Program, limits: bool = False):
    """The program as a plain Python function of its input tensors (fixed arity:
    torch.fx cannot trace ``*args``). ``limits``: ops whose eager formula gives NaN at ±inf
    where the function has a limit return the limit (``helpers.LIMITS``): the float64 oracle."""
    ops = {op: eager_with_limits(op) if limits and op in LIMITS else OPS[op].eager for op in OPS}

    def run(*xs):
        vals, inputs = [], iter(xs)
        for v in prog.values:
            if v[0] == "input":
                vals.append(next(inputs))
            else:
                _, op, refs, attrs = v
                args = [vals[r] if isinstance(r, int) else r[1] for r in refs]
                vals.append(ops[op](*args, **attrs))
        return tuple(vals[i] for i in prog.outputs)
    names = ", ".join(f"x{i}" for i in range(len(prog.inputs)))
    scope = {"run": run}
    exec(f"def program({names}):\n    return run({names})\n", scope)
    return scope["program"]


def make_inputs(prog: Program, gen: torch.Generator, dtype=None):
    dtype = dtype or prog.dtype
    xs = []
    for shape, layout in prog.inputs:
        full = shape if layout == "contiguous" or not shape else (
            shape[:-1] + (2 * shape[-1],) if layout == "sliced" else tuple(reversed(shape)))
        x = torch.randn(full, generator=gen, dtype=torch.float64)
        if prog.extremes:
            pool = torch.tensor(EXTREMES + (1e-40, -1e-40), dtype=torch.float64)
            pick = torch.randint(len(pool), full, generator=gen)
            x = torch.where(torch.rand(full, generator=gen) < prog.extremes, pool[pick], x)
        x = x.to(prog.dtype)  # the program's own rounding, identical for every run
        if layout == "sliced" and shape:
            x = x[..., ::2]
        elif layout == "transposed" and shape:
            x = x.permute(*reversed(range(len(shape))))
        xs.append(x.to(dtype))
    return xs


def check(prog: Program, seed: int = 0) -> tuple[int, str]:
    """Compile and compare forward and backward with eager. Returns (kernels, problem or "")."""
    fn = make_fn(prog)
    compiled = fusion.compile(fn)
    ours_in = make_inputs(prog, torch.Generator().manual_seed(seed))
    ref_in = make_inputs(prog, torch.Generator().manual_seed(seed))
    wide_in = make_inputs(prog, torch.Generator().manual_seed(seed), torch.float64)
    for i in prog.grads:
        for xs in (ours_in, ref_in, wide_in):
            xs[i].requires_grad_()
    ours, ref, wide = compiled(*ours_in), fn(*ref_in), make_fn(prog, limits=True)(*wide_in)
    eps = torch.finfo(prog.tol_dtype).eps
    wit = witness(steps(prog), _input_values(prog), wide_in, eps)
    # the same with every value and gradient its dtype cannot hold made ±inf: an answer too
    in_range = witness(steps(prog), _input_values(prog), wide_in, eps, ranges=value_ranges(prog))
    for k, (o, r, w) in enumerate(zip(ours, ref, wide)):
        if o.dtype != r.dtype or o.shape != r.shape:
            return 0, f"output {k}: {o.dtype}{list(o.shape)} vs eager {r.dtype}{list(r.shape)}"
        v = prog.outputs[k]
        problem = compare(o, r, w, prog.tol_dtype, accurate=wit.values[v], magnitude=wit.magnitude[v],
                          unjudged=wit.ambiguous[v], alternative=in_range.values[v])
        if problem:
            return 0, f"output {k}: {problem}"
    kernels = sum(len(k.variants) for p in compiled.plans for k in p.kernels.values())
    diff = [(o, r, w) for o, r, w in zip(ours, ref, wide) if o.requires_grad]
    if diff and prog.grads:
        weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
                   for o, _, _ in diff]
        grads = []
        for outs, xs in ((tuple(d[0] for d in diff), ours_in), (tuple(d[1] for d in diff), ref_in),
                         (tuple(d[2] for d in diff), wide_in)):
            leaves = [xs[i] for i in prog.grads]
            grads.append(torch.autograd.grad(outs, leaves, [w.to(o.dtype) for w, o in zip(weights, outs)],
                                             allow_unused=True))
        outputs = [k for k, o in zip(prog.outputs, ours) if o.requires_grad]
        wanted = [_input_values(prog)[i] for i in prog.grads]
        seeds = dict(zip(outputs, weights))
        accurate = accurate_grads(steps(prog), wit, seeds, wanted)
        passing = accurate_grads(steps(prog), wit, seeds, wanted, nan_passes=True)
        poisoned = accurate_grads(steps(prog), wit, seeds, wanted, poison=True)
        overflowing = accurate_grads(steps(prog), in_range, seeds, wanted, ranges=value_ranges(prog))
        for i, (o, r, w), (a, m), (a2, _), (p, _), (a3, _) in zip(prog.grads, zip(*grads), accurate, passing,
                                                                 poisoned, overflowing):
            if (o is None) != (r is None):
                return kernels, f"grad of input {i}: None vs {r is None}"
            if o is not None:
                unjudged = None if a is None else torch.isnan(p) & ~torch.isnan(a)
                problem = compare(o, r, w, prog.tol_dtype, grad=True, accurate=a, magnitude=m,
                                  unjudged=unjudged, alternative=(a2, a3))
                if problem:
                    return kernels, f"grad of input {i}: {problem}"
    return kernels, ""


def steps(prog: Program) -> dict:
    """value index -> (eager callable, refs, attrs) for the program's steps, as the judge's
    float64 witness runs them: a cast rounds the value as the program says, and the value
    stays float64, and the gradient passes through it unrounded (rounding a gradient to
    fp16 is eager's per-op rounding, not the program's); gelu without eager's cancellation,
    sigmoid, tanh, expm1 and silu with their derivatives' tails, gelu and silu with their
    limits at ±inf."""
    return {k: (_CAREFUL.get(v[1]) or OPS[v[1]].eager, v[2], v[3])
            for k, v in enumerate(prog.values) if v[0] == "step"}


def value_ranges(prog: Program) -> dict:
    """value index -> that value's dtype, for float values (the program run on meta
    tensors: dtypes only): the ranges values and gradients are held in."""
    vals, ranges = [], {}
    for k, v in enumerate(prog.values):
        if v[0] == "input":
            vals.append(torch.empty(v[1], dtype=prog.dtype, device="meta"))
        else:
            _, op, refs, attrs = v
            vals.append(OPS[op].eager(*[vals[r] if isinstance(r, int) else r[1] for r in refs], **attrs))
        if vals[-1].is_floating_point():
            ranges[k] = vals[-1].dtype
    return ranges


def _rounding_cast(x, dtype):
    """x rounded to ``dtype`` and kept in x's dtype, its gradient passed on unrounded; ±inf
    stays itself (inf + (inf - inf) would be NaN: fuzzer seed 332345)."""
    error = x.to(dtype).to(x.dtype) - x
    return x + torch.where(torch.isinf(x), 0.0, error).detach()


def _careful_gelu(x, approximate="none"):
    """gelu in float64 as x·σ(2u) (tanh form) and x/2·erfc(-x/√2): eager's 1 + tanh(u) and
    1 + erf(z) lose every digit for x << 0 (gelu_tanh(-7) is off by 3e-3 in float64;
    fuzzer seed 303153); its limits at ±inf (``_at_infinity``)."""
    def finite(x):
        if approximate == "tanh":
            return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))
        return 0.5 * x * torch.special.erfc(-x / math.sqrt(2))
    return _at_infinity(finite, x)


def _careful_silu(x):
    """silu = x·σ(x) with σ's tails (``_careful_sigmoid``) and its limits at ±inf."""
    return _at_infinity(lambda x: x * _careful_sigmoid(x), x)


def _at_infinity(finite, x):
    """``finite(x)`` where x is finite; at ±inf the limits of x·Φ(x)-like functions: x itself
    (derivative 1) at +inf and -0 (derivative 0) at -inf, where the formula gives -inf · 0 =
    NaN. The formula runs on x with its infinities replaced, so that no NaN derivative leaks
    through ``where`` (a value made inf by its dtype's range meets silu or gelu next:
    fuzzer seed 363097)."""
    infinite = torch.isinf(x)
    limit = torch.where(x > 0, x, torch.full_like(x, -0.0))
    return torch.where(infinite, limit, finite(torch.where(infinite, 0.0, x)))


def _careful_sigmoid(x):
    """σ(x) = exp(-softplus(-x)), whose derivative autograd takes from x: σ(x)σ(-x), not
    eager's σ(1 - σ), which is 0 in float64 from x = 37 (fuzzer seed 310574: ∞ · σ'(89) is
    ∞, not NaN)."""
    return torch.exp(-torch.nn.functional.softplus(-x))


def _careful_tanh(x):
    """tanh, its derivative in the tails 4σ'(2x) (eager's 1 - tanh² is 0 from |x| = 19)."""
    return torch.where(x.abs() < 1, torch.tanh(x), 2 * _careful_sigmoid(2 * x) - 1)


def _careful_expm1(x):
    """expm1, its derivative exp(x) in the left tail (eager's is out + 1, which is 0 in float64
    from x = -38: fuzzer seed 361700, inf · expm1'(-89), NaN in eager, inf in ours)."""
    return torch.where(x < -1, torch.exp(x) - 1, torch.expm1(x))


_CAREFUL = {"cast": _rounding_cast, "gelu": _careful_gelu, "sigmoid": _careful_sigmoid, "tanh": _careful_tanh,
            "expm1": _careful_expm1, "silu": _careful_silu}


def _input_values(prog: Program) -> list:
    """The value index of each program input, in input order."""
    return [k for k, v in enumerate(prog.values) if v[0] == "input"]
