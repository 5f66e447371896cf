"""Pointwise chains: how close do silu(x) and x*sigmoid(g)+b come to the memory bandwidth?

GB/s of the forward pass and of forward+backward, for eager PyTorch, torch.compile
(its defaults: from the second size on, a dynamic-shape kernel), ours
(``fusion.compile``) and ``x.clone()``, the bandwidth ceiling. Bytes are counted as
in the Triton tutorials: the least traffic the computation needs, each input read
once and each output written once, the same count for every provider (n elements
of s bytes; b is one row of h = 4096):

    silu            forward   read x, write y                          2 n s
                    fwd+bwd   + read x, dy, write dx                   5 n s
    gate = x*sigmoid(g)+b
                    forward   read x, g, b, write y                    (3 n + h) s
                    fwd+bwd   + read x, g, dy, write dx, dg, db        (8 n + 2 h) s
    x.clone()                 read x, write its copy                   2 n s

Targets (H100): ours >= 0.92x clone's GB/s forward, >= 0.88x forward+backward.
Needs a CUDA GPU; ``--smoke`` checks the code on a CPU (tiny sizes, Triton's
interpreter, no torch.compile).

    python benchmarks/pointwise.py [--out DIR] [--smoke]
"""
import torch
import torch.nn.functional as F
import triton
import triton.testing

import common  # noqa: F401  (first: it decides TRITON_INTERPRET before triton is imported)
from common import DEVICE, DTYPES, SMOKE, bench, compiled, fwd_bwd, gate, gpu_lines

ROW = 4096  # h
# name -> (function, full-size inputs, has b, bytes forward, bytes forward+backward) for n elements of s bytes
WORKLOADS = {
    "silu": (F.silu, 1, False, lambda n, s: 2 * n * s, lambda n, s: 5 * n * s),
    "gate": (gate, 2, True, lambda n, s: (3 * n + ROW) * s, lambda n, s: (8 * n + 2 * ROW) * s),
}
CONFIGS = [(w, p, d) for d in ("bf16", "fp32") for w in WORKLOADS for p in ("fwd", "fwd+bwd")]
LINES = gpu_lines(["x.clone()", "eager", "torch.compile", "ours"])


@triton.testing.perf_report([
    triton.testing.Benchmark(
        x_names=["n"], x_vals=[2**12, 2**14] if SMOKE else [2**20, 2**24, 2**28], x_log=True,
        line_arg="provider", line_vals=LINES, line_names=LINES, ylabel="GB/s",
        plot_name=f"pointwise-{w}-{p}-{d}", args={"workload": w, "passes": p, "dtype": d})
    for w, p, d in CONFIGS])
def pointwise(n, provider, workload, passes, dtype):
    fn, full, has_b, fwd_bytes, fwd_bwd_bytes = WORKLOADS[workload]
    grad = passes == "fwd+bwd"
    inputs = [torch.randn(n // ROW, ROW, device=DEVICE, dtype=DTYPES[dtype]) for _ in range(full)]
    inputs += [torch.randn(ROW, device=DEVICE, dtype=DTYPES[dtype])] if has_b else []
    s = inputs[0].element_size()
    if provider == "x.clone()":
        ms, nbytes = bench(inputs[0].clone), 2 * n * s
    else:
        f = compiled(fn, provider, (workload, passes, dtype))
        for t in inputs:
            t.requires_grad_(grad)
        ms = bench(fwd_bwd(f, inputs, torch.randn_like(inputs[0])) if grad else lambda: f(*inputs))
        nbytes = (fwd_bwd_bytes if grad else fwd_bytes)(n, s)
    return tuple(nbytes * 1e-6 / m for m in ms)  # GB/s of the median, p20 and p80 times


def main():
    args = common.parser(__doc__).parse_args()
    if not common.start(args):
        return
    dfs = common.report(pointwise, args)
    common.headline("ours / x.clone() GB/s at the largest size (target >= 0.92 fwd, >= 0.88 fwd+bwd)",
                    {" ".join(c): df["ours (GB/s)"].iloc[-1] / df["x.clone() (GB/s)"].iloc[-1]
                     for c, df in zip(CONFIGS, dfs)})


if __name__ == "__main__":
    main()
