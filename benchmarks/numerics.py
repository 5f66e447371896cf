"""Numerics: ulp error of sigmoid, silu, tanh and x*sigmoid(g) against the true value; writes docs/NUMERICS.md.

Ours (``fusion.compile``: generated kernels; on a CPU they run in Triton's interpreter) and
eager PyTorch side by side, forward and backward, fp32, fp16, bf16 and fp64, over ranges of
x. Each input is a value of the target dtype (fp32: 2^19 evenly spaced plus 2^19 random
points per range; fp16/bf16: every value in it; fp64: 2^11 + 2^11); the truth is computed
in float64 from that same input (with mpmath at 100 bits for fp64). On a CPU, ``ours, GPU
bounds`` reruns our kernels under codegen.triton_compat.gpu_math: the GPU's approximations at
the edge of their documented error, both directions, the worse result kept. How the error is
counted, and the goals: numerics_doc.py, which writes the document and the plot.

    python benchmarks/numerics.py                           # CPU: docs/NUMERICS.md, docs/numerics.png
    python benchmarks/numerics.py --points 65536            # a quick check: fewer fp32 points per range
    python benchmarks/numerics.py --device cuda --out DIR   # GPU: DIR/NUMERICS-cuda.md, numerics-cuda.png

The full CPU run takes 1.5 minutes on two cores, 3.5 with fusion's kernel cache cold (then
compiling is most of it, whatever --points says).
"""
import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy
DEVICE = "cuda" if {"cuda", "--device=cuda"} & set(sys.argv[1:]) else "cpu"  # argparse checks it in main()
os.environ["TRITON_INTERPRET"] = "1" if DEVICE == "cpu" else "0"  # before triton is imported
os.environ["FUSION_BENCH_DEVICE"] = DEVICE

import mpmath
import torch
import torch.nn.functional as F

from codegen.triton_compat import gpu_math

from common import DTYPES, environment, fusion
from numerics_doc import plot, write_doc

DTYPES = {**DTYPES, "fp64": torch.float64}
PRECISION = {"fp32": 24, "fp16": 11, "bf16": 8, "fp64": 53}  # bits of the significand, p
RANGES = {"[-20, 20]": (-20, 20), "[-87, 87]": (-87, 87), "[-90, 90]": (-90, 90),
          "tail [-90, -20]": (-90, -20), "tail [20, 90]": (20, 90)}
FP64_POINTS = 2**12  # per range: each truth is an mpmath evaluation
OPS = {"sigmoid": lambda x: torch.sigmoid(x), "silu": lambda x: F.silu(x),  # fx cannot trace a builtin
       "tanh": lambda x: torch.tanh(x), "x*sigmoid(g)": lambda x, g: x * torch.sigmoid(g)}
PASSES = {"sigmoid": ["fwd", "bwd dx"], "silu": ["fwd", "bwd dx"], "tanh": ["fwd", "bwd dx"],
          "x*sigmoid(g)": ["fwd", "bwd dx", "bwd dg"]}
PLOTTED = {"fp32", "bf16"}, {"sigmoid", "silu"}  # the plot's dtypes and ops: only their results are kept


def sigmoid64(x):
    """float64 σ(x) and σ'(x), sign-split (z = e^-|x|) so that both tails are accurate."""
    z = torch.exp(-x.abs())
    return torch.where(x >= 0, 1 / (1 + z), z / (1 + z)), z / (1 + z) ** 2


def truth(op: str, *inputs) -> list:
    """The forward, then each input's gradient, in float64 (relative error ~1e-16)."""
    if op == "tanh":  # tanh'(x) = 4σ'(2x): exact in the tails, where 1 - tanh² is not
        return [torch.tanh(inputs[0]), 4 * sigmoid64(2 * inputs[0])[1]]
    s, ds = sigmoid64(inputs[-1])
    x = inputs[0]
    return {"sigmoid": [s, ds], "silu": [x * s, s + x * ds], "x*sigmoid(g)": [x * s, s, x * ds]}[op]


