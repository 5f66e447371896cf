"""Tile configurations for matmul-epilogue kernels: a heuristic table by dtype and shape.

On a GPU the kernel runs the heuristic's pick, the first of the few candidates
the table gives for its dtype, shape and epilogue, or the first of them that
does not spill (Triton reports spills once it compiles for the card); with
``FUSION_AUTOTUNE=1`` it is autotuned (``triton.autotune``, keyed by M, N, K)
over the candidates that do not spill. The pick is what ``explain`` reports
and ``compile_for`` compiles. Triton's interpreter cannot autotune: on CPU one
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

    @property
    def launch_kwargs(self) -> dict:
        """The keyword arguments of a launch (or a ``warmup``) with this config."""
        return {**self.constexprs, "num_warps": self.num_warps, "num_stages": self.num_stages}

    def __str__(self) -> str:
        return (f"BLOCK {self.BLOCK_M}x{self.BLOCK_N}x{self.BLOCK_K}, GROUP_M {self.GROUP_M}, "
                f"{self.num_warps} warps, {self.num_stages} stages")


# Candidates per dtype, the pick first. Half types and tf32 feed tensor cores (wgmma on
# sm_90, mma.sync on sm_80); the epilogue runs on 4 column chunks of the accumulator
# (codegen.matmul.EPILOGUE_CHUNKS). Checked with compile_for on sm_90 (Triton 3.9,
# tests/test_kernel_cost.py) on attention gating, 8192^2 x 64 bf16: 128x64 on 4 warps holds
# 64 accumulator values a thread; our sigmoid epilogue fits it in 128 registers forward and
# 122 backward (4 blocks per SM, no spill; BENCHMARKS.md, 2026-12-01), modelled at 89% and 99%
# of the output-write floor, the tutorial's tl.sigmoid epilogue at 92% and 99% (issue-bound: the
# grouped ordering and addressing cost about 4 instructions per output at 64 values a
# thread). 128x128 on 4 warps (128 values) spilled 792 bytes with the backward's epilogue.
# fp32 without tf32 runs on FMA units: 64x64 (128 and 158 registers, no spill). fp64 uses
# mma.sync (DMMA) on both archs: 32x32 first.
_TABLE = {
    "half": [TileConfig(128, 64, 64, 8, 4, 3), TileConfig(128, 128, 64, 8, 8, 3),
             TileConfig(128, 128, 64, 8, 4, 3), TileConfig(64, 64, 64, 8, 4, 4),
             TileConfig(128, 256, 64, 8, 8, 3)],
    "tf32": [TileConfig(128, 128, 32, 8, 8, 3), TileConfig(128, 64, 32, 8, 4, 3),
             TileConfig(128, 64, 32, 8, 8, 3), TileConfig(64, 64, 32, 8, 4, 4)],
    "fp32": [TileConfig(64, 64, 32, 8, 4, 3), TileConfig(64, 32, 32, 8, 4, 3)],
    "fp64": [TileConfig(32, 32, 16, 8, 4, 3), TileConfig(64, 64, 16, 8, 8, 3)],
}
# Accumulator values a thread may hold: a heavy epilogue (a backward's gradient chain) at
# 128 values spilled (above); at 64 it did not. Light epilogues may take 128.
MAX_VALUES = {False: 128, True: 64}


def _family(dtype: torch.dtype, precision: str) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "half"
    if dtype == torch.float32:
        return "tf32" if precision == "tf32" else "fp32"
    return "fp64"


def values_per_thread(c: TileConfig) -> int:
    """Accumulator elements each thread holds (and runs the epilogue on)."""
    return c.BLOCK_M * c.BLOCK_N // (32 * c.num_warps)


def gpu_candidates(M: int, N: int, K: int, dtype: torch.dtype, precision: str,
                   heavy_epilogue: bool) -> list[TileConfig]:
    """The configs a GPU may run, the heuristic's pick first.

    Tiles much larger than the problem only add masked work: a candidate is
    kept when its tile fits in the next power of two of M and N (or 32); when
    none does, the table's smallest is used. A heavy epilogue (several ops,
    helper calls such as sigmoid, full-tile inputs) keeps to tiles of at most
    ``MAX_VALUES[True]`` values a thread, where it does not spill.
    """
    table = _TABLE[_family(dtype, precision)]
    fits = [c for c in table
            if c.BLOCK_M <= max(_pow2(M), 32) and c.BLOCK_N <= max(_pow2(N), 32)] or \
        [min(table, key=values_per_thread)]
    roomy = [c for c in fits if values_per_thread(c) <= MAX_VALUES[heavy_epilogue]] or fits[-1:]
    return [_fit_k(c, K) for c in roomy]


def without_spills(configs: list, spills, keep: int | None = None) -> list:
    """The configs whose kernel does not spill (``spills(config)``: bytes or registers
    spilled), in order, stopping at ``keep`` of them (each check is a compile); when
    every one spills, the one that spills least."""
    kept, counts = [], []
    for c in configs:
        counts.append(spills(c))
        if counts[-1] == 0:
            kept.append(c)
            if keep is not None and len(kept) == keep:
                break
    return kept or [configs[counts.index(min(counts))]]


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
