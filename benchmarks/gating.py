"""Attention gating ``s = q @ k.T; s * sigmoid(s)``: how close to the matmul alone, in what memory?

Providers: eager, torch.compile (``--max-autotune`` adds that mode: minutes of
autotuning), ours (``fusion.compile``) and the product alone (cuBLAS), the ceiling: it
moves the same bytes and does the same FLOPs.

1. ``gating-*``: K = 64, one N x N head and 4 x 16 heads of 2048 x 2048; bf16 forward and
   fwd+bwd, fp16 and fp32 forward (fp32 products in full fp32, torch's default). GB/s of
   the least traffic (B heads, s bytes): forward reads q, k and writes the result,
   B s (2 N K + N^2); fwd+bwd also reads q, k, dy and writes dq, dk: B s (6 N K + 2 N^2).
   The N^2 output dominates: the work is memory-bound. TFLOP/s = GB/s x FLOPs / bytes,
   with 2 B N^2 K FLOPs forward and 6 B N^2 K fwd+bwd (ours' recomputed s not counted).
2. ``epilogue-tflops``: ``s = a @ b; s * sigmoid(s)``, M = N = 4096, bf16 forward, K large
   enough to be compute-bound: TFLOP/s (2 M N K / time) against cuBLAS's ``a @ b``.
3. ``training-peak-mb``: one bf16 training step of gating: GPU memory at its peak beyond the
   inputs (MB).

Targets (H100): ours' forward time <= 1.10x the product's, >= 5x eager's speed, >= 2.5x
torch.compile's, >= 1x max-autotune's; the epilogue >= 0.90x cuBLAS's TFLOP/s.
Needs a CUDA GPU; ``--smoke`` checks the code on a CPU (tiny sizes, Triton's interpreter).

    python benchmarks/gating.py [--out DIR] [--smoke] [--max-autotune]
"""
import sys

import torch
import triton
import triton.testing

import common  # noqa: F401  (first: it decides TRITON_INTERPRET before triton is imported)
from common import DEVICE, DTYPES, SMOKE, bench, compiled, fwd_bwd, gating, gpu_lines, peak_mb

HEAD_DIM = 64  # K of the gating tables
COMPILERS = gpu_lines(["eager", "torch.compile"] + (["max-autotune"] if "--max-autotune" in sys.argv else []))
SHAPES = [(1, 128), (4, 64)] if SMOKE else [(1, 8192), (64, 2048)]  # (heads, N)


def matmul(q, k):
    return q @ k.transpose(-2, -1)


def matmul_epilogue(a, b):
    s = a @ b
    return s * torch.sigmoid(s)


def qk(heads: int, n: int, dtype: str, grad: bool) -> list[torch.Tensor]:
    shape = (n, HEAD_DIM) if heads == 1 else (4, heads // 4, n, HEAD_DIM)
    return [(torch.randn(shape, device=DEVICE, dtype=DTYPES[dtype]) / HEAD_DIM**0.25).requires_grad_(grad)
            for _ in range(2)]


@triton.testing.perf_report([
    triton.testing.Benchmark(
        x_names=["heads", "N"], x_vals=SHAPES, line_arg="provider", line_vals=["matmul", *COMPILERS, "ours"],
        line_names=["matmul", *COMPILERS, "ours"], ylabel="GB/s", plot_name=f"gating-{d}-{p}",
        args={"dtype": d, "passes": p})
    for d, p in [("bf16", "fwd"), ("bf16", "fwd+bwd"), ("fp16", "fwd"), ("fp32", "fwd")]])
def gating_gbps(heads, N, provider, dtype, passes):
    grad = passes == "fwd+bwd"
    q, k = qk(heads, N, dtype, grad)
    f = matmul if provider == "matmul" else compiled(gating, provider, (dtype, passes))
    ms = bench(fwd_bwd(f, [q, k], torch.randn(*q.shape[:-1], N, device=DEVICE, dtype=q.dtype)) if grad
               else lambda: f(q, k))
    nbytes = heads * q.element_size() * N * ((6 * HEAD_DIM + 2 * N) if grad else (2 * HEAD_DIM + N))
    return tuple(nbytes * 1e-6 / m for m in ms)


@triton.testing.perf_report(triton.testing.Benchmark(
    x_names=["K"], x_vals=[32, 64] if SMOKE else [1024, 4096], line_arg="provider",
    line_vals=["cuBLAS", *COMPILERS, "ours"], line_names=["cuBLAS", *COMPILERS, "ours"], ylabel="TFLOP/s",
    plot_name="epilogue-tflops", args={"M": 64 if SMOKE else 4096}))
def epilogue_tflops(K, provider, M):
    a, b = [torch.randn(shape, device=DEVICE, dtype=torch.bfloat16) / K**0.25 for shape in [(M, K), (K, M)]]
    f = torch.matmul if provider == "cuBLAS" else compiled(matmul_epilogue, provider, "epilogue")
    return tuple(2 * M * M * K * 1e-9 / m for m in bench(lambda: f(a, b)))


@triton.testing.perf_report(triton.testing.Benchmark(
    x_names=["N"], x_vals=[128] if SMOKE else [4096, 8192], line_arg="provider", line_vals=[*COMPILERS, "ours"],
    line_names=[*COMPILERS, "ours"], ylabel="MB", plot_name="training-peak-mb", args={}))
def training_peak_mb(N, provider):
    q, k = qk(1, N, "bf16", True)
    dy = torch.randn(N, N, device=DEVICE, dtype=torch.bfloat16)
    return peak_mb(fwd_bwd(compiled(gating, provider, "peak"), [q, k], dy))


def main():
    p = common.parser(__doc__)
    p.add_argument("--max-autotune", action="store_true", help="also torch.compile(mode='max-autotune')")
    args = p.parse_args()
    if not common.start(args):
        return
    fwd = common.report(gating_gbps, args)[0].iloc[0]  # bf16 forward, one head
    tflops, peak = common.report(epilogue_tflops, args).iloc[-1], common.report(training_peak_mb, args).iloc[-1]
    n, k = SHAPES[0][1], HEAD_DIM
    flop_per_byte = n * k / (2 * k + n)  # bf16: 2 N^2 K / (2 (2 N K + N^2))
    common.headline(f"gating bf16 fwd N={n}, ours' speed / provider's (target matmul >= 0.91, eager >= 5, "
                    "torch.compile >= 2.5, max-autotune >= 1); ours' TFLOP/s",
                    {p: fwd["ours (GB/s)"] / fwd[f"{p} (GB/s)"] for p in ["matmul", *COMPILERS]}
                    | {"TFLOP/s": fwd["ours (GB/s)"] * flop_per_byte / 1e3})
    common.headline(f"ours / cuBLAS TFLOP/s at K={tflops['K']:.0f} (target >= 0.9); ours / eager peak MB of a "
                    f"training step at N={peak['N']:.0f}", {"TFLOP/s": tflops["ours (TFLOP/s)"] / tflops[
                        "cuBLAS (TFLOP/s)"], "peak MB": peak["ours (MB)"] / peak["eager (MB)"]})


if __name__ == "__main__":
    main()
