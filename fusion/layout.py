"""How a pointwise kernel reads each input, decided from the tensors' strides.

Inputs are viewed over the group's iteration shape with torch's broadcasting
(stride 0 on broadcast dimensions). Size-1 dimensions are dropped and
neighbouring dimensions merged wherever every input allows it, so the
kernel's index arithmetic is as short as the layouts permit: an all-contiguous
group needs none at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from codegen.layouts import InputLayout
from ir.graph import numel

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Layout:
    sizes: tuple        # collapsed iteration space
    strides: tuple      # per input: strides over ``sizes`` (empty unless STRIDED)
    kinds: tuple        # per input: an InputLayout
    int64: bool         # some offset may not fit in int32
    order: tuple | None = None  # dims outermost to innermost in the outputs' memory (None: as is)

    def empty(self, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
        """An output of ``shape`` laid out in ``order`` (eager's memory format)."""
        if self.order is None:
            return torch.empty(shape, dtype=dtype, device=device)
        inverse = sorted(range(len(self.order)), key=self.order.__getitem__)
        return torch.empty([shape[d] for d in self.order], dtype=dtype, device=device).permute(inverse)


def broadcast_strides(t: torch.Tensor, shape: tuple) -> list[int]:
    """``t``'s element strides as if expanded to ``shape`` (0 where broadcast)."""
    pad = len(shape) - t.dim()
    out = [0] * pad
    for d, (size, stride) in enumerate(zip(t.shape, t.stride())):
        out.append(0 if size == 1 and shape[pad + d] != 1 else stride)
    return out


def plan_layout(shape: tuple, tensors: list[torch.Tensor], order: tuple | None = None) -> Layout:
    """Collapse ``shape`` and classify each input; see the module docstring. ``order``
    (dims outermost first) is the outputs' memory order: the iteration follows it, so
    outputs are written flat and inputs laid out the same way (channels_last) read flat."""
    full = [broadcast_strides(t, shape) for t in tensors]
    dims = [d for d in (order or range(len(shape))) if shape[d] != 1]
    sizes = [shape[d] for d in dims]
    strides = [[st[d] for d in dims] for st in full]
    merge_dims(sizes, strides)
    kinds, kept = [], []
    contiguous = _contiguous_strides(sizes)
    for t, st in zip(tensors, strides):
        if t.numel() == 1:
            kinds.append(InputLayout.SCALAR)
            kept.append(())
        elif st == contiguous:
            kinds.append(InputLayout.FLAT)
            kept.append(())
        else:
            kinds.append(InputLayout.STRIDED)
            kept.append(tuple(st))
    reach = max([numel(shape)] + [max_offset(t) for t in tensors])
    return Layout(tuple(sizes), tuple(kept), tuple(kinds), reach > INT32_MAX, order)


def memory_order(t: torch.Tensor) -> tuple:
    """``t``'s dims from outermost to innermost in memory (size-1 dims keep their place)."""
    return tuple(sorted(range(t.dim()), key=lambda d: (-t.stride(d) if t.shape[d] != 1 else 0, d)))


def merge_dims(sizes: list[int], strides: list[list[int]]) -> None:
    """Merge dimension d into d-1, in place, wherever every stride list steps
    through the two as through one dimension (stride[d-1] == stride[d] * size[d])."""
    d = len(sizes) - 1
    while d > 0:
        if all(st[d - 1] == st[d] * sizes[d] for st in strides):
            sizes[d - 1] *= sizes[d]
            del sizes[d]
            for st in strides:
                st[d - 1] = st[d]
                del st[d]
        d -= 1


def _contiguous_strides(sizes: list[int]) -> list[int]:
    out, step = [], 1
    for s in reversed(sizes):
        out.append(step)
        step *= s
    return out[::-1]


def max_offset(t: torch.Tensor) -> int:
    """One past the largest element offset ``t`` reaches (0 when empty)."""
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + 1 if t.numel() else 0
