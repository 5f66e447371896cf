"""Static cost of every benchmarked kernel beside its reference, and what compiling costs.

No GPU: each kernel that ``fusion.explain`` lists is compiled for an H100 (sm_90) with
``KernelReport.cost`` and its SASS counted (``codegen.sass_cost``): instructions per
element by class, global accesses, registers, spills, blocks per SM. Next to it, the
*reference*: the same kernel with each op in its tutorial spelling (``tl.sigmoid``).
Times are MODELLED from those counts (a roofline: max of bytes / bandwidth, each
instruction class / its lanes, tensor FLOPs / peak) on an H100 SXM and an L4 at the
benchmarks' sizes, never measured; "% floor" is the floor (all bytes for pointwise
kernels, the [M, N] tensors for matmul ones) over the modelled time.

The second table is what a GPU's first call pays beside the frontend: Triton compiling
each kernel to a cubin (CPU seconds, process and ptxas, with an empty Triton cache).

    python benchmarks/cpu_report.py [--out DIR] [--quick]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"        # before triton is imported: CPU tensors run kernels
os.environ["FUSION_BENCH_DEVICE"] = "cpu"
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="cpu-report-triton-")  # cold compiles

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fusion  # noqa: E402
import fusion.kernel  # noqa: E402
from codegen.sass_cost import GPUS  # noqa: E402

import common  # noqa: E402,F401
from common import Results, base_args  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from binary_classifier import BinaryClassifier  # noqa: E402

CLASSES = ("fp32", "fp64", "mufu", "int", "conversion", "memory")


def sigmoid(x):
    return torch.sigmoid(x)


def silu(x):
    return F.silu(x)


def gated(x, g, b):
    return x * torch.sigmoid(g) + b


def gating(q, k):
    s = q @ k.transpose(-2, -1)
    return s * torch.sigmoid(s)


# label -> (function, explain shapes, elements modelled: the benchmarks' sizes)
WORKLOADS = {
    "sigmoid": (sigmoid, [(64, 256)], 4096 * 4096),
    "silu": (silu, [(64, 256)], 4096 * 4096),
    "x*sigmoid(g)+b": (gated, [(64, 256), (64, 256), (256,)], 4096 * 4096),
    "gating 8192^2 K=64": (gating, [(256, 64), (256, 64)], 8192 * 8192),
    "gating 4x16 heads 2048^2": (gating, [(4, 16, 128, 64)] * 2, 4 * 16 * 2048 * 2048),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def explain(fn, shapes, dtype):
    torch.manual_seed(0)
    return fusion.explain(fn, *[torch.randn(s, dtype=dtype).requires_grad_() for s in shapes])


def cost_rows(label, dname, role, k, elements) -> list[list]:
    """Two rows, ours and the reference: SASS per element, resources, modelled times."""
    full = sum(size for n, size in k.moved if n == k.elements) if k.kind == "matmul" else None
    rows = []
    for spelling, kk in (("ours", k), ("reference", k.reference())):
        c = kk.cost()
        floor_bytes = elements * full if full else kk.bytes_at(elements)
        times = []
        for gpu in GPUS:
            m = kk.modelled(gpu, elements, c)
            times += [m.seconds * 1e6, f"{floor_bytes / gpu.bandwidth / m.seconds:.0%} {m.bound}"]
        accesses = ", ".join(f"{op} x{n}" for op, n in sorted(c.accesses.items()))
        rows.append([label, dname, role, k.name, spelling, c.total, *[c.per_element[x] for x in CLASSES],
                     accesses, c.registers, c.spill_bytes, c.blocks_per_sm(GPUS[0]), *times])
    return rows


def frontend_ms(fn, args) -> float:
    """A fresh fusion.compile and first call in this warm process, less the kernels' runs
    (trace, plan, emit: what the first call pays besides compiling and running)."""
    launches = [0.0]
    launch = fusion.kernel.launch

    def timed(*a, **kw):
        t = time.perf_counter()
        launch(*a, **kw)
        launches[0] += time.perf_counter() - t
    fusion.kernel.launch = timed
    try:
        t = time.perf_counter()
        fusion.compile(fn)(*args)
        return (time.perf_counter() - t - launches[0]) * 1e3
    finally:
        fusion.kernel.launch = launch


def compile_rows(label, fn, args) -> list[list]:
    """Per kernel of ``fn`` (forward and backward): Triton compile CPU seconds, cold."""
    report = fusion.explain(fn, *args)
    rows, first = [], {"fwd": 0.0, "bwd": 0.0}
    for role, kernels in (("fwd", report.kernels), ("bwd", report.backward_kernels)):
        for k in kernels:
            spent = k.compile_for("sm_90").compile_cpu_s
            first[role] += spent
            tiles = k.config.split(" on a GPU")[0] or "BLOCK_SIZE 1024"
            rows.append([label, role, k.name, tiles, spent])
    front = min(frontend_ms(fn, args) for _ in range(3))
    rows.append([label, "first call", f"frontend {front:.1f} ms + forward compiles", "",
                 front / 1e3 + first["fwd"]])
    rows.append([label, "first backward", "backward compiles", "", first["bwd"]])
    return rows


def main():
    args = base_args(__doc__.splitlines()[0]).parse_args()
    res = Results("cpu_report", args.out)
    compile_table(res)  # first: its compiles must find Triton's cache empty
    cost_table(res, args.quick)
    res.save()


def compile_table(res: Results):
    # Triton's one-time cost in a process (MLIR context, dialects): the first compile's extra
    init = explain(sigmoid, [(16,)], torch.float32).kernels[0].reference().compile_for().compile_cpu_s
    rows = [["Triton init", "-", "first compile in a process (a tiny kernel)", "", init]]
    heads = torch.randn(2, 4, 128, 64).requires_grad_()
    for label, fn, inputs in (("gating 512x64 fp32", gating, [torch.randn(512, 64).requires_grad_()] * 2),
                              ("gating 512x64 bf16", gating,
                               [torch.randn(512, 64, dtype=torch.bfloat16).requires_grad_()] * 2),
                              ("gating heads 2x4x128x64 fp32", gating, [heads, heads]),
                              ("binary classifier 512x10", BinaryClassifier(), [torch.randn(512, 10)])):
        rows += compile_rows(label, fn, inputs)
    res.add_table("GPU compile latency: Triton compile per kernel, CPU seconds (cold cache)",
                  ["workload", "pass", "kernel", "tiles", "CPU s"], rows,
                  "CPU s: process and ptxas CPU time of triton.compile for sm_90 (wall time on this shared "
                  "machine is 2-4x more). first call = frontend + the forward kernels' compiles: what a GPU's "
                  "cold first call pays on top of Triton init and running the kernels (modelled from this CPU).")


def cost_table(res: Results, quick: bool):
    rows = []
    for label, (fn, shapes, elements) in WORKLOADS.items():
        for dname in (["bf16"] if "heads" in label or quick else DTYPES):
            rep = explain(fn, shapes, DTYPES[dname])
            for role, kernels in (("fwd", rep.kernels), ("bwd", rep.backward_kernels)):
                for k in kernels:
                    rows += cost_rows(label, dname, role, k, elements)
    gpu_cols = [f"{g.name} {h}" for g in GPUS for h in ("µs (modelled)", "% floor, bound")]
    res.add_table("SASS cost per element and modelled time (sm_90 SASS, no GPU run)",
                  ["workload", "dtype", "pass", "kernel", "spelling", "instr/elem", *CLASSES,
                   "global accesses (per thread)", "regs", "spill B", "blocks/SM", *gpu_cols], rows,
                  "instr/elem: SASS instructions a thread runs per element (matmul: per output), "
                  "all classes; memory: load/store instructions of any space. Modelled at 16M "
                  "elements (pointwise) and the gating benchmarks' shapes; reference = tl.sigmoid.")


if __name__ == "__main__":
    main()
