"""The numerics report's document and plot (benchmarks/numerics.py measures).

The precision policy, how the error is counted, the emulation of the GPU's approximations and
the goals are text that the tables below it are read against: they live here, next to the
code that checks each row against its goal, so that text and verdicts change together.
Paragraphs are wrapped in this file and written to the document one per line.
"""
import datetime
import re
from pathlib import Path

from common import table

SILU_ROOT = -1.2784645427610738  # silu'(x0) = 0

POLICY = """\
## Precision policy

Accuracy has a budget: a dtype can only show so much, and FP64 runs at 1/2 of FP32 on an H100 and 1/64 on
L4, A10 and RTX cards. By the dtype of each result (`codegen/prelude.py`, the tier `half`/`fp32`/`fp64` the
emitter passes to each helper):

- **fp16/bf16**: computed in fp32 with cheap forms (`tl.exp`, a reciprocal from `rsqrt.approx` squared, no
  correction step): their relative error, ~2^-18, is far below a half-precision ulp, so every result is
  within 1 ulp of the correctly rounded value (checked on all 65,536 inputs of each type, forward and
  gradient, for sigmoid, silu, tanh and x·σ(x): `tests/test_numerics_policy.py`). The kernels cost at most
  1.25x the instructions of the same kernels written with `tl.sigmoid`, and stay memory-bound.
- **fp32**: fp32 arithmetic only, no FP64 instruction in a kernel whose tensors are not fp64
  (`tests/test_numerics_cost.py` counts them in SASS, `tests/test_gpu_compile.py` in PTX). Sigmoid, silu and
  tanh within 2 ulp forward, their gradients within 4 ulp, over the whole range, tails included (σ'(x) for x
  >= 17, where eager returns 0; σ(x) down to the subnormals), never NaN for a finite input. The tools:
  e^-|x| by Cody-Waite reduction and a degree-6 polynomial in FMAs with 2^k built from k's bits (~1 ulp,
  subnormals rounded once; `tl.exp` would cost up to 40 ulp at |x| = 88), the sign-split form z/(1+z) so
  nothing overflows, a reciprocal seed from `rsqrt.approx` corrected by one exact-residual step (z - q is
  exact by Sterbenz; the FMA rounds the residual once), silu computed 2^64-scaled so that x·σ(x) keeps its
  bits to x = -92. Cost: at most 2x the instructions of the `tl.sigmoid` kernels.
- **fp64**: libdevice-quality: Triton inlines libdevice's `exp` and `log` for fp64 `tl.exp`/`tl.log` and
  emits `div.rn.f64` and `sqrt.rn.f64`; the helpers keep the same stable forms.
- **`precision="exact"`** (`fusion.compile(model, precision="exact")`, or `torch.compile(model,
  backend="fusion", options={"precision": "exact"})`): an opt-in, never the default. fp32 results of the
  sigmoid family, tanh and exp are computed in fp64 and rounded once (within 0.5 ulp, silu' at its zero
  included); fp16/bf16 use the fp32 forms.

## How the error is counted

- Inputs are values of the target dtype: fp32 uses {half} evenly spaced and {half} random points per range,
  fp64 2^11 + 2^11; fp16 and bf16 use every representable value in the range. For x·σ(g) the range applies
  to g, and x is uniform in [-4, 4] (rounded to the dtype).
- The true value t is computed in float64 from the same inputs (sign-split sigmoid, σ'(x) = z/(1+z)^2 with
  z = exp(-|x|), tanh'(x) = 4σ'(2x); relative error ~1e-16, far below every ulp here); for fp64 inputs with
  mpmath at 100 bits, then rounded to float64 (so fp64 errors are counted from the correctly rounded value).
- ulp(t) = 2^(floor(log2|t|) - (p-1)) in the target format (p = 24, 11, 8, 53 for fp32, fp16, bf16, fp64):
  the spacing of the format's numbers around the true value. Error = |y - t| / ulp(t).
- Only points where t is a normal number of the format count (`n` below): results in the subnormal range and
  below (fp32: σ(x) for x < -87.3; fp16: σ(x) for x < -9.7) are not counted (the fp32 subnormal tail is
  checked in `tests/test_numerics_policy.py`); a NaN or infinity where t is finite counts as an infinite
  error.
- cr(t) is t correctly rounded (nearest, ties to even) to the format; for fp16/bf16 `max vs cr` is the
  largest distance from it in ulps and `% cr` the share of results equal to it.
- Backward is the gradient with an upstream gradient of ones: dσ/dx, silu'(x), tanh'(x), and for x·σ(g)
  both d/dx = σ(g) and d/dg = x·σ'(g).
- silu'(x) = σ(x) + x·σ'(x) has a zero at x0 = {silu_root:.6f}. Around it the two terms (≈ ±0.22 each)
  cancel and the true value is small: any evaluation from an fp32 σ (within an ulp) has an error of many
  ulps of the result there. Rows `bwd dx in ulp(terms)` measure the error in ulps of max(|silu'(x)|, σ(x),
  |x·σ'(x)|), which is ulp(silu'(x)) away from x0; silu's gradient goal is set on them
  (`precision="exact"` is within 0.5 ulp of the result everywhere).
- `ours, GPU bounds` (CPU runs): our kernels rerun with the GPU's approximations at the edge of their
  documented error, in both directions, keeping the worse result per point (next section). A dtype whose
  results did not change under it shows no such column.

## How the GPU's approximations are emulated

Triton's interpreter evaluates `tl.exp`, `/`, `tl.sqrt`... with NumPy, correctly rounded or nearly; the GPU
runs approximations. `codegen.triton_compat.gpu_math(direction)` makes the interpreter return, for each such
operation, the number farthest from the exact result towards +inf (direction 1) or -inf (-1) that its
documented bound allows. What Triton 3.6 and 3.9 emit for sm_80/sm_90 (read from the PTX) and the bounds
(PTX ISA section 9.7.3; CUDA Programming Guide for the inlined libdevice functions):

| spelling | fp32 on the GPU | documented error |
|---|---|---|
| `tl.exp` | `mul.f32` by log2(e), then `ex2.approx.f32` | the product's rounding, then 2 ulp from the correctly rounded 2^t (9.7.3.21) |
| `tl.exp2` | `ex2.approx.ftz.f32` | 2 ulp; subnormal inputs and results flushed to 0 |
| `tl.log`, `tl.log2` | libdevice `logf`/`log2f`, inlined | 1 ulp |
| `x / y` | `div.full.f32` | 2 ulp (9.7.3.8) |
| `tl.math.fdiv(approx=True)` (3.9) | `div.approx.f32` | 2 ulp for \\|y\\| in [2^-126, 2^126] (9.7.3.8) |
| `tl.sqrt` | `sqrt.approx.ftz.f32` | relative 2^-23 (9.7.3.15) |
| `tl.math.rsqrt` | `rsqrt.approx.ftz.f32` | relative 2^-22.9 (9.7.3.16) |
| fp64 `tl.exp`, `tl.log` | libdevice `exp`, `log`, inlined | 1 ulp |
| `+ - *`, `tl.fma`, `tl.math.div_rn`, `sqrt_rn`, fp64 `/` and `tl.sqrt` | IEEE | exact rounding: nothing to model |

The policy's tests (`tests/test_numerics_policy.py`) run every sweep in both directions, so a passing CPU
test bounds what a GPU returns. Limits of the model: both directions are tried, not mixtures (our fp32 forms
correct their one approximate step, so its direction cannot matter; the half-precision forms' errors are far
below their ulp either way); the GPU's contraction of `a * b + c` into one FMA in chains of ops is not
modelled (it removes a rounding; our helpers write their FMAs explicitly, so they compute the same on both);
and a result that underflows to 0 stays 0. Triton 3.6's interpreter rounds `tl.fma` twice:
`patch_interpreter` makes it a true FMA.

## Gradient tails and limits, beside eager (fp32)

Each derivative rule of the table is computed from the input, not the rounded output, where the output has
lost the answer (tanh' = 4σ'(2x), not 1 - tanh²; σ' = q(1 - q) with q = σ(-|x|)); and every op and
derivative has its mathematical limit at ±inf where one exists (NaN only where eager's float64 is NaN for a
mathematical reason: `tests/test_limits_at_infinity.py`). `true` is computed with mpmath, or is the limit.
"""