def exact(op: str, *inputs) -> list:
    """``truth`` with mpmath at 100 bits, rounded to float64: the truth for fp64 inputs."""
    def one(*vs):
        x, g = (mpmath.mpf(v) for v in (vs[0], vs[-1]))
        s = 1 / (1 + mpmath.exp(-g))
        ds = s * (1 - s) if g < 0 else s / (1 + mpmath.exp(g))  # no cancellation in either tail
        return {"sigmoid": [s, ds], "silu": [x * s, s + x * ds], "x*sigmoid(g)": [x * s, s, x * ds],
                "tanh": [mpmath.tanh(x), 1 / mpmath.cosh(x) ** 2]}[op]
    with mpmath.workprec(100):
        rows = [one(*vs) for vs in zip(*(t.tolist() for t in inputs))]
    return [torch.tensor([float(v) for v in column], dtype=torch.float64) for column in zip(*rows)]


def grid(dtype, lo: float, hi: float, n: int, gen):
    """Inputs in [lo, hi] that are values of ``dtype`` (every one for 16-bit types), as float64."""
    if dtype.itemsize == 2:
        vals = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype).double()
        return vals[torch.isfinite(vals) & (vals >= lo) & (vals <= hi)].unique()
    rnd = torch.rand(n // 2, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    return torch.cat([torch.linspace(lo, hi, n // 2, dtype=torch.float64), rnd]).to(dtype).double()


def stats(y, t, x, dname: str, scale=None) -> dict:
    """ulp error of y against the truth t where t (or ``scale``) is a normal number of the format:
    max, mean, against t correctly rounded (cr), and the x of the largest error. ``scale``: count
    in ulps of it instead of t (silu' beside its zero)."""
    info, p = torch.finfo(DTYPES[dname]), PRECISION[dname]
    ref = t if scale is None else scale
    ok = (ref.abs() >= info.tiny) & (ref.abs() <= info.max)
    if not ok.any():
        return {"n": 0}
    y, t, ref, x = y.double()[ok], t[ok], ref[ok], x[ok]
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs())) - (p - 1))
    err = ((y - t).abs() / ulp).nan_to_num(nan=math.inf)
    err_cr = ((y - torch.round(t / ulp) * ulp).abs() / ulp).nan_to_num(nan=math.inf)  # exact in float64
    return {"n": int(ok.sum()), "max": float(err.max()), "mean": float(err[err.isfinite()].mean()),
            "max vs cr": float(err_cr.max()), "% cr": 100 * float((err_cr == 0).double().mean()),
            "worst x": float(x[err.argmax()])}


def worse(runs: list, t):
    """Per point, the run farther from the truth t (NaN the farthest)."""
    out = runs[0]
    for r in runs[1:]:
        far, now = ((v.double() - t).abs().nan_to_num(nan=math.inf) for v in (r, out))
        out = torch.where(far > now, r, out)
    return out


