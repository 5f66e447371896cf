"""Attention gating ``s = q @ k.T; s * sigmoid(s)`` and a large-K matmul with that epilogue.

Gating: M = N = 8192, K = 64, and a batched-heads shape; bf16, fp16, fp32;
forward and forward+backward. Providers side by side: eager, torch.compile
(default, max-autotune), ours (``fusion.compile`` of the gating function: as
fast as whatever fusion makes of it) and the plain matmul ``q @ k.T`` (cuBLAS)
as the ceiling. Each table gives milliseconds, ours' speedup over each
provider, and ours' time relative to the plain matmul, with the targets.

Large-K: ``s = a @ b; s * sigmoid(s)`` with 4096^3 bf16, in TFLOP/s
(2 M N K / time) against cuBLAS's plain ``a @ b``.

Matmul precision is each provider's default (fp32: torch keeps full fp32
unless ``torch.backends.cuda.matmul.allow_tf32`` is set; the header says).
GPU only; on a CPU it says so and stops (``--smoke``: tiny sizes, code check).

    python benchmarks/gating.py [--quick] [--out DIR] [--budget SECONDS]
"""
from __future__ import annotations

import gc

import common  # noqa: F401  (sets up the device before torch/triton/fusion)
import torch

from common import (DEVICE, DTYPES, GPU, TARGETS, Budget, Results, base_args, finish, forward_backward,
                    make_providers, run_mode, training_step_peaks, try_bench)

SHAPES = {"8192x8192, K=64": (8192, 64), "4x16 heads x 2048x2048, K=64": (4, 16, 2048, 64)}
SMOKE_SHAPES = {"256x256, K=64": (256, 64), "2x2 heads x 128x128, K=64": (2, 2, 128, 64)}
LARGE_K = 4096
PROVIDERS = ["eager", "torch.compile", "max-autotune", "ours"]


def gating(q, k):
    s = q @ k.transpose(-2, -1)
    return s * torch.sigmoid(s)


def plain_matmul(q, k):
    return q @ k.transpose(-2, -1)


def matmul_epilogue(a, b):
    s = a @ b
    return s * torch.sigmoid(s)


def timed(fn, inputs: list, grad: bool, quick: bool):
    """(ms, error) of fn forward, or forward+backward into every input."""
    if grad:
        dy = torch.randn_like(plain_matmul(*inputs).detach())
        call = forward_backward(fn, inputs, inputs, dy)
    else:
        call = lambda: fn(*inputs)  # noqa: E731
    ms, err = try_bench(call, quick)
    return (ms[0] if ms else None), err


def gating_config(shape: tuple, dtype, grad: bool, providers: list[str], quick: bool) -> dict:
    """Milliseconds of every provider and of the plain matmul, for one configuration."""
    inputs = [(torch.randn(shape, device=DEVICE, dtype=dtype) / shape[-1] ** 0.25).requires_grad_(grad)
              for _ in range(2)]
    got = {"matmul": timed(plain_matmul, inputs, grad, quick)}
    for name, f in make_providers(gating, providers).items():
        got[name] = timed(f, inputs, grad, quick)
    del inputs
    gc.collect()
    if GPU:
        torch.cuda.empty_cache()
    return got


def ratio(a, b):
    return a / b if a and b else None


def run_gating(res: Results, label: str, shape: tuple, plan: dict, providers: list[str], budget: Budget,
               quick: bool) -> list[dict]:
    """One table per pass for ``shape``; ``plan[passes][dtype]`` lists the providers to run."""
    panels = []
    for passes, dtypes in plan.items():
        grad = passes == "fwd+bwd"
        cols = ["matmul"] + providers
        rows, notes, series, xs = [], set(), {p: [] for p in cols}, []
        for dname, provs in dtypes.items():
            provs = [p for p in providers if p in provs]
            if budget.spent():
                rows.append([dname, "skipped: time budget"])
                continue
            got = gating_config(shape, DTYPES[dname], grad, provs, quick)
            ours = got.get("ours", (None, ""))[0]
            speed = {p: ratio(got[p][0], ours) for p in ("eager", "torch.compile", "max-autotune")
                     if p in got}
            rel = ratio(ours, got["matmul"][0])
            rows.append([dname] + [got[p][0] if p in got else "not run" for p in cols]
                        + [speed.get(p) for p in ("eager", "torch.compile", "max-autotune")] + [rel])
            xs.append(dname)
            for p in cols:
                series[p].append(got[p][0] if p in got else None)
            notes |= {f"{p}: {e}" for p, (_, e) in got.items() if e}
            if not grad:
                checks = [("gating fwd time / matmul", rel)] + [
                    (f"gating fwd speedup vs {p}", speed.get(p))
                    for p in ("eager", "torch.compile", "max-autotune")]
                for key, value in checks:
                    if value is not None:
                        res.add_summary(key, f"{label} {dname}", f"{value:.2f}", TARGETS[key].check(value))
        note = ("Speedup = provider time / ours (> 1: ours is faster); ours / matmul = ours' time over "
                "q @ k.T alone. 'not run': skipped in --quick (max-autotune autotunes for minutes).")
        if not grad:
            note += (" Targets: ours / matmul " + TARGETS["gating fwd time / matmul"].text()
                     + "; speedup vs eager " + TARGETS["gating fwd speedup vs eager"].text()
                     + ", vs torch.compile " + TARGETS["gating fwd speedup vs torch.compile"].text()
                     + ", vs max-autotune " + TARGETS["gating fwd speedup vs max-autotune"].text() + ".")
        res.add_table(f"gating {label} {passes}: ms", ["dtype"] + [f"{c} ms" for c in cols]
                      + ["vs eager", "vs torch.compile", "vs max-autotune", "ours / matmul"], rows,
                      " ".join([note] + sorted(notes)))
        panels.append({"title": f"gating {label} {passes}", "x": xs, "series": series, "xlabel": "dtype",
                       "ylabel": "ms (lower is better)", "bars": True})
    return panels


