"""Numerics report: ulp error of sigmoid, silu and x*sigmoid(g) against float64; writes docs/NUMERICS.md.

Ours (``fusion.compile``: generated kernels; on a CPU they run in Triton's
interpreter) and eager PyTorch side by side, forward and backward, fp32, fp16
and bf16, over ranges of the input. Each input is a value of the target dtype
(fp32: 2^19 evenly spaced plus 2^19 random points per range; fp16/bf16: every
representable value in the range); the true result is computed in float64
from that same input. The error of a result y against the true value t is

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
import datetime
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RANGES = {"[-20, 20]": (-20, 20), "[-87, 87]": (-87, 87), "[-90, 90]": (-90, 90),
          "tail [-90, -20]": (-90, -20), "tail [20, 90]": (20, 90)}
PRECISION = {"fp32": 24, "fp16": 11, "bf16": 8}
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
    return {"sigmoid": (lambda x: torch.sigmoid(x), 1, sig, ["dx"]),  # fx cannot trace a builtin
            "silu": (F.silu, 1, silu, ["dx"]),
            "x*sigmoid(g)": (lambda x, g: x * torch.sigmoid(g), 2, gate, ["dx", "dg"])}


def grid(dtype, lo: float, hi: float, n: int, gen):
    """Inputs in [lo, hi] that are values of ``dtype``: every one for 16-bit types."""
    import torch
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


@contextlib.contextmanager
def gpu_exp_model():
    """Make the interpreter evaluate fp32 ``tl.exp`` the way the PTX does on a GPU.

    Triton lowers fp32 exp to ``mul.f32`` by log2(e) then ``ex2.approx.f32``:
    the product's rounding (relative 2^-24 of |x log2 e|) becomes a relative
    error of about |x| 2^-24 in the result, tens of ulp for |x| near 87. Here
    ex2 is exact-then-rounded and divisions round to nearest, so this is a
    lower bound of the GPU's error (ex2.approx and div.full add up to ~2 ulp).
    """
    import numpy as np
    from triton.runtime import interpreter
    cls = interpreter.InterpreterBuilder
    original = cls.create_exp

    def exp(a):
        if a.dtype != np.float32:
            return np.exp(a)
        t = (a * np.float32(1.4426950408889634)).astype(np.float32)
        return np.exp2(t.astype(np.float64)).astype(np.float32)
    cls.create_exp = lambda self, arg: self.unary_op(arg, exp)
    try:
        yield
    finally:
        cls.create_exp = original


def run_case(op: str, dname: str, device, gen, npoints: int, extra: bool):
    """Stats of every provider per (pass, range); plus raw curves for the plot.

    ``extra`` (CPU): also ``ours, RNE store`` (bf16: the kernel on fp32 inputs,
    rounded to nearest-even here, as the GPU's store does) and ``ours, GPU exp``
    (fp32: the interpreter with the GPU's exp, see gpu_exp_model).
    """
    import torch
    import fusion
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dname]
    fn, nin, ref, grad_names = cases()[op]
    xs = [grid(dtype, lo, hi, npoints, gen) for lo, hi in RANGES.values()]
    sizes = [len(x) for x in xs]
    main = torch.cat(xs)
    inputs64 = [main]
    if nin == 2:  # x*sigmoid(g): the range applies to g; x is uniform in [-4, 4]
        x = (torch.rand(len(main), generator=gen, dtype=torch.float64) * 8 - 4).to(dtype).double()
        inputs64 = [x, main]
    true_fwd, true_grads = ref(*inputs64)
    sigma = ref_sigmoid(main)[0]
    plain = contextlib.nullcontext
    providers = {"ours": (fusion.compile(fn), dtype, plain), "eager": (fn, dtype, plain)}
    if extra and dname == "bf16":
        providers["ours, RNE store"] = (fusion.compile(fn), torch.float32, plain)
    if extra and dname == "fp32":
        providers["ours, GPU exp"] = (fusion.compile(fn), dtype, gpu_exp_model)
    out = {}
    for name, (f, compute_dtype, context) in providers.items():
        ins = [t.to(device=device, dtype=compute_dtype).requires_grad_() for t in inputs64]
        with context():
            y = f(*ins)
            grads = torch.autograd.grad(y, ins, torch.ones_like(y))
        out[name] = [r.detach().to(dtype).cpu() for r in [y] + list(grads)]
    info = torch.finfo(dtype)
    per_range, start = {}, 0
    for (label, _), size in zip(RANGES.items(), sizes):
        sl = slice(start, start + size)
        start += size
        xr = main[sl]
        for k, (pname, truth) in enumerate(zip(["fwd"] + [f"bwd {g}" for g in grad_names],
                                               [true_fwd] + true_grads)):
            # the goals' domains: forward where sigma is normal, backward for |x| <= 87
            in_goal = (sigma[sl] >= info.tiny) if pname == "fwd" else (xr.abs() <= 87)
            kinds = {pname: None}
            if op == "silu" and pname != "fwd":  # in ulps of the larger of the terms that cancel
                kinds[f"{pname} in ulp(terms)"] = torch.maximum(sigma[sl], (xr * ref_sigmoid(xr)[1]).abs())
            for row_name, scale in kinds.items():
                row = {}
                for name, res in out.items():
                    st = ulp_stats(res[k][sl], truth[sl], PRECISION[dname], dtype, None, scale)
                    if st["n"]:
                        st["worst_x"] = float(xr[st["ok"].nonzero().flatten()[st["worst"]]])
                        if scale is None:
                            g = ulp_stats(res[k][sl], truth[sl], PRECISION[dname], dtype, in_goal)
                            if g["n"]:
                                g["worst_x"] = float(xr[g["ok"].nonzero().flatten()[g["worst"]]])
                            st["goal"] = g
                    row[name] = st
                per_range[(row_name, label)] = row
    curves = {name: [(main, res[k].double(), t) for k, t in enumerate([true_fwd] + true_grads)]
              for name, res in out.items()}
    return per_range, curves


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


# ---- goals and the document -----------------------------------------------------------
def goal(dname: str, pname: str, st: dict) -> str:
    """The goal that applies to this row (on its domain), and whether it is met."""
    if "in ulp(terms)" in pname:
        return "- (a diagnostic, no goal)"
    g = st.get("goal", {})
    if not g.get("n"):
        return "- (nothing in the goal's domain)"
    if dname == "fp32":
        limit = 2 if pname == "fwd" else 4
        where = "where σ is normal" if pname == "fwd" else "|x| <= 87"
        return f"{'ok' if g['max'] <= limit else 'MISSED'}: {fmt(g['max'])} (<= {limit}, {where})"
    return f"{'ok' if g['max_cr'] <= 1 else 'MISSED'}: {fmt(g['max_cr'])} (<= 1 from cr)"


def fmt(v, digits=3):
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"


def table_for(dname: str, results: dict, providers: list[str]) -> tuple[str, list]:
    from common import table
    half = dname != "fp32"
    headers = ["op", "pass", "range", "n"]
    for p in providers:
        headers += [f"{p} max", f"{p} mean"] + ([f"{p} max vs cr", f"{p} % cr"] if half else [])
    headers += ["goal (ours)"] + (["goal (ours, GPU exp)"] if "ours, GPU exp" in providers else [])
    rows, misses, model_misses = [], [], []
    for op, per_range in results.items():
        for (pname, label), row in per_range.items():
            ours = row["ours"]
            line = [op, pname, label, ours.get("n", 0)]
            for p in providers:
                st = row.get(p, {})
                line += [fmt(st.get("max")), fmt(st.get("mean"))]
                if half:
                    line += [fmt(st.get("max_cr")), fmt(st.get("pct_cr"))]
            verdict = goal(dname, pname, ours)
            line.append(verdict)
            if "ours, GPU exp" in providers:
                model = row.get("ours, GPU exp", {})
                line.append(goal(dname, pname, model))
                if "MISSED" in line[-1]:
                    model_misses.append(f"{dname} {op} {pname} on {label}: {line[-1].split(': ')[1]}; "
                                        f"worst at {model['goal']['worst_x']:.6g}")
            rows.append(line)
            if "MISSED" in verdict:
                var = "g" if op == "x*sigmoid(g)" else "x"
                misses.append(f"{dname} {op} {pname} on {label}: {verdict.split(': ')[1]}; worst at "
                              f"{var} = {ours['goal']['worst_x']:.6g}")
    return table(headers, rows), misses, model_misses


def write_doc(path: Path, all_results: dict, env: str, device: str, providers_by_dtype: dict,
              facts: dict) -> list:
    interp = device == "cpu"
    lines = [f"# Numerics of sigmoid, silu and x·σ(g)\n",
             f"Generated by `python benchmarks/numerics.py{'' if interp else ' --device ' + device}` on "
             f"{datetime.date.today()}: {env}. Ours ran as "
             + ("generated Triton kernels in Triton's interpreter (CPU, `TRITON_INTERPRET=1`)"
                if interp else "Triton JIT kernels on the GPU")
             + f"; eager is PyTorch's {device.upper()} kernels. Do not edit by hand: rerun the script.\n",
             "## How the error is counted\n",
             "- Inputs are values of the target dtype: fp32 uses 2^19 evenly spaced and 2^19 random points "
             "per range; fp16 and bf16 use every representable value in the range. For x·σ(g) the range "
             "applies to g, and x is uniform in [-4, 4] (rounded to the dtype).",
             "- The true value t is computed in float64 from the same inputs (sign-split sigmoid, "
             "σ'(x) = z/(1+z)^2 with z = exp(-|x|); relative error ~1e-16, far below every ulp here).",
             "- ulp(t) = 2^(floor(log2|t|) - (p-1)) in the target format (p = 24, 11, 8 for fp32, fp16, "
             "bf16): the spacing of the format's numbers around the true value. Error = |y - t| / ulp(t).",
             "- Only points where t is a normal number of the format count (`n` below): results in the "
             "subnormal range and below (fp32: σ(x) for x < -87.3; fp16: σ(x) for x < -9.7) are not "
             "counted; a NaN or infinity where t is finite counts as an infinite error.",
             "- cr(t) is t correctly rounded (nearest, ties to even) to the format; for fp16/bf16 "
             "`max vs cr` is the largest distance from it in ulps and `% cr` the share of results "
             "equal to it.",
             "- Backward is the gradient with an upstream gradient of ones: dσ/dx, silu'(x), and for "
             "x·σ(g) both d/dx = σ(g) and d/dg = x·σ'(g).",
             f"- silu'(x) = σ(x) + x·σ'(x) has a zero at x0 = {SILU_ROOT:.6f}. Around it the two terms "
             "(≈ ±0.22 each) cancel and the true value is small, so any evaluation in the format itself, "
             "ours and eager alike, has an error of many ulps of the result there (rows `bwd dx`), while "
             "being accurate to a few ulps of the terms. Rows `bwd dx in ulp(terms)` measure that: the same "
             "error in ulps of max(σ(x), |x·σ'(x)|) instead of the result; they carry no goal.\n",
             "## Goals\n",
             "- fp32 forward: at most 2 ulp where σ (of x, or of g for x·σ(g)) is normal, i.e. x > -87.3.",
             "- fp32 backward: at most 4 ulp for |x| <= 87.",
             "- fp16/bf16: within 1 ulp of the correctly rounded result, wherever it is normal.",
             "- Each row's goal column is checked on the part of its range inside the goal's domain, "
             "and gives the largest error there.\n"]
    if interp:
        lines += ["## Interpreter caveats\n",
                  f"- Triton's interpreter converts fp32 to bf16 at a store by truncation, not to nearest "
                  f"as the GPU does: measured here, a plain store kernel gave the truncated value for "
                  f"{facts['store_truncates']:.1f}% of random inputs and the nearest-even one for "
                  f"{facts['store_rne']:.1f}%. Our kernels round to nearest-even themselves before a bf16 "
                  "store (the `round_to_bf16` helper), so this does not reach our figures: our bf16 "
                  f"results equal those of the column `ours, RNE store` (the same kernel on fp32 inputs, its "
                  f"result rounded to nearest-even here, as the GPU's store does) for "
                  f"{fmt(facts['ours_equals_rne'], 6)}% of the points with a normal result (the lowest "
                  "share over ops and passes).",
                  "- For subnormal values the interpreter's fp32 -> bf16 conversion is wrong, not merely "
                  "truncated: storing {:.5g} gave {:.5g} (nearest bf16: {:.5g}). Subnormal results are "
                  "not counted in the tables; on the GPU the conversion is exact.".format(
                      *facts["subnormal_example"]),
                  f"- NumPy's float32 exp, which the interpreter uses for `tl.exp`, is itself up to "
                  f"{facts['numpy_exp_max_ulp']:.2f} ulp from the true exp(x) (measured on 2^20 points of "
                  "[-87, 87]): part of our fp32 error here comes from it.",
                  "- The interpreter evaluates fp32 `tl.exp` with NumPy's float32 exp (within about 1 ulp) "
                  "and rounds every division to nearest. On the GPU, the sm_90 PTX of these kernels "
                  "(see `benchmarks/cpu_report.py`) computes exp as `mul.f32` by log2(e) followed by "
                  "`ex2.approx.f32`, and divides with `div.full.f32` (up to 2 ulp). The rounding of "
                  "x·log2(e) alone costs a relative error of about |x|·2^-24 in exp(x): tens of ulps for "
                  "|x| near 87. The column `ours, GPU exp` reruns our kernels in the interpreter with exp "
                  "evaluated that way (the product rounded to fp32, then 2^t correctly rounded; divisions "
                  "still rounded to nearest): a lower bound of what the GPU will show. Measure on a GPU "
                  "with `--device cuda` (the GPU check does, with NUMERICS=1).\n"]
    all_misses, all_model = [], []
    for dname, results in all_results.items():
        text, misses, model_misses = table_for(dname, results, providers_by_dtype[dname])
        all_misses += misses
        all_model += model_misses
        lines += [f"## {dname}: error in ulps (max, mean over the range)\n", text, ""]
    lines += ["## Goals missed by ours\n"]
    lines += [f"- {m}" for m in all_misses] or ["None: every goal above is met by ours."]
    if all_model:
        lines += ["", "## Goals the GPU's exp would miss (model: `ours, GPU exp`, a lower bound)\n"]
        lines += [f"- {m}" for m in all_model]
    lines += ["", f"![max ulp error per bin of x](numerics{'' if interp else '-' + device}.png)\n",
              "The plot shows the largest ulp error in each bin of x over [-90, 90] (fp32 and bf16, "
              "ours and eager; a missing point means no normal result in that bin, a point at the top "
              "an error of 1e7 ulp or more, such as eager's fp32 sigmoid backward returning 0)."]
    path.write_text("\n".join(lines) + "\n")
    return all_misses


def plot(path: Path, curves: dict) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(matplotlib not installed: no plot)"
    import torch
    panels = [("sigmoid", 0, "sigmoid forward"), ("sigmoid", 1, "sigmoid backward"),
              ("silu", 0, "silu forward"), ("silu", 1, "silu backward")]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7), squeeze=False)
    for r, dname in enumerate(["fp32", "bf16"]):
        for c, (op, k, title) in enumerate(panels):
            ax = axes[r][c]
            for name, style in (("ours", "-"), ("eager", "--")):
                if (dname, op) not in curves or name not in curves[(dname, op)]:
                    continue
                x, y, t = curves[(dname, op)][name][k]
                dtype = torch.float32 if dname == "fp32" else torch.bfloat16
                info = torch.finfo(dtype)
                ok = (t.abs() >= info.tiny) & (x.abs() <= 90)
                ulp = torch.exp2(torch.floor(torch.log2(t[ok].abs())) - (PRECISION[dname] - 1))
                err = ((y[ok] - t[ok]).abs() / ulp).nan_to_num(nan=1e7).clamp(1e-3, 1e7)
                bins = ((x[ok] + 90) * 2).long().clamp(0, 359)
                worst = torch.full((360,), float("nan"), dtype=torch.float64)
                worst = worst.scatter_reduce(0, bins, err, "amax", include_self=False)
                centers = torch.arange(360, dtype=torch.float64) / 2 - 90 + 0.25
                ax.plot(centers, worst, style, label=name, linewidth=1)
            ax.set_yscale("log")
            ax.set_title(f"{title}, {dname}", fontsize=9)
            ax.set_xlabel("x", fontsize=8)
            ax.set_ylabel("max ulp error per 0.5-wide bin", fontsize=8)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"


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
    for dname in ["fp32", "fp16", "bf16"]:
        emulate = args.device == "cpu"
        providers_by_dtype[dname] = ["ours", "eager"] + (
            {"bf16": ["ours, RNE store"], "fp32": ["ours, GPU exp"]}.get(dname, []) if emulate else [])
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
    misses = write_doc(doc, all_results, environment_line(), args.device, providers_by_dtype, facts)
    print(plot(out / f"numerics{suffix}.png", curves))
    print(f"wrote {doc}")
    print("goals missed by ours:\n  " + ("\n  ".join(misses) if misses else "none"))


if __name__ == "__main__":
    main()
