"""Value checks at run time: the host side of ``codegen.checks``.

A kernel whose group holds ops with value checks (``OpDef.checks``: binary
cross-entropy's ranges) gets one int32 flag per check. The flags live on the
kernel's device, zero between calls, so no call pays for clearing them; after
each launch the host reads them (``Tensor.tolist``: on CUDA that is one
device-to-host copy, i.e. one synchronisation per checked launch, measured in
benchmarks/overhead.py) and raises the error eager raises for the first flag
set, after clearing it. Kernels without checks pay nothing.
"""
from __future__ import annotations

import torch


class ValueFlags:
    """The flag buffers of one kernel's value checks, one per device it runs on."""

    def __init__(self, checks: tuple):
        self.checks = checks     # (node, ValueCheck) pairs, in flag order
        self._buffers: dict[torch.device, torch.Tensor] = {}

    def buffer(self, device: torch.device) -> torch.Tensor:
        """The zeroed flags for a launch on ``device``."""
        buf = self._buffers.get(device)
        if buf is None:
            buf = self._buffers[device] = torch.zeros(len(self.checks), dtype=torch.int32, device=device)
        return buf

    def raise_if_set(self, buf: torch.Tensor) -> None:
        """After the launch: raise eager's error if an element failed a check."""
        flags = buf.tolist()
        if any(flags):
            buf.zero_()  # the next call starts clean
            _, check = self.checks[next(j for j, f in enumerate(flags) if f)]
            check.raise_error()