def measure(op: str, dname: str, gen, points: int) -> tuple[dict, dict]:
    """{(pass, range): {provider: stats}}, and each provider's results (with the inputs and the
    truths) where the plot or the interpreter facts need them.

    On a CPU also ``ours, GPU bounds`` (under gpu_math in both directions, the worse result kept)
    and, for bf16, ``ours, RNE store``: the kernels on fp32 inputs, rounded to nearest even here,
    as the GPU's store does (the interpreter's own conversion is what the caveats measure)."""
    dtype = DTYPES[dname]
    xs = [grid(dtype, lo, hi, FP64_POINTS if dname == "fp64" else points, gen) for lo, hi in RANGES.values()]
    main = torch.cat(xs)
    inputs = [main] if op != "x*sigmoid(g)" else [  # the range is g's; x uniform in [-4, 4]
        (torch.rand(len(main), generator=gen, dtype=torch.float64) * 8 - 4).to(dtype).double(), main]
    truths = exact(op, *inputs) if dname == "fp64" else truth(op, *inputs)
    plain = [contextlib.nullcontext]
    providers = {"ours": (fusion.compile(OPS[op]), dtype, plain), "eager": (OPS[op], dtype, plain)}
    if DEVICE == "cpu" and dname == "bf16":
        providers["ours, RNE store"] = (fusion.compile(OPS[op]), torch.float32, plain)
    if DEVICE == "cpu":
        providers["ours, GPU bounds"] = (fusion.compile(OPS[op]), dtype, [lambda: gpu_math(1), lambda: gpu_math(-1)])
    results = {}
    for name, (f, compute, contexts) in providers.items():
        runs = []
        for context in contexts:
            ins = [t.to(device=DEVICE, dtype=compute).requires_grad_() for t in inputs]
            with context():
                y = f(*ins)
                runs.append([r.detach().to(dtype).cpu() for r in [y, *torch.autograd.grad(y, ins, torch.ones_like(y))]])
        results[name] = [worse(list(rs), t) for rs, t in zip(zip(*runs), truths)]
    rows, end = {}, 0
    for label, x in zip(RANGES, xs):
        part = slice(end, end + len(x))
        end += len(x)
        for k, (pname, t) in enumerate(zip(PASSES[op], truths)):
            scales = {pname: None}
            if op == "silu" and k:  # silu': in ulps of the largest of it and the terms that cancel at x0
                s, ds = sigmoid64(x)
                scales[f"{pname} in ulp(terms)"] = torch.maximum(torch.maximum(t[part].abs(), s), (x * ds).abs())
            for row, scale in scales.items():
                rows[(row, label)] = {name: stats(res[k][part], t[part], x, dname, scale) for name, res in results.items()}
    keep = (dname in PLOTTED[0] and op in PLOTTED[1]) or dname == "bf16"
    return rows, ({"x": main, "truths": truths, **results} if keep else {})


def one_argument(fn):
    return lambda x: fn(x)  # a plain closure: fx traces no builtin, nor a lambda's default argument


def tails() -> list:
    """fp32 values where eager's result is 0 or NaN though the true value is not, or is the limit
    at an infinity: [what, x, true, eager, ours, ours' error in ulps of the true value]."""
    inf = math.inf

    def bce(target):
        return lambda z: F.binary_cross_entropy_with_logits(z, torch.full_like(z, target), reduction="none")
    points = [("sigmoid'(x)", torch.sigmoid, 1, [17.0, 20.0, 50.0, 80.0]),
              ("tanh'(x)", torch.tanh, 1, [9.0, 10.0, 20.0, 40.0]),
              ("sigmoid(x)", torch.sigmoid, 0, [-88.0, -95.0, -100.0, -103.0]),
              ("silu(x)", F.silu, 0, [-90.0, -inf]), ("silu'(x)", F.silu, 1, [inf, -inf]),
              ("bce_logits(z, 1)", bce(1.0), 0, [inf]), ("bce_logits(z, 0)", bce(0.0), 0, [-inf])]
    limits = {("silu(x)", -inf): 0.0, ("silu'(x)", inf): 1.0, ("silu'(x)", -inf): 0.0,
              ("bce_logits(z, 1)", inf): 0.0, ("bce_logits(z, 0)", -inf): 0.0}

    def true(what, v):
        if (what, v) in limits:
            return limits[(what, v)]
        with mpmath.workprec(100):
            x = mpmath.mpf(v)
            s = 1 / (1 + mpmath.exp(-x))
            return float({"sigmoid'(x)": s / (1 + mpmath.exp(x)), "tanh'(x)": 1 / mpmath.cosh(x) ** 2,
                          "sigmoid(x)": s, "silu(x)": x * s}[what])
    rows = []
    for what, fn, k, xs in points:
        results = []
        for f in (fn, fusion.compile(one_argument(fn))):
            leaf = torch.tensor(xs, device=DEVICE, requires_grad=True)
            y = f(leaf)
            results.append((y if k == 0 else torch.autograd.grad(y, leaf, torch.ones_like(y))[0]).detach().cpu())
        for i, v in enumerate(xs):
            t = true(what, v)
            eager, ours = (float(r[i]) for r in results)
            ulp = 2.0 ** (math.floor(math.log2(max(abs(t), 2.0**-126))) - 23) if t else 2.0**-149
            rows.append([what, v, t, eager, ours, abs(ours - t) / ulp if math.isfinite(ours) else inf])
    return rows


