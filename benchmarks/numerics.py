"""Numerics report: ulp error of sigmoid, silu, tanh and x*sigmoid(g) against float64; writes docs/NUMERICS.md.

Ours (``fusion.compile``: generated kernels; on a CPU they run in Triton's
interpreter) and eager PyTorch side by side, forward and backward, fp32, fp16
bf16 and fp64, over ranges of the input. Each input is a value of the target dtype
(fp32: 2^19 evenly spaced plus 2^19 random points per range; fp16/bf16: every
representable value in the range; fp64: 2^11 + 2^11); the true result is computed in
float64 from that same input (with mpmath at 100 bits for fp64). On a CPU, ``ours, GPU
bounds`` reruns our kernels under codegen.triton_compat.gpu_math (the GPU's
approximations at the edge of their documented error, both directions, the worse kept).
The error of a result y against the true value t is

    ulp error = |y - t| / ulp(t),  ulp(t) = 2^(floor(log2 |t|) - (p - 1))

with p the format's precision (fp32 24, fp16 11, bf16 8 bits), counted only
where t is a normal number of the format. For fp16/bf16 we also compare with
the correctly rounded result cr(t) (t rounded to nearest-even in the format).

    python benchmarks/numerics.py                       # CPU: docs/NUMERICS.md, docs/numerics.png
    python benchmarks/numerics.py --device cuda --out DIR   # GPU: DIR/NUMERICS-cuda.md, .png
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RANGES = {"[-20, 20]": (-20, 20), "[-87, 87]": (-87, 87), "[-90, 90]": (-90, 90),
          "tail [-90, -20]": (-90, -20), "tail [20, 90]": (20, 90)}
PRECISION = {"fp32": 24, "fp16": 11, "bf16": 8, "fp64": 53}
SILU_ROOT = -1.2784645427610738   # silu'(x0) = 0


def ref_sigmoid(x):
    """float64 sigmoid, sign-split so it is accurate in both tails; and its derivative."""
    import torch
    z = torch.exp(-x.abs())
    s = torch.where(x >= 0, 1 / (1 + z), z / (1 + z))
    return s, z / (1 + z) ** 2


def cases():
    """op -> (function, number of inputs, reference: float64 inputs -> (forward, [grads]))."""
    import torch
    import torch.nn.functional as F

    def sig(x):
        s, ds = ref_sigmoid(x)
        return s, [ds]

    def silu(x):
        s, ds = ref_sigmoid(x)
        return x * s, [s + x * ds]

    def gate(x, g):
        s, ds = ref_sigmoid(g)
        return x * s, [s, x * ds]

    def tanh(x):  # tanh'(x) = 4 sigmoid'(2x), exact in the tails where 1 - tanh^2 is not
        return torch.tanh(x), [4 * ref_sigmoid(2 * x)[1]]
    return {"sigmoid": (lambda x: torch.sigmoid(x), 1, sig, ["dx"]),  # fx cannot trace a builtin
            "silu": (F.silu, 1, silu, ["dx"]),
            "tanh": (lambda x: torch.tanh(x), 1, tanh, ["dx"]),
            "x*sigmoid(g)": (lambda x, g: x * torch.sigmoid(g), 2, gate, ["dx", "dg"])}


def exact(op: str, inputs64: list):
    """(forward, [grads]) with mpmath at 100 bits, rounded to float64: the truth for fp64 inputs."""
    import mpmath
    import torch

    def sig(v):
        return 1 / (1 + mpmath.exp(-v))

    def one(*vs):
        vs = [mpmath.mpf(v) for v in vs]
        g = vs[-1]
        s, ds = sig(g), sig(g) * sig(-g)
        if op == "sigmoid":
            return s, [ds]
        if op == "silu":
            return g * s, [s + g * ds]
        if op == "tanh":
            return mpmath.tanh(g), [1 / mpmath.cosh(g) ** 2]
        return vs[0] * s, [s, vs[0] * ds]
    with mpmath.workprec(100):
        rows = [one(*vs) for vs in zip(*[t.tolist() for t in inputs64])]
    fwd = torch.tensor([float(r[0]) for r in rows], dtype=torch.float64)
    return fwd, [torch.tensor([float(r[1][k]) for r in rows], dtype=torch.float64)
                 for k in range(len(rows[0][1]))]


def grid(dtype, lo: float, hi: float, n: int, gen):
    """Inputs in [lo, hi] that are values of ``dtype``: every one for 16-bit types."""
    import torch
    if dtype == torch.float64:
        n = 2**12
    if dtype.itemsize == 2:
        bits = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16)
        vals = bits.view(dtype).double()
        vals = vals[torch.isfinite(vals) & (vals >= lo) & (vals <= hi)]
        return vals.unique()
    lin = torch.linspace(lo, hi, n // 2, dtype=torch.float64)
    rnd = torch.rand(n // 2, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    return torch.cat([lin, rnd]).to(dtype).double()


def ulp_stats(y, t, p: int, dtype, mask=None, scale=None) -> dict:
    """ulp error of y against float64 truth t where t is normal in ``dtype``.

    ``scale``: measure in ulps of ``scale`` instead of t (silu' near its root).
    """
    import torch
    info = torch.finfo(dtype)
    ref = t if scale is None else scale
    y = y.double()
    ok = (ref.abs() >= info.tiny) & (ref.abs() <= info.max)
    if mask is not None:
        ok &= mask
    if not ok.any():
        return {"n": 0}
    t, y, ref = t[ok], y[ok], ref[ok]
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs())) - (p - 1))
    err = ((y - t).abs() / ulp).nan_to_num(nan=float("inf"))
    cr = torch.round(t / ulp) * ulp                      # round half to even, exact in float64
    err_cr = ((y - cr).abs() / ulp).nan_to_num(nan=float("inf"))
    worst = int(err.argmax())
    return {"n": int(ok.sum()), "max": float(err.max()), "mean": float(err[err.isfinite()].mean()),
            "max_cr": float(err_cr.max()), "pct_cr": 100 * float((err_cr == 0).double().mean()),
            "worst": worst, "ok": ok}


def worse(results: list, truth):
    """Elementwise, the result farther from ``truth`` (NaN the farthest)."""
    import torch
    out = results[0]
    for r in results[1:]:
        err_out, err_r = ((x.double() - truth).abs().nan_to_num(nan=float("inf")) for x in (out, r))
        out = torch.where(err_r > err_out, r, out)
    return out


def run_case(op: str, dname: str, device, gen, npoints: int, extra: bool):
    """Stats of every provider per (pass, range); plus raw curves for the plot.

    ``extra`` (CPU): also ``ours, RNE store`` (bf16: the kernel on fp32 inputs,
    rounded to nearest-even here, as the GPU's store does) and ``ours, GPU bounds``
    (the interpreter under gpu_math, both directions, the worse result kept).
    """
    import torch

    import fusion
    from codegen.triton_compat import gpu_math
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}[dname]
    fn, nin, ref, grad_names = cases()[op]
    xs = [grid(dtype, lo, hi, npoints, gen) for lo, hi in RANGES.values()]
    sizes = [len(x) for x in xs]
    main = torch.cat(xs)
    inputs64 = [main]
    if nin == 2:  # x*sigmoid(g): the range applies to g; x is uniform in [-4, 4]
        x = (torch.rand(len(main), generator=gen, dtype=torch.float64) * 8 - 4).to(dtype).double()
        inputs64 = [x, main]
    true_fwd, true_grads = exact(op, inputs64) if dtype == torch.float64 else ref(*inputs64)
    sigma = ref_sigmoid(main)[0]
    plain = (contextlib.nullcontext,)
    providers = {"ours": (fusion.compile(fn), dtype, plain), "eager": (fn, dtype, plain)}
    if extra and dname == "bf16":
        providers["ours, RNE store"] = (fusion.compile(fn), torch.float32, plain)
    if extra:
        providers["ours, GPU bounds"] = (fusion.compile(fn), dtype, (lambda: gpu_math(1), lambda: gpu_math(-1)))
    out = {}
    for name, (f, compute_dtype, contexts) in providers.items():
        runs = []
        for context in contexts:
            ins = [t.to(device=device, dtype=compute_dtype).requires_grad_() for t in inputs64]
            with context():
                y = f(*ins)
                grads = torch.autograd.grad(y, ins, torch.ones_like(y))
            runs.append([r.detach().to(dtype).cpu() for r in [y] + list(grads)])
        out[name] = [worse(list(rs), t) for rs, t in zip(zip(*runs), [true_fwd] + true_grads)]
    per_range, start = {}, 0
    for (label, _), size in zip(RANGES.items(), sizes):
        sl = slice(start, start + size)
        start += size
        xr = main[sl]
        for k, (pname, truth) in enumerate(zip(["fwd"] + [f"bwd {g}" for g in grad_names],
                                               [true_fwd] + true_grads)):
            kinds = {pname: None}
            if op == "silu" and pname != "fwd":  # in ulps of the larger of the terms that cancel
                kinds[f"{pname} in ulp(terms)"] = torch.maximum(sigma[sl], (xr * ref_sigmoid(xr)[1]).abs())
            for row_name, scale in kinds.items():
                row = {}
                for name, res in out.items():
                    st = ulp_stats(res[k][sl], truth[sl], PRECISION[dname], dtype, None, scale)
                    if st["n"]:
                        st["worst_x"] = float(xr[st["ok"].nonzero().flatten()[st["worst"]]])
                        g = ulp_stats(res[k][sl], truth[sl], PRECISION[dname], dtype, None, scale)  # the goal: everywhere normal
                        if g["n"]:
                            g["worst_x"] = float(xr[g["ok"].nonzero().flatten()[g["worst"]]])
                        st["goal"] = g
                    row[name] = st
                per_range[(row_name, label)] = row
    curves = {name: [(main, res[k].double(), t) for k, t in enumerate([true_fwd] + true_grads)]
              for name, res in out.items()}
    return per_range, curves


def _one_argument(fn):
    return lambda x: fn(x)  # a plain closure: torch.fx traces no default-valued builtins


def tails(device) -> list:
    """fp32 values where eager's result is 0 or NaN though the true value is not (or is the
    limit at an infinity): [what, x, true, eager, ours, ours' error in ulps]."""
    import math

    import mpmath
    import torch
    import torch.nn.functional as F

    import fusion

    inf = math.inf
    points = [("sigmoid'(x)", torch.sigmoid, 1, [17.0, 20.0, 50.0, 80.0]),
              ("tanh'(x)", torch.tanh, 1, [9.0, 10.0, 20.0, 40.0]),
              ("sigmoid(x)", torch.sigmoid, 0, [-88.0, -95.0, -100.0, -103.0]),
              ("silu(x)", F.silu, 0, [-90.0, -inf]),
              ("silu'(x)", F.silu, 1, [inf, -inf]),
              ("bce_logits(z, 1)", lambda z: F.binary_cross_entropy_with_logits(z, torch.ones_like(z),
                                                                                  reduction="none"), 0, [inf]),
              ("bce_logits(z, 0)", lambda z: F.binary_cross_entropy_with_logits(z, torch.zeros_like(z),
                                                                                  reduction="none"), 0, [-inf])]

    def true(what, v):
        limits = {("silu(x)", -inf): 0.0, ("silu'(x)", inf): 1.0, ("silu'(x)", -inf): 0.0,
                  ("bce_logits(z, 1)", inf): 0.0, ("bce_logits(z, 0)", -inf): 0.0}
        if (what, v) in limits:
            return limits[(what, v)]
        with mpmath.workprec(100):
            x = mpmath.mpf(v)
            s = 1 / (1 + mpmath.exp(-x))
            return float({"sigmoid'(x)": s / (1 + mpmath.exp(x)), "tanh'(x)": 1 / mpmath.cosh(x) ** 2,
                          "sigmoid(x)": s, "silu(x)": x * s}[what])

    rows = []
    for what, fn, k, xs in points:
        x = torch.tensor(xs, device=device)
        results = []
        for f in (fn, fusion.compile(_one_argument(fn))):
            leaf = x.clone().requires_grad_()
            y = f(leaf)
            results.append(y if k == 0 else torch.autograd.grad(y, leaf, torch.ones_like(y))[0])
        for i, v in enumerate(xs):
            t = true(what, v)
            eager, ours = (float(r.detach()[i]) for r in results)
            ulp = 2.0 ** (math.floor(math.log2(max(abs(t), 2.0**-126))) - 23) if t else 2.0**-149
            rows.append([what, v, t, eager, ours, abs(ours - t) / ulp if math.isfinite(ours) else inf])
    return rows


def interpreter_facts(all_outputs: dict) -> dict:
    """Measured here: the interpreter's own fp32 -> bf16 store, NumPy's float32 exp, and
    whether our bf16 results equal the RNE-store emulation."""
    import numpy as np
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def store_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

    x = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    y = torch.empty(4096, dtype=torch.bfloat16)
    store_kernel[(1,)](x, y, 4096, BLOCK=4096)
    truncated = (x.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
    a = np.linspace(-87, 87, 2**20, dtype=np.float32)
    exact = np.exp(a.astype(np.float64))
    ulp = np.exp2(np.floor(np.log2(exact)) - 23)
    facts = {"store_truncates": 100 * float((y == truncated).float().mean()),
             "store_rne": 100 * float((y == x.to(torch.bfloat16)).float().mean()),
             "numpy_exp_max_ulp": float((np.abs(np.exp(a).astype(np.float64) - exact) / ulp).max())}
    tiny = torch.finfo(torch.bfloat16).tiny
    sub = torch.tensor([1.3775e-39, 5e-39, 1e-38] * 4, dtype=torch.float32)
    y_sub = torch.empty(len(sub), dtype=torch.bfloat16)
    store_kernel[(1,)](sub, y_sub, len(sub), BLOCK=16)
    facts["subnormal_example"] = (float(sub[0]), float(y_sub[0]), float(sub[0].to(torch.bfloat16)))
    same = []
    for o in all_outputs.values():
        for a, b in zip(o["ours"], o["ours, RNE store"]):
            normal = b.abs() >= tiny   # subnormal results: the interpreter's conversion is off, see facts
            same.append(float((a[normal] == b[normal]).float().mean()))
    facts["ours_equals_rne"] = 100 * min(same) if same else None
    return facts


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", help="folder (default docs/ on a CPU; required with --device cuda)")
    p.add_argument("--points", type=int, default=2**20, help="fp32 points per range")
    args = p.parse_args()
    os.environ["TRITON_INTERPRET"] = "1" if args.device == "cpu" else "0"   # before triton is imported
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    os.environ["FUSION_BENCH_DEVICE"] = args.device
    import torch

    from common import environment_line
    out = Path(args.out or (ROOT / "docs"))
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    all_results, curves, providers_by_dtype = {}, {}, {}
    for dname in ["fp32", "fp16", "bf16", "fp64"]:
        emulate = args.device == "cpu"
        providers_by_dtype[dname] = ["ours", "eager"] + (
            (["ours, RNE store"] if dname == "bf16" else []) + ["ours, GPU bounds"] if emulate else [])
        all_results[dname] = {}
        for op in cases():
            per_range, c = run_case(op, dname, torch.device(args.device), gen, args.points, emulate)
            all_results[dname][op] = per_range
            curves[(dname, op)] = c
            print(f"  {dname} {op} done", flush=True)
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    doc = out / ("NUMERICS.md" if args.device == "cpu" else f"NUMERICS{suffix}.md")
    facts = {}
    if args.device == "cpu":
        facts = interpreter_facts({op: {name: [c[1] for c in curves[("bf16", op)][name]]
                                        for name in ("ours", "ours, RNE store")} for op in cases()})
    facts["gpu_identical"] = []
    for dname, providers in providers_by_dtype.items():
        if "ours, GPU bounds" in providers and all(
                row["ours"].get("max") == row["ours, GPU bounds"].get("max")
                for per_range in all_results[dname].values() for row in per_range.values()):
            facts["gpu_identical"].append(dname)  # the column would repeat ours
            providers.remove("ours, GPU bounds")
    facts["tails"] = tails(torch.device(args.device))
    from numerics_doc import plot, write_doc
    misses = write_doc(doc, all_results, environment_line(), args.device, providers_by_dtype, facts)
    print(plot(out / f"numerics{suffix}.png", curves))
    print(f"wrote {doc}")
    print("goals missed by ours:\n  " + ("\n  ".join(misses) if misses else "none"))


if __name__ == "__main__":
    main()
