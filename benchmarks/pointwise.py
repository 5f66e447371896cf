"""Pointwise chains: silu(x) and x*sigmoid(g)+b, forward and forward+backward, GB/s.

Providers side by side in one run: eager, torch.compile (default and
max-autotune), ours (fusion.compile) and the bandwidth ceiling ``x.clone()``.
Bytes are counted the way the Triton tutorials count them: the least traffic
the computation needs (each input read once, each output written once),
the same formula for every provider:

    silu            forward   read x, write y                      2 n s
                    fwd+bwd   + read x, dy, write dx               5 n s
    x*sigmoid(g)+b  forward   read x, g, b, write y                3 n s + h s
                    fwd+bwd   + read x, g, dy, write dx, dg, db    8 n s + 2 h s

(n elements, s bytes each, b of length h broadcast over rows.) The ceiling's
GB/s is ``x.clone()``'s (2 n s); each table shows ours as a fraction of it,
with the target next to it. GPU only; on a CPU it says so and stops
(``--smoke`` runs the same code at tiny sizes to check it, not to measure).
``--quick`` (the GPU check) measures 1M, 16M and 512M elements and leaves
max-autotune out (for pointwise code it differs from the default mode mainly
by CUDA graphs, and its compiles would not fit the check's time).

    python benchmarks/pointwise.py [--quick] [--out DIR] [--budget SECONDS]
"""
from __future__ import annotations

import gc

import common  # noqa: F401  (sets up the device before torch/triton/fusion)
import torch
import torch.nn.functional as F

from common import (DEVICE, DTYPES, GPU, TARGETS, Budget, Results, base_args, finish, forward_backward,
                    make_providers, run_mode, size_label, training_step_peaks, try_bench)

ROW = 4096                     # elements per row; b has this length
SIZES = [2**20, 2**22, 2**24, 2**26, 2**28, 2**29]   # 1M .. 512M elements
QUICK_SIZES = [2**20, 2**24, 2**29]
SMOKE_SIZES = [2**12, 2**14]
PROVIDERS = ["eager", "torch.compile", "max-autotune", "ours"]


def gate(x, g, b):
    return x * torch.sigmoid(g) + b


# name -> (function, number of full-size inputs, has bias, bytes fwd, bytes fwd+bwd) per (n, h, s)
WORKLOADS = {
    "silu": (F.silu, 1, False, lambda n, h, s: 2 * n * s, lambda n, h, s: 5 * n * s),
    "x*sigmoid(g)+b": (gate, 2, True, lambda n, h, s: 3 * n * s + h * s,
                       lambda n, h, s: 8 * n * s + 2 * h * s),
}