def run_large_k(res: Results, n: int, providers: list[str], quick: bool):
    """TFLOP/s of a 4096^3 bf16 matmul with the gating epilogue, against cuBLAS."""
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16) / n ** 0.25
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16) / n ** 0.25
    flop = 2 * n ** 3
    tflops = lambda ms: flop * 1e-12 / (ms * 1e-3) if ms else None  # noqa: E731
    ms, err = try_bench(lambda: a @ b, quick)
    got = {"cuBLAS a @ b": (tflops(ms and ms[0]), err)}
    for name, f in make_providers(matmul_epilogue, providers).items():
        ms, err = try_bench(lambda f=f: f(a, b), quick)
        got[name] = (tflops(ms and ms[0]), err)
    frac = ratio(got["ours"][0], got["cuBLAS a @ b"][0]) if "ours" in got else None
    target = TARGETS["large-K epilogue / cuBLAS TFLOP/s"]
    res.add_table(f"matmul {n}x{n}x{n} bf16 + s*sigmoid(s) epilogue: TFLOP/s",
                  list(got) + ["ours / cuBLAS", f"target {target.text()}"],
                  [[v for v, _ in got.values()] + [frac, target.check(frac).split(": ")[1]]],
                  "; ".join(f"{p}: {e}" for p, (_, e) in got.items() if e))
    res.add_summary("large-K epilogue TFLOP/s, ours / cuBLAS", f"{n}^3 bf16",
                    f"{frac:.2f}" if frac else "-", target.check(frac))


def peak_memory(res: Results, shape: tuple, label: str):
    """Peak GPU memory of a bf16 forward+backward of gating, against eager."""
    inputs = [torch.randn(shape, device=DEVICE, dtype=torch.bfloat16).requires_grad_() for _ in range(2)]
    dy = torch.randn_like(plain_matmul(*inputs).detach())
    mb = training_step_peaks(gating, inputs, dy)
    rel = ratio(mb.get("ours"), mb.get("eager"))
    res.add_table(f"gating {label} bf16 training step: peak GPU memory (MB)",
                  ["eager", "torch.compile", "ours", "ours / eager"],
                  [[mb.get("eager"), mb.get("torch.compile"), mb.get("ours"), rel]],
                  "Memory allocated at the peak of forward+backward beyond the inputs.")
    if rel is not None:
        res.add_summary("training-step peak memory, ours / eager", f"gating {label} bf16", f"{rel:.2f}")


def main():
    args = base_args(__doc__.splitlines()[0], smoke=True).parse_args()
    res = Results("gating", args.out)
    everything = {d: PROVIDERS for d in ("bf16", "fp16", "fp32")}
    mode = run_mode(res, args, "attention gating and large-K matmul timings")
    if mode is None:
        return
    if mode == "smoke":
        plan = {label: {"forward": {"fp32": ["eager", "ours"]}, "fwd+bwd": {"fp32": ["eager", "ours"]}}
                for label in SMOKE_SHAPES}
        shapes, large_k, providers = SMOKE_SHAPES, 256, ["eager", "ours"]
    elif args.quick:  # max-autotune (minutes of autotuning) only where a target names it: forward bf16
        fast = ["eager", "torch.compile", "ours"]
        first, second = SHAPES
        plan = {first: {"forward": {"bf16": PROVIDERS, "fp16": fast, "fp32": fast}, "fwd+bwd": {"bf16": fast}},
                second: {"forward": {"bf16": fast}, "fwd+bwd": {"bf16": fast}}}
        shapes, large_k, providers = SHAPES, LARGE_K, PROVIDERS
    else:
        plan = {label: {"forward": everything, "fwd+bwd": everything} for label in SHAPES}
        shapes, large_k, providers = SHAPES, LARGE_K, PROVIDERS
    budget = Budget(args.budget)
    panels = []
    for i, (label, shape) in enumerate(shapes.items()):
        panels += run_gating(res, label, shape, plan[label], providers, budget, args.quick)
        if i == 0 and not budget.spent():  # before the batched shape: its target matters more
            run_large_k(res, large_k, providers, args.quick)
    if GPU and not budget.spent():
        label, shape = next(iter(SHAPES.items()))
        peak_memory(res, shape, label)
    finish(res, args, "gating.png", "attention gating: ms (lower is better)", panels)


if __name__ == "__main__":
    main()
