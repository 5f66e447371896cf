"""Compile latency: how long from ``fusion.compile(f)`` to the first result, against torch.compile?

Medians over ``--reps`` fresh Python processes, by the wall clock (``time.perf_counter``).
"cold": empty cache directories (``FUSION_CACHE_DIR``, ``TRITON_CACHE_DIR``,
``TORCHINDUCTOR_CACHE_DIR``); "warm": a fresh process on the caches its cold run filled.
The clock starts after ``import torch``, ``import fusion`` and the device's own start
(CUDA context, cuBLAS), and stops when the first result is synchronised: the imports the
first call makes (triton, dynamo, inductor, fusion's kernel modules) count. "frontend":
in the cold process, a second ``fusion.compile`` and first call less a steady call: trace,
plan and emit, the kernels already built (target <= 20 ms). Workloads: gating
``s = q @ k.T; s * sigmoid(s)`` and ``x * sigmoid(g) + b`` (GPU: bf16, q, k 8192 x 64,
x 4096 x 4096; CPU: fp32, 512 x 64, 1024 x 1024). Meaningful on a CPU too: there "ours"
is the default CPU path (no Triton: each group's torch reference), "ours (interpreter)"
runs the kernels in Triton's interpreter (its running time dominates), torch.compile is
Inductor's C++ backend; target: ours cold <= 1/50 of torch.compile's.

    python benchmarks/compile_latency.py [--reps N] [--out DIR]
"""
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import fusion

import common  # noqa: F401  (this checkout's fusion; no triton)
from common import gate, gating

WORKLOADS = {"gating": (gating, [(8192, 64)] * 2, [(512, 64)] * 2),  # function, its inputs on a GPU, on a CPU
             "x*sigmoid(g)+b": (gate, [(4096, 4096)] * 2 + [(4096,)], [(1024, 1024)] * 2 + [(1024,)])}


def timed(f, args, sync) -> float:
    t = time.perf_counter()
    f(*args)
    sync()
    return (time.perf_counter() - t) * 1e3


def child(provider: str, workload: str) -> dict:
    """One fresh process: ms to the first result and (ours) of the frontend."""
    gpu = torch.cuda.is_available()
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if gpu:  # the context and cuBLAS handle: paid by everyone, part of no one's compile
        (torch.ones(64, 64, device="cuda") @ torch.ones(64, 64, device="cuda")).sum().item()
    fn, gpu_shapes, cpu_shapes = WORKLOADS[workload]
    args = [torch.randn(s, device="cuda", dtype=torch.bfloat16) if gpu else torch.randn(s)
            for s in (gpu_shapes if gpu else cpu_shapes)]
    t = time.perf_counter()
    compiled = fusion.compile(fn) if provider == "ours" else torch.compile(fn)
    compiled(*args)
    sync()
    out = {"first": (time.perf_counter() - t) * 1e3}
    steady = min(timed(compiled, args, sync) for _ in range(3))
    if provider == "ours":  # a second compile and first call, its kernels already built, less a steady call
        out["frontend"] = timed(lambda *a: fusion.compile(fn)(*a), args, sync) - steady
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:  # before triton is imported: its import counts
    print(json.dumps(child(*sys.argv[2:4])))
    sys.exit(0)

import triton.testing  # noqa: E402

LINES = ["ours", "torch.compile"] if common.GPU else ["ours", "ours (interpreter)", "torch.compile"]


@functools.cache
def runs(workload: str, provider: str, reps: int) -> tuple[list, list]:
    """The child's results in ``reps`` (cold, warm) pairs of fresh processes, each pair on new caches."""
    cold, warm = [], []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="bench-caches-") as d:
            env = dict(os.environ, FUSION_CACHE_DIR=f"{d}/fusion", TRITON_CACHE_DIR=f"{d}/triton",
                       TORCHINDUCTOR_CACHE_DIR=f"{d}/inductor",
                       TRITON_INTERPRET="1" if provider == "ours (interpreter)" else "0")
            for results in (cold, warm):
                proc = subprocess.run([sys.executable, __file__, "--child", provider.split()[0], workload],
                                      env=env, capture_output=True, text=True, timeout=900)
                if proc.returncode:
                    print(f"{provider}, {workload}: failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
                results.append(json.loads(proc.stdout.splitlines()[-1]) if proc.returncode == 0 else {})
    return cold, warm


@triton.testing.perf_report([
    triton.testing.Benchmark(
        x_names=["workload"], x_vals=list(WORKLOADS), line_arg="provider", line_vals=LINES, line_names=LINES,
        ylabel="ms", y_log=True, plot_name=f"compile-latency-{what}", args={"what": what})
    for what in ("cold", "warm", "frontend")])
def latency(workload, provider, what, reps):
    cold, warm = runs(workload, provider, reps)
    if what == "frontend" and provider != "ours":  # the interpreter's running time would swamp it
        return float("nan")
    key = "frontend" if what == "frontend" else "first"
    values = [r[key] for r in (warm if what == "warm" else cold) if key in r]
    return statistics.median(values) if values else float("nan")


def main():
    p = common.parser(__doc__, smoke=False)
    p.add_argument("--reps", type=int, default=3, help="fresh (cold, warm) process pairs per figure")
    args = p.parse_args()
    common.start(args, needs_gpu=False)
    cold, warm, frontend = common.report(latency, args, reps=args.reps)
    common.headline("ours' cold first result / torch.compile's (CPU target <= 0.02); frontend ms "
                    "(target <= 20)", {f"{w} {p}": r[p + " (ms)"] / r["torch.compile (ms)"]
                                       for w, r in zip(WORKLOADS, cold.to_dict("records"))
                                       for p in LINES[:-1]}
                    | {f"{w} frontend ms": ms for w, ms in zip(WORKLOADS, frontend["ours (ms)"])})


if __name__ == "__main__":
    main()