def make_inputs(name: str, n: int, dtype, grad: bool) -> list[torch.Tensor]:
    _, full, bias, _, _ = WORKLOADS[name]
    ts = [torch.randn(n // ROW, ROW, device=DEVICE, dtype=dtype) for _ in range(full)]
    if bias:
        ts.append(torch.randn(ROW, device=DEVICE, dtype=dtype))
    return [t.requires_grad_(grad) for t in ts]


def measure(name: str, passes: str, dtype, n: int, providers: list[str], quick: bool) -> dict:
    """GB/s of every provider (and the clone ceiling) for one configuration."""
    fn, _, _, fwd_bytes, fb_bytes = WORKLOADS[name]
    grad = passes == "fwd+bwd"
    inputs = make_inputs(name, n, dtype, grad)
    s = inputs[0].element_size()
    nbytes = (fb_bytes if grad else fwd_bytes)(n, ROW, s)
    gbps = lambda ms: nbytes * 1e-9 / (ms * 1e-3)  # noqa: E731
    out = {}
    x = inputs[0].detach()
    ms, err = try_bench(lambda: x.clone(), quick)
    out["x.clone()"] = (2 * n * s * 1e-9 / (ms[0] * 1e-3), "") if ms else (None, err)
    dy = torch.randn_like(x) if grad else None
    for pname, f in make_providers(fn, providers).items():
        call = forward_backward(f, inputs, inputs, dy) if grad else (lambda f=f: f(*inputs))
        ms, err = try_bench(call, quick)
        out[pname] = (gbps(ms[0]), "") if ms else (None, err)
    del inputs, dy, x
    gc.collect()
    if GPU:
        torch.cuda.empty_cache()
    return out


def run_sweep(res: Results, sizes: list[int], providers: list[str], budget: Budget,
              quick: bool, dtypes: list[str]) -> list[dict]:
    """Every configuration at the largest size first, then the next size down, so that
    a time budget cuts small sizes (launch-bound, least telling) rather than whole tables."""
    configs = [(name, passes, dname) for name in WORKLOADS for passes in ("forward", "fwd+bwd")
               for dname in dtypes]
    got = {}
    for n in sorted(sizes, reverse=True):
        for name, passes, dname in configs:
            if not budget.spent():
                got[(name, passes, dname, n)] = measure(name, passes, DTYPES[dname], n, providers, quick)
    panels = []
    for name, passes, dname in configs:
        target = TARGETS["pointwise fwd / clone GB/s" if passes == "forward"
                         else "pointwise fwd+bwd / clone GB/s"]
        rows, series, notes = [], {p: [] for p in ["x.clone()"] + providers}, set()
        for n in sizes:
            m = got.get((name, passes, dname, n))
            if m is None:
                rows.append([size_label(n), "skipped: time budget"])
                for p in series:
                    series[p].append(None)
                continue
            frac = m["ours"][0] / m["x.clone()"][0] if m["ours"][0] and m["x.clone()"][0] else None
            rows.append([size_label(n)] + [m[p][0] for p in series] + [frac, target.check(frac).split(": ")[1]])
            for p in series:
                series[p].append(m[p][0])
                if m[p][1]:
                    notes.add(f"{p}: {m[p][1]}")
        config = f"{name} {passes} {dname}"
        res.add_table(f"{config}: GB/s", ["elements"] + list(series) + ["ours / clone", f"target {target.text()}"],
                      rows, "; ".join(sorted(notes)))
        done = [r for r in rows if len(r) > 2 and isinstance(r[-2], float)]
        if done:
            res.add_summary("pointwise GB/s, ours / clone", f"{config} {done[-1][0]}",
                            f"{done[-1][-2]:.3f}", target.check(done[-1][-2]))
        panels.append({"title": config, "x": sizes, "series": series, "xlabel": "elements", "ylabel": "GB/s"})
    return panels


def peak_memory(res: Results, n: int, dtypes: list[str]):
    """Peak GPU memory of one training step of x*sigmoid(g)+b, against eager."""
    rows = []
    for dname in dtypes:
        inputs = make_inputs("x*sigmoid(g)+b", n, DTYPES[dname], True)
        dy = torch.randn_like(inputs[0])
        mb = training_step_peaks(gate, inputs, dy)
        rows.append([dname] + [mb.get(p) for p in ("eager", "torch.compile", "ours")]
                    + [mb["ours"] / mb["eager"] if mb.get("ours") and mb.get("eager") else None])
        del inputs, dy
    res.add_table(f"x*sigmoid(g)+b training step, {size_label(n)} elements: peak GPU memory (MB)",
                  ["dtype", "eager", "torch.compile", "ours", "ours / eager"], rows,
                  "Memory allocated at the peak of forward+backward beyond the inputs.")
    for r in rows:
        if r[-1] is not None:
            res.add_summary("training-step peak memory, ours / eager", f"x*sigmoid(g)+b {r[0]}",
                            f"{r[-1]:.2f}")


def main():
    args = base_args(__doc__.splitlines()[0], smoke=True).parse_args()
    res = Results("pointwise", args.out)
    mode = run_mode(res, args, "pointwise GB/s")
    if mode is None:
        return
    if mode == "smoke":
        sizes, providers, dtypes = SMOKE_SIZES, ["eager", "ours"], ["fp32"]
    else:
        sizes = QUICK_SIZES if args.quick else SIZES
        providers = [p for p in PROVIDERS if p != "max-autotune"] if args.quick else PROVIDERS
        dtypes = ["fp32", "bf16"]
    budget = Budget(args.budget)
    panels = run_sweep(res, sizes, providers, budget, args.quick, dtypes)
    if GPU and not budget.spent():
        peak_memory(res, 2**24, dtypes)
    finish(res, args, "pointwise.png", "pointwise GB/s (higher is better)", panels)


if __name__ == "__main__":
    main()
