"""CPU mode: the bytes-moved model and the sm_90 compile report of every benchmarked kernel.

Needs no GPU. Each benchmarked workload is compiled and run once on CPU tensors
(kernels in Triton's interpreter) through ``fusion.explain``; for every
generated kernel, forward and backward, it reports:

- bytes moved: what the kernel reads and writes (``bytes_read + bytes_written``)
  against what eager PyTorch's separate ops read and write for the same nodes
  (``eager_bytes``), at the size used here; the ratio does not depend on it;
- what autograd saves for backward, ours against eager;
- the kernel compiled for an H100 (``compile_for("sm_90")``: PTX and cubin
  without a GPU): registers per thread, spilled bytes (local memory, 0 = no
  spill), shared memory, 16-byte global loads (``ld.global.v4``), async copies
  (``cp.async``) and wgmma instructions in the PTX.

Sizes are modest (the interpreter runs about 0.6 ms per program); kernels are
the ones the GPU benchmarks run, up to the tile/block sizes chosen per shape.

    python benchmarks/cpu_report.py [--out DIR] [--arch sm_90]
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"        # before triton is imported: CPU tensors run kernels
os.environ["FUSION_BENCH_DEVICE"] = "cpu"

import common  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import Results, base_args  # noqa: E402


def gate(x, g, b):
    return x * torch.sigmoid(g) + b


def gating(q, k):
    s = q @ k.transpose(-2, -1)
    return s * torch.sigmoid(s)


def matmul_epilogue(a, b):
    s = a @ b
    return s * torch.sigmoid(s)


def workloads(quick: bool) -> list[tuple]:
    """(label, function, input shapes, dtypes, needs grad) as in the GPU benchmarks, smaller."""
    dts = ["fp32", "bf16"]
    out = [("silu", F.silu, [(256, 4096)], dts, True),
           ("x*sigmoid(g)+b", gate, [(256, 4096), (256, 4096), (4096,)], dts, True),
           ("gating 512x512 K=64", gating, [(512, 64), (512, 64)],
            dts if quick else ["fp32", "bf16", "fp16"], True),
           ("gating 2x4 heads 256x256 K=64", gating, [(2, 4, 256, 64)] * 2, ["bf16"], True),
           ("matmul+epilogue 128x128 K=4096", matmul_epilogue, [(128, 4096), (4096, 128)], ["bf16"], False)]
    return out


def explain_one(fn, shapes, dtype, grad: bool):
    import fusion
    torch.manual_seed(0)
    args = [torch.randn(s, dtype=dtype).requires_grad_(grad) for s in shapes]
    return fusion.explain(fn, *args)


def compile_row(kernel, arch: str) -> list:
    try:
        rep = kernel.compile_for(arch)
        return [rep.registers, rep.spills, rep.shared_bytes, rep.count("ld.global.v4"), rep.count("cp.async"),
                rep.count("wgmma") if arch == "sm_90" else rep.count("mma.sync"),
                "ok" if rep.spills == 0 else "SPILLS"]
    except Exception as e:  # noqa: BLE001  report it, go on with the next kernel
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        return [None] * 6 + [f"compile failed: {type(e).__name__}: {msg[:70]}"]


def main():
    p = base_args(__doc__.splitlines()[0])
    p.add_argument("--arch", default="sm_90", choices=["sm_90", "sm_80"])
    args = p.parse_args()
    res = Results("cpu_report", args.out)
    from common import DTYPES
    bytes_rows, saved_rows, gpu_rows, seen = [], [], [], {}
    for label, fn, shapes, dtypes, grad in workloads(args.quick):
        for dname in dtypes:
            try:
                rep = explain_one(fn, shapes, DTYPES[dname], grad)
            except Exception as e:  # noqa: BLE001
                bytes_rows.append([label, dname, "-", f"explain failed: {type(e).__name__}: {e}"[:90]])
                continue
            for role, kernels in (("fwd", rep.kernels), ("bwd", rep.backward_kernels)):
                for k in kernels:
                    moved = k.bytes_read + k.bytes_written
                    bytes_rows.append([label, dname, role, k.name, k.kind, moved / 2**20, k.eager_bytes / 2**20,
                                       k.eager_bytes / moved if moved else None])
                    key = (k.path, k.name, repr(getattr(k, "_example", None)))  # one source, many dtypes
                    if key not in seen:
                        seen[key] = compile_row(k, args.arch)
                        print(f"  compiled {k.name} ({label} {dname} {role}) for {args.arch}: {seen[key]}",
                              flush=True)
                    gpu_rows.append([label, dname, role, k.name, k.kind] + seen[key])
            if rep.extern:
                bytes_rows.append([label, dname, "-", "not fused: " + ", ".join(op for op, _ in rep.extern)])
            if grad and rep.eager_saved_bytes is not None:
                saved_rows.append([label, dname, rep.saved_bytes / 2**20, rep.eager_saved_bytes / 2**20,
                                   rep.saved_bytes / rep.eager_saved_bytes if rep.eager_saved_bytes else None])
    res.add_table("bytes moved per kernel: ours against eager's separate ops (MB at these sizes)",
                  ["workload", "dtype", "pass", "kernel", "kind", "ours MB", "eager MB", "eager / ours"],
                  bytes_rows, "ours = bytes_read + bytes_written of the fused kernel; eager = the sum over "
                  "the same nodes of what each separate op reads and writes (fusion.explain's model, "
                  "not a measurement). Inputs are read once, outputs written once.")
    res.add_table("saved for backward (MB): ours against eager autograd", ["workload", "dtype", "ours MB",
                  "eager MB", "ours / eager"], saved_rows)
    res.add_table(f"{args.arch} compile report (triton.compile for GPUTarget cuda {args.arch[3:]}, no GPU)",
                  ["workload", "dtype", "pass", "kernel", "kind", "registers", "spill bytes", "shared bytes",
                   "ld.global.v4", "cp.async", "wgmma" if args.arch == "sm_90" else "mma.sync", "verdict"], gpu_rows,
                  "registers per thread and spills (local memory bytes per thread) read by cuobjdump "
                  "--dump-resource-usage; PTX counts are lines of the PTX text holding that instruction (ld.global.v4: 16-byte "
                  "global loads; cp.async: asynchronous global-to-shared copies, how matmul tiles load; "
                  "wgmma/mma.sync: tensor-core instructions).")
    moved = [r for r in bytes_rows if len(r) == 8 and r[-1]]
    if moved:
        res.add_summary("bytes moved, eager / ours (min..max over kernels)", f"{len(moved)} kernels",
                        f"{min(r[-1] for r in moved):.2f}..{max(r[-1] for r in moved):.2f}")
    spills = [r for r in gpu_rows if r[-1] != "ok"]
    res.add_summary(f"{args.arch} kernels compiled, spilling or failing", f"{len(seen)} kernels",
                    f"{len({(r[3], r[-1]) for r in spills})} not ok" if spills else "all compile, no spills")
    res.save()


if __name__ == "__main__":
    main()
