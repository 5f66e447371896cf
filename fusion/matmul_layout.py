"""How a matmul-epilogue kernel reads its operands, decided from strides.

The output is ``[*batch, M, N]``. A is viewed as ``[*batch, M, K]``, B as
``[*batch, K, N]`` and every epilogue input as the output's shape, with
torch's broadcasting (stride 0 where broadcast): nothing is copied, and a
transposed operand is only a swap of its strides. Then batch dimensions are
merged with each other and with M wherever every tensor steps through them
as one, exactly as ``fusion.layout`` merges a pointwise iteration space:
``linear`` on ``[B, L, K]`` becomes one ``[B*L, K] @ [K, N]``, and
``[B, H, L, D] @ [B, H, D, L]`` becomes a batch of ``B*H`` matrices.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from codegen.layouts import EpilogueLayout
from fusion.layout import INT32_MAX, broadcast_strides, max_offset, merge_dims


@dataclass(frozen=True)
class MatmulLayout:
    batch: tuple        # batch sizes left after merging (may be empty)
    M: int
    N: int
    K: int
    a_strides: tuple    # (m, k, *batch)
    b_strides: tuple    # (k, n, *batch)
    epilogue: tuple     # per epilogue input: its strides (m, n, *batch)
    kinds: tuple        # per epilogue input: an EpilogueLayout
    int64: bool

    @property
    def batch_count(self) -> int:
        count = 1
        for s in self.batch:
            count *= s
        return count


def plan_matmul_layout(out_shape: tuple, a: torch.Tensor, b: torch.Tensor,
                       epilogue: list[torch.Tensor]) -> MatmulLayout:
    """``a`` [..., M, K] and ``b`` [..., K, N] (views, e.g. ``w.t()``); ``epilogue``
    tensors broadcast to ``out_shape`` = [*batch, M, N]."""
    *batch, M, N = out_shape
    K = a.shape[-1]
    a_full = broadcast_strides(a, (*batch, M, K))
    b_full = broadcast_strides(b, (*batch, K, N))
    e_full = [broadcast_strides(t, out_shape) for t in epilogue]
    # dimensions that may merge: the batch dimensions and M; per tensor its stride on each
    sizes = list(batch) + [M]
    per = [a_full[:-1], b_full[:-2] + [0], *[st[:-1] for st in e_full], _contiguous(sizes, N)]
    per = [[0 if s == 1 else st for s, st in zip(sizes, strides)] for strides in per]
    keep = [d for d, s in enumerate(sizes) if s != 1 or d == len(sizes) - 1]
    sizes = [sizes[d] for d in keep]
    per = [[st[d] for d in keep] for st in per]
    merge_dims(sizes, per)
    M = sizes[-1]
    a_st, b_st, *e_st, _ = per
    k_a = 0 if K == 1 else a_full[-1]
    n_b = 0 if N == 1 else b_full[-1]
    a_strides = (a_st[-1], k_a, *a_st[:-1])
    b_strides = (0 if K == 1 else b_full[-2], n_b, *b_st[:-1])
    e_strides, kinds = [], []
    for t, st, full in zip(epilogue, e_st, e_full):
        m, n = st[-1], (0 if N == 1 else full[-1])
        e_strides.append((m, n, *st[:-1]))
        kinds.append(EpilogueLayout.SCALAR if t.numel() == 1 else EpilogueLayout.ROW if m == 0
                     else EpilogueLayout.COL if n == 0 else EpilogueLayout.TILE)
    numel = M * N
    for s in sizes[:-1]:
        numel *= s
    reach = max([numel] + [max_offset(t) for t in [a, b, *epilogue]])
    return MatmulLayout(tuple(sizes[:-1]), M, N, K, a_strides, b_strides, tuple(e_strides),
                        tuple(kinds), reach > INT32_MAX)


def _contiguous(sizes: list[int], n: int) -> list[int]:
    """Strides of a contiguous [*sizes, n] output over ``sizes``."""
    out, step = [], n
    for s in reversed(sizes):
        out.append(step)
        step *= s
    return out[::-1]
