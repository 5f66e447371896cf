"""Per-call host overhead on tiny inputs (microseconds per call) against eager and torch.compile.

Tiny inputs make the device work negligible, so the time per call is what the
framework costs on the host: guards, argument checks, allocation, launch. Calls
run back to back and the device is synchronised once per batch (what a training
loop sees). Providers: eager, torch.compile (default; on a GPU also
reduce-overhead, i.e. CUDA graphs) and ours.

On a CPU the figures are the CPU path's own overhead: "ours (eager refs)" is
the default CPU path (no Triton: the plan runs each group's torch reference),
torch.compile runs Inductor's C++ code. "ours (interpreter)" is listed for
completeness: it runs the kernels in Triton's interpreter and is not an
overhead figure.

    python benchmarks/overhead.py [--quick] [--out DIR]
"""
from __future__ import annotations

import os
import time

import common  # noqa: F401  (sets up the device before torch/triton/fusion)
import torch

from common import DEVICE, GPU, Results, base_args, make_providers, sync


def gate(x, g, b):
    return x * torch.sigmoid(g) + b


def gating(q, k):
    s = q @ k.transpose(-2, -1)
    return s * torch.sigmoid(s)


def silu(x):
    return torch.nn.functional.silu(x)


def sigmoid_bce(z, y):
    # its kernel makes BCE's value checks: on a GPU, one device-to-host read of the flags per call
    return torch.nn.functional.binary_cross_entropy(torch.sigmoid(z), y)


def workloads():
    r = lambda *s: torch.randn(*s, device=DEVICE)  # noqa: E731
    return {"silu, 32": (silu, [r(32)]),
            "x*sigmoid(g)+b, 8x8": (gate, [r(8, 8), r(8, 8), r(8)]),
            "gating, 16x16 K=16": (gating, [r(16, 16), r(16, 16)]),
            "bce(sigmoid(z), y), 32 (value-checked)": (sigmoid_bce, [r(32), torch.rand(32, device=DEVICE)])}


def per_call_us(fn, seconds: float) -> float:
    """Median over batches of (batch time / calls), batches sized to ~seconds/5."""
    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    n = max(1, min(5000, int(seconds / 5 / max(time.perf_counter() - t, 1e-6))))
    per = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        per.append((time.perf_counter() - t) / n * 1e6)
    return sorted(per)[len(per) // 2]


def ours_in_mode(fn, interpret: str):
    """fusion.compile(fn), its plan built with TRITON_INTERPRET=interpret (CPU only)."""
    import fusion
    compiled = fusion.compile(fn)
    first = [True]

    def call(*args):
        if first[0]:
            old = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = interpret
            try:
                return compiled(*args)
            finally:
                os.environ["TRITON_INTERPRET"] = old
                first[0] = False
        return compiled(*args)
    return call


def main():
    args = base_args(__doc__.splitlines()[0]).parse_args()
    res = Results("overhead", args.out)
    seconds = 0.5 if args.quick else 1.5
    names = ["eager", "torch.compile"] + (["reduce-overhead", "ours"] if GPU else [])
    if not GPU:
        names += ["ours (eager refs)", "ours (interpreter)"]
    rows = []
    for label, (fn, inputs) in workloads().items():
        provs = make_providers(fn, names)
        if not GPU:
            provs["ours (eager refs)"] = ours_in_mode(fn, "0")
            provs["ours (interpreter)"] = ours_in_mode(fn, "1")
        row = [label]
        for name in names:
            try:
                row.append(per_call_us(lambda f=provs[name]: f(*inputs), seconds))
            except Exception as e:  # noqa: BLE001
                row.append(f"error: {type(e).__name__}")
        rows.append(row)
        ours = "ours" if GPU else "ours (eager refs)"
        us = dict(zip(names, row[1:]))
        if isinstance(us[ours], float):
            res.add_summary("host overhead per call, us", f"{label}: {ours}", f"{us[ours]:.1f}",
                            f"eager {us['eager']:.1f}, torch.compile {common.fmt(us['torch.compile'])}")
    where = "GPU (back-to-back calls, one sync per batch)" if GPU else "CPU"
    res.add_table(f"per-call overhead on tiny inputs, {where}: microseconds per call", ["workload"] + names,
                  rows, "" if GPU else "ours (interpreter) runs the kernels in Triton's interpreter: "
                  "not an overhead figure, shown for completeness.")
    res.save()


if __name__ == "__main__":
    main()
