"""Save or recompute: the matmul result of a matmul-epilogue group in backward.

``s = q @ k.T; s * sigmoid(s)`` (M = N, K swept), forward+backward, each
group compiled both ways: "recompute" saves only q and k and the backward
kernel recomputes s as a matmul whose epilogue is dL/ds; "save" also writes
s in forward and the backward is a pointwise kernel reading it. The rule in
``fusion.matmul_kernel.recompute_in_backward`` (recompute when K <=
RECOMPUTE_MAX_K) should pick the faster column, or the one that saves the
memory at little cost; the table prints both with peak memory, and which
side the rule picked.

    python benchmarks/matmul_recompute.py [--quick] [--out DIR] [--smoke]
"""
from __future__ import annotations

import common  # noqa: F401  (sets up the device before torch/triton/fusion)
import torch

from common import (DEVICE, DTYPES, GPU, Results, base_args, forward_backward, peak_memory_mb, run_mode,
                    try_bench)

SIZES = {"full": (4096, [32, 64, 128, 256, 512, 1024]), "quick": (4096, [64, 256, 1024]),
         "smoke": (64, [16, 160])}


def gating(q, k):
    s = q @ k.transpose(-2, -1)
    return s * torch.sigmoid(s)


def compiled_with(max_k: int):
    """``fusion.compile(gating)`` whose matmul groups see ``RECOMPUTE_MAX_K = max_k``
    (the rule is read when the group's kernel is built, on the first call)."""
    import fusion
    import fusion.matmul_kernel as mk
    f = fusion.compile(gating)

    def call(q, k):
        old, mk.RECOMPUTE_MAX_K = mk.RECOMPUTE_MAX_K, max_k
        try:
            return f(q, k)
        finally:
            mk.RECOMPUTE_MAX_K = old
    return call


def measure(n: int, K: int, dtype, quick: bool) -> list:
    q = (torch.randn(n, K, device=DEVICE, dtype=dtype) / K ** 0.25).requires_grad_()
    k = (torch.randn(n, K, device=DEVICE, dtype=dtype) / K ** 0.25).requires_grad_()
    dy = torch.randn(n, n, device=DEVICE, dtype=dtype)
    row = []
    for max_k in (1 << 30, 0):  # always recompute, always save
        step = forward_backward(compiled_with(max_k), [q, k], [q, k], dy)
        ms, err = try_bench(step, quick)
        row += [ms[0] if ms else err, peak_memory_mb(step) if GPU and ms else None]
    from fusion.matmul_kernel import recompute_in_backward
    faster = "recompute" if (row[0] or 1e30) <= (row[2] or 1e30) else "save"
    return [K, *row, "recompute" if recompute_in_backward(K) else "save", faster]


def main():
    args = base_args(__doc__.splitlines()[0], smoke=True).parse_args()
    res = Results("matmul_recompute", args.out)
    mode = run_mode(res, args, "save-vs-recompute timings")
    if mode is None:
        return
    n, ks = SIZES["smoke" if mode == "smoke" else "quick" if args.quick else "full"]
    for dname in (["bf16"] if args.quick or args.smoke else ["bf16", "fp32"]):
        rows = [measure(n, K, DTYPES[dname], args.quick) for K in ks]
        res.add_table(f"gating {n}x{n}, K swept, {dname} fwd+bwd: recompute vs save",
                      ["K", "recompute ms", "recompute peak MB", "save ms", "save peak MB",
                       "rule picks", "faster"], rows,
                      "recompute: backward re-runs q @ k.T with dL/ds as its epilogue; save: forward "
                      "also writes s, backward reads it in a pointwise kernel. Peak MB: memory at the "
                      "peak of forward+backward beyond the inputs.")
    res.save()


if __name__ == "__main__":
    main()