def interpreter_facts(bf16: dict) -> dict:
    """Measured here: what the (patched) interpreter's fp32 -> bf16 store gives, NumPy's float32
    exp, and how often our bf16 results equal the RNE-store emulation (``bf16``: op -> results)."""
    import numpy as np
    import triton
    import triton.language as tl

    from codegen.triton_compat import patch_interpreter
    patch_interpreter()  # as fusion's launches do

    @triton.jit
    def store(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

    x = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    y = torch.empty(4096, dtype=torch.bfloat16)
    store[(1,)](x, y, 4096, BLOCK=4096)
    truncated = (x.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
    a = np.linspace(-87, 87, 2**20, dtype=np.float32)
    exp = np.exp(a.astype(np.float64))
    sub = torch.tensor([1.3775e-39] * 16, dtype=torch.float32)
    y_sub = torch.empty(16, dtype=torch.bfloat16)
    store[(1,)](sub, y_sub, 16, BLOCK=16)
    tiny, same = torch.finfo(torch.bfloat16).tiny, []
    for results in bf16.values():  # normal results only: bf16 subnormals are the caveat above
        for ours, rne in zip(results["ours"], results["ours, RNE store"]):
            normal = rne.abs() >= tiny
            same.append(float((ours[normal] == rne[normal]).float().mean()))
    return {"store_rne": 100 * float((y == x.to(torch.bfloat16)).float().mean()),
            "store_truncates": 100 * float((y == truncated).float().mean()),
            "numpy_exp_max_ulp": float((np.abs(np.exp(a) - exp) / np.exp2(np.floor(np.log2(exp)) - 23)).max()),
            "subnormal_example": (float(sub[0]), float(y_sub[0]), float(sub[0].to(torch.bfloat16))),
            "ours_equals_rne": 100 * min(same)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", help="folder (default docs/ on a CPU; needed with --device cuda)")
    p.add_argument("--points", type=int, default=2**20, help="fp32 points per range (default 2^20)")
    args = p.parse_args()
    if DEVICE == "cuda" and not args.out:
        p.error("--device cuda needs --out (docs/ holds the CPU run)")
    out = Path(args.out or Path(__file__).resolve().parents[1] / "docs")
    out.mkdir(parents=True, exist_ok=True)
    start, gen = time.perf_counter(), torch.Generator().manual_seed(0)
    rows, kept, providers = {}, {}, {}
    for dname in PRECISION:
        rows[dname] = {}
        for op in OPS:
            rows[dname][op], kept[(dname, op)] = measure(op, dname, gen, args.points)
            print(f"  {dname} {op}: {time.perf_counter() - start:.0f} s", flush=True)
        providers[dname] = list(next(iter(rows[dname]["sigmoid"].values())))  # the columns, in order
    facts = {"tails": tails(), "gpu_identical": []}
    if DEVICE == "cpu":
        facts.update(interpreter_facts({op: kept[("bf16", op)] for op in OPS}))
        for dname, names in providers.items():  # a column that repeats ours' is left out, and said so
            if all(r["ours"].get("max") == r["ours, GPU bounds"].get("max")
                   for per_op in rows[dname].values() for r in per_op.values()):
                facts["gpu_identical"].append(dname)
                names.remove("ours, GPU bounds")
    suffix = "" if DEVICE == "cpu" else f"-{DEVICE}"
    doc = out / f"NUMERICS{suffix}.md"
    misses, model_misses = write_doc(doc, rows, providers, facts, environment(), DEVICE,
                                   f"numerics{suffix}.png", args.points)
    print(plot(out / f"numerics{suffix}.png", kept, PRECISION))
    print(f"wrote {doc} in {time.perf_counter() - start:.0f} s\ngoals missed by ours: " + ("; ".join(misses) or "none")
          + "\nunder the GPU bounds: " + ("; ".join(model_misses) or "none"))


if __name__ == "__main__":
    main()
