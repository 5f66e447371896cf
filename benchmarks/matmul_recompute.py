"""Save or recompute: should the backward of ``s = q @ k.T; s * sigmoid(s)`` re-run the matmul?

One training step (bf16, M = N = 4096, K swept) of ``fusion.compile(gating)`` with the choice
forced each way. "recompute" saves only q and k, and the backward kernel recomputes s as a
matmul whose epilogue is dL/ds (2 M N K more FLOPs); "save" also writes s in the forward and
the backward reads it in a pointwise kernel (2 M N s more bytes, s bytes a value, and M N s
more memory held). Tables: ms per step, and its peak GPU memory beyond the inputs (MB). The
headline says per K which side fusion's rule (recompute when K <= ``RECOMPUTE_MAX_K``) picks
and which was faster. fusion has no public option for the choice: the script sets that
module constant around each call (the plan reads it when built, at its first call).
Needs a CUDA GPU; ``--smoke`` checks the code on a CPU (tiny sizes, Triton's interpreter).

    python benchmarks/matmul_recompute.py [--out DIR] [--smoke]
"""
import torch
import triton
import triton.testing

import fusion
import fusion.matmul_kernel as rule

import common  # noqa: F401  (first: it decides TRITON_INTERPRET before triton is imported)
from common import DEVICE, SMOKE, bench, fwd_bwd, gating, peak_mb

N = 64 if SMOKE else 4096
FORCE = {"recompute": 1 << 30, "save": 0}  # RECOMPUTE_MAX_K that forces each side


def forced(side: str):
    compiled = fusion.compile(gating)

    def call(q, k):
        default, rule.RECOMPUTE_MAX_K = rule.RECOMPUTE_MAX_K, FORCE[side]
        try:
            return compiled(q, k)
        finally:
            rule.RECOMPUTE_MAX_K = default
    return call


STEPS = {side: forced(side) for side in FORCE}


@triton.testing.perf_report([
    triton.testing.Benchmark(
        x_names=["K"], x_vals=[16, 160] if SMOKE else [64, 256, 1024], line_arg="side",
        line_vals=list(FORCE), line_names=list(FORCE), ylabel=unit, plot_name=f"recompute-vs-save-{unit}",
        args={"unit": unit})
    for unit in ("ms", "MB")])
def recompute_vs_save(K, side, unit):
    q, k = [(torch.randn(N, K, device=DEVICE, dtype=torch.bfloat16) / K**0.25).requires_grad_()
            for _ in range(2)]
    step = fwd_bwd(STEPS[side], [q, k], torch.randn(N, N, device=DEVICE, dtype=torch.bfloat16))
    return tuple(bench(step)) if unit == "ms" else peak_mb(step)


def main():
    args = common.parser(__doc__).parse_args()
    if not common.start(args):
        return
    ms, _ = common.report(recompute_vs_save, args)
    print("headline: rule picks / faster, per K: " + ", ".join(
        f"K={K:.0f} {'recompute' if rule.recompute_in_backward(int(K)) else 'save'} / "
        f"{'recompute' if r <= s else 'save'}" for K, r, s in zip(ms["K"], ms["recompute (ms)"], ms["save (ms)"])))


if __name__ == "__main__":
    main()