GOALS = """\
## Goals

- fp32 and fp64: forward at most 2 ulp, backward at most 4 ulp, wherever the true value is normal (tails
  included), for sigmoid, silu (its gradient in ulp(terms)) and tanh; x·σ(g) is a chain of σ and a product
  (σ's error and one rounding), with no goal of its own.
- fp16/bf16: within 1 ulp of the correctly rounded result, wherever it is normal.
- Each row's goal column gives the largest error over its range.
"""

CAVEATS = """\
## Interpreter caveats

- Triton's interpreter (3.9) truncates fp32 to bf16 at a store and mis-converts bf16 subnormals;
  `codegen/triton_compat.py` makes both round to nearest even, as the GPU does. Measured here with those
  patches: a plain store kernel gave the nearest-even value for {store_rne:.1f}% of random inputs (the
  truncated one for {store_truncates:.1f}%; they agree where truncation is exact), and our bf16 results equal
  those of `ours, RNE store` (the same kernel on fp32 inputs, rounded to nearest-even here) at
  {ours_equals_rne:.6g}% of the points with a normal result.
- Storing the subnormal {subnormal_example[0]:.5g} gave {subnormal_example[1]:.5g} (nearest bf16:
  {subnormal_example[2]:.5g}).
- NumPy's float32 exp, which the plain interpreter runs for `tl.exp`, is up to {numpy_exp_max_ulp:.2f} ulp
  from the true exp(x) (2^20 points of [-87, 87]); `ours, GPU bounds` replaces it with the GPU's bound.
  {identical}
- Measure on a GPU with `--device cuda` (the GPU check does, with NUMERICS=1).
"""


