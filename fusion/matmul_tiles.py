"""Tile configurations for matmul-epilogue kernels: a heuristic table by dtype and shape.

On a GPU the kernel is autotuned (``triton.autotune``, keyed by M, N, K) over
the few candidates the table gives for its dtype and shape; the first
candidate is the heuristic's own pick, the one ``explain`` reports and
``compile_for`` compiles. Triton's interpreter cannot autotune: on CPU one
config is used, with tiles as large as the problem (up to 128) because the
interpreter pays per program, not per element.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TileConfig:
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    GROUP_M: int = 8
    num_warps: int = 4
    num_stages: int = 3

    @property
    def constexprs(self) -> dict:
        return {"BLOCK_M": self.BLOCK_M, "BLOCK_N": self.BLOCK_N, "BLOCK_K": self.BLOCK_K,
                "GROUP_M": self.GROUP_M}

    def __str__(self) -> str:
        return (f"BLOCK {self.BLOCK_M}x{self.BLOCK_N}x{self.BLOCK_K}, GROUP_M {self.GROUP_M}, "
                f"{self.num_warps} warps, {self.num_stages} stages")


# Candidates per dtype, best first for large problems (registers a thread, checked
# with compile_for on the attention-gating kernels: see tests/test_matmul_ptx.py).
# Half types and tf32 feed tensor cores (wgmma on sm_90, mma.sync on sm_80); 128x128
# tiles use 8 warps: 64 accumulator values a thread, 128-180 registers for a light
# epilogue. A heavy one (a backward's gradient chain) reached 255 on sm_80 there, so
# heavy epilogues keep to 32 values a thread (128x64 on 8 warps: 128 registers).
# fp32 without tf32 runs on FMA units, whose 128-wide tiles reach 254 registers:
# 64x64. fp64 uses mma.sync (DMMA) on both archs; 64x64 reaches 252: 32x32 first.
_TABLE = {
    "half": [TileConfig(128, 128, 64, 8, 8, 3), TileConfig(128, 256, 64, 8, 8, 3),
             TileConfig(128, 64, 64, 8, 8, 3), TileConfig(128, 64, 64, 8, 4, 4),
             TileConfig(64, 64, 64, 8, 4, 4)],
    "tf32": [TileConfig(128, 128, 32, 8, 8, 3), TileConfig(128, 64, 32, 8, 8, 3),
             TileConfig(128, 64, 32, 8, 4, 4), TileConfig(64, 64, 32, 8, 4, 4)],
    "fp32": [TileConfig(64, 64, 32, 8, 4, 3), TileConfig(64, 32, 32, 8, 4, 3)],
    "fp64": [TileConfig(32, 32, 16, 8, 4, 3), TileConfig(64, 64, 16, 8, 8, 3)],
}


def _family(dtype: torch.dtype, precision: str) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "half"
    if dtype == torch.float32:
        return "tf32" if precision == "tf32" else "fp32"
    return "fp64"


def gpu_candidates(M: int, N: int, K: int, dtype: torch.dtype, precision: str,
                   heavy_epilogue: bool) -> list[TileConfig]:
    """The configs autotuning tries, the heuristic's pick first.

    Tiles much larger than the problem only add masked work: a candidate is
    kept when its tile fits in the next power of two of M and N (or 32); when
    none does, the table's smallest is used. For a heavy epilogue (several ops,
    helper calls such as sigmoid, full-tile inputs) the pick is the first tile
    of at most 32 values a thread, since each value the epilogue holds costs
    that many registers; autotuning still tries the larger ones (a spill there
    only costs time, and the autotuner measures it).
    """
    table = _TABLE[_family(dtype, precision)]
    fits = [c for c in table
            if c.BLOCK_M <= max(_pow2(M), 32) and c.BLOCK_N <= max(_pow2(N), 32)] or [table[-1]]
    roomy = [c for c in fits if c.BLOCK_M * c.BLOCK_N <= 32 * 32 * c.num_warps]
    pick = roomy[0] if heavy_epilogue and roomy else fits[0]
    return [_fit_k(c, K) for c in [pick] + [c for c in fits if c is not pick]]


def _fit_k(c: TileConfig, K: int) -> TileConfig:
    """A short K (a head dim, a small layer) needs neither a deep BLOCK_K nor more
    pipeline stages than it has K steps: both would only hold registers and shared memory."""
    block_k = min(c.BLOCK_K, max(16, _pow2(K)))
    steps = -(-K // block_k)
    return TileConfig(c.BLOCK_M, c.BLOCK_N, block_k, c.GROUP_M, c.num_warps,
                      min(c.num_stages, max(2, steps)))


def interpreter_config(M: int, N: int, K: int) -> TileConfig:
    """One config for Triton's interpreter: few programs (each costs ~0.6 ms), tiles
    of at least 16 (``tl.dot``'s minimum) and at most 128 a side."""
    def side(n: int) -> int:
        return min(max(16, _pow2(n)), 128)
    return TileConfig(side(M), side(N), side(K), 8, 4, 1)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
