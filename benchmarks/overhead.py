"""Host overhead: how long does one call take when the work itself is negligible?

Microseconds per call on tiny inputs, for eager, torch.compile (on a GPU also
``mode="reduce-overhead"``: CUDA graphs) and ours: what each costs on the host (guards,
argument checks, allocation, launch). Calls run back to back in batches of about 0.1 s with
one synchronisation per batch, as a training loop runs them; the figure is the median of 5
batches by the wall clock (``time.perf_counter``: ``do_bench`` would time the GPU, not the
host). Meaningful on a CPU too: there "ours" is the default CPU path (no Triton: each
group's torch reference) and torch.compile runs Inductor's C++ code.

    python benchmarks/overhead.py [--out DIR]
"""
import statistics
import time

import torch
import torch.nn.functional as F
import triton
import triton.testing

import common  # noqa: F401  (first: it decides TRITON_INTERPRET before triton is imported)
from common import DEVICE, GPU, compiled, gate, gating

LINES = ["eager", "torch.compile"] + (["reduce-overhead"] if GPU else []) + ["ours"]
def sigmoid_bce(z, y):
    # its kernel makes BCE's value checks: on a GPU, one device-to-host read of the flags per call
    return F.binary_cross_entropy(torch.sigmoid(z), y)


WORKLOADS = {"silu, 32": (F.silu, [(32,)]), "x*sigmoid(g)+b, 8x8": (gate, [(8, 8), (8, 8), (8,)]),
             "gating, 16x16 K=16": (gating, [(16, 16), (16, 16)]),
             "bce(sigmoid(z), y), 32 (value-checked)": (sigmoid_bce, [(32,), (32,)])}


@triton.testing.perf_report(triton.testing.Benchmark(
    x_names=["workload"], x_vals=list(WORKLOADS), line_arg="provider", line_vals=LINES, line_names=LINES,
    ylabel="us per call", plot_name="overhead", args={}))
def overhead(workload, provider):
    fn, shapes = WORKLOADS[workload]
    f = compiled(fn, provider, workload)
    inputs = [torch.rand(s, device=DEVICE) for s in shapes]  # in [0, 1): also a BCE target
    sync = torch.cuda.synchronize if GPU else (lambda: None)

    def batch(calls: int) -> float:  # us per call
        t = time.perf_counter()
        for _ in range(calls):
            f(*inputs)
        sync()
        return (time.perf_counter() - t) / calls * 1e6
    batch(3)  # compiles and warms up
    calls = max(1, min(10_000, int(0.1e6 / batch(3))))  # batches of about 0.1 s
    return statistics.median(batch(calls) for _ in range(5))


def main():
    args = common.parser(__doc__, smoke=False).parse_args()
    common.start(args, needs_gpu=False)
    df = common.report(overhead, args)
    print("headline: us per call, ours (eager, torch.compile): " + ", ".join(
        f"{w.split(',')[0]} {r['ours (us per call)']:.3g} ({r['eager (us per call)']:.3g}, "
        f"{r['torch.compile (us per call)']:.3g})" for w, r in zip(WORKLOADS, df.to_dict("records"))))


if __name__ == "__main__":
    main()