def unwrap(text: str) -> str:
    """One line per paragraph or list item (Markdown reads both alike; diffs of the document stay
    one line per change)."""
    return re.sub(r"(?<!\n)\n(?![\n|#]|- ) *", " ", text).replace(" \n", "\n")


def goal(dname: str, op: str, pname: str, st: dict) -> str:
    """The policy's goal for this row, and whether ``st`` (a provider's stats) meets it."""
    if op == "x*sigmoid(g)" and dname in ("fp32", "fp64"):
        return "- (a chain: σ's error and one rounding)"
    if op == "silu" and pname != "fwd" and "in ulp(terms)" not in pname:
        return "- (silu': in ulp(terms), next row)"
    if not st.get("n"):
        return "- (no normal result in the range)"
    if dname in ("fp32", "fp64"):
        limit = 2 if pname == "fwd" else 4
        return f"{'ok' if st['max'] <= limit else 'MISSED'}: {cell(st['max'])} (<= {limit})"
    return f"{'ok' if st['max vs cr'] <= 1 else 'MISSED'}: {cell(st['max vs cr'])} (<= 1 from cr)"


def cell(v: float) -> str:
    """A number as common.table writes it."""
    return str(v) if abs(v) == float("inf") else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def dtype_table(dname: str, rows: dict, providers: list) -> tuple[str, list, list]:
    """One dtype's table, the goals ours misses, and those missed under the GPU bounds."""
    columns = ["max", "mean"] + (["max vs cr", "% cr"] if dname != "fp32" else [])
    judged = ["ours"] + (["ours, GPU bounds"] if "ours, GPU bounds" in providers else [])
    lines, misses = [], {name: [] for name in judged}
    for op, per_range in rows.items():
        for (pname, label), row in per_range.items():
            verdicts = [goal(dname, op, pname, row[name]) for name in judged]
            lines.append([op, pname, label, row["ours"]["n"]] + [row[n].get(c) for n in providers for c in columns]
                         + verdicts)
            for name, verdict in zip(judged, verdicts):
                if "MISSED" in verdict:
                    var = "g" if op == "x*sigmoid(g)" else "x"
                    misses[name].append(f"{dname} {op} {pname} on {label}: {verdict.split(': ')[1]}; worst at "
                                        f"{var} = {row[name]['worst x']:.6g}")
    headers = ["op", "pass", "range", "n"] + [f"{n} {c}" for n in providers for c in columns]
    headers += [f"goal ({name})" for name in judged]
    return table(headers, lines), misses["ours"], misses.get("ours, GPU bounds", [])


def write_doc(path: Path, rows: dict, providers: dict, facts: dict, env: str, device: str, png: str,
              points: int) -> tuple[list, list]:
    """Write the document; return the goals missed by ours, and under the GPU bounds."""
    interp = device == "cpu"
    half = f"2^{(points // 2).bit_length() - 1}" if (points // 2).bit_count() == 1 else f"{points // 2:,}"
    text = [f"# Numerics of sigmoid, silu, tanh and x·σ(g)\n\nGenerated by `python benchmarks/numerics.py"
            f"{'' if interp else ' --device ' + device}{'' if points == 2**20 else f' --points {points}'}` on "
            f"{datetime.date.today()}: {env}. Ours ran as "
            + ("generated Triton kernels in Triton's interpreter (CPU, `TRITON_INTERPRET=1`)" if interp
               else "Triton JIT kernels on the GPU")
            + f"; eager is PyTorch's {device.upper()} kernels. Do not edit by hand: rerun the script.\n",
            POLICY.replace("{half}", half)  # not format(): the text has braces of its own (options={...})
            .replace("{silu_root:.6f}", f"{SILU_ROOT:.6f}"),
            table(["value", "x", "true", "eager fp32", "ours fp32", "ours: ulp from true"], facts["tails"]) + "\n",
            GOALS]
    if interp:
        identical = ("Our kernels' results did not change under the GPU bounds for: " + ", ".join(
            facts["gpu_identical"]) + " (their approximate steps are corrected).") if facts["gpu_identical"] else ""
        text.append(CAVEATS.format(**facts, identical=identical))
    misses, model_misses = [], []
    for dname, per_op in rows.items():
        doc_table, ours, model = dtype_table(dname, per_op, providers[dname])
        misses, model_misses = misses + ours, model_misses + model
        text.append(f"## {dname}: error in ulps (max, mean over the range)\n\n{doc_table}\n")
    text.append("## Goals missed by ours\n\n" + ("\n".join(f"- {m}" for m in misses)
                                                 or "None: every goal above is met by ours.") + "\n")
    if model_misses:
        text.append("## Goals missed under the GPU bounds (`ours, GPU bounds`)\n\n"
                    + "\n".join(f"- {m}" for m in model_misses) + "\n")
    text.append(f"![max ulp error per bin of x]({png})\n\nThe plot shows the largest ulp error in each bin of x "
                "over [-90, 90] (fp32 and bf16, ours and eager; a missing point means no normal result in that "
                "bin, a point at the top an error of 1e7 ulp or more, such as eager's fp32 sigmoid backward "
                "returning 0).")
    path.write_text(unwrap("\n".join(text)) + "\n")
    return misses, model_misses


def plot(path: Path, kept: dict, precision: dict) -> str:
    """The largest ulp error per 0.5-wide bin of x, fp32 and bf16, sigmoid and silu, ours and eager."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(matplotlib is not installed: no plot)"
    import torch
    fig, axes = plt.subplots(2, 4, figsize=(17, 7))
    for r, dname in enumerate(["fp32", "bf16"]):
        info = torch.finfo(torch.float32 if dname == "fp32" else torch.bfloat16)
        for c, (op, k) in enumerate([("sigmoid", 0), ("sigmoid", 1), ("silu", 0), ("silu", 1)]):
            ax, res = axes[r][c], kept[(dname, op)]
            for name, style in (("ours", "-"), ("eager", "--")):
                x, t = res["x"], res["truths"][k]
                ok = (t.abs() >= info.tiny) & (x.abs() <= 90)
                y, t = res[name][k].double()[ok], t[ok]
                ulp = torch.exp2(torch.floor(torch.log2(t.abs())) - (precision[dname] - 1))
                err = ((y - t).abs() / ulp).nan_to_num(nan=1e7).clamp(1e-3, 1e7)
                worst = torch.full((360,), float("nan"), dtype=torch.float64).scatter_reduce(
                    0, ((x[ok] + 90) * 2).long().clamp(0, 359), err, "amax", include_self=False)
                ax.plot(torch.arange(360) / 2 - 89.75, worst, style, label=name, linewidth=1)
            ax.set_yscale("log")
            ax.set_title(f"{op} {['forward', 'backward'][k]}, {dname}", fontsize=9)
            ax.set_xlabel("x", fontsize=8)
            ax.set_ylabel("max ulp error per 0.5-wide bin", fontsize=8)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"
