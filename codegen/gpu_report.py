"""Compile a generated kernel for a GPU that is not here.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` builds PTX
and a cubin for an H100 (or sm_80 for an A100) on a machine without a GPU.
Pointer arguments get the divisibility-16 attribute the JIT infers for
aligned tensors, integer arguments too where their example value is a
multiple of 16, so the PTX is what the GPU would run. ``cuobjdump``, shipped
with Triton, reads registers, spills and shared memory back, and disassembles
the SASS that ``codegen.sass_cost`` counts.

Spills: ptxas puts spilled registers in the thread's stack frame, which
cuobjdump reports as ``STACK`` (ptxas -v: "N bytes stack frame, M bytes spill
stores"); its ``LOCAL`` field stays 0 when a kernel spills, so it is not read.
"""
from __future__ import annotations

import os
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from codegen.cache import import_file
from codegen.sass_cost import KernelCost, SassCounts, count, cuobjdump, disassemble, kernel_cost
from codegen.triton_compat import gpu_compile_scope

ARCHS = {"sm_90": 90, "sm_80": 80}
_SIG = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
        torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
        torch.uint8: "u8", torch.bool: "i1"}


@dataclass(frozen=True)
class GpuCompileReport:
    arch: str
    ptx: str
    registers: int
    spills: int          # stack-frame bytes per thread, where ptxas puts spills (0: none)
    shared_bytes: int
    sass: str = ""       # cuobjdump -sass of the cubin
    num_warps: int = 4
    compile_cpu_s: float = 0.0  # CPU seconds triton.compile took (process and ptxas): a GPU pays it too

    def count(self, instruction: str) -> int:
        """How many PTX lines contain ``instruction`` (e.g. ``ld.global.v4``)."""
        return sum(1 for line in self.ptx.splitlines() if instruction in line)

    def sass_counts(self, trips: int = 1) -> SassCounts:
        """Instructions a thread runs by class (a loop body ``trips`` times)."""
        return count(self.sass, trips)

    def cost(self, elements_per_thread: float, trips: int = 1) -> KernelCost:
        """The static cost per element (``codegen.sass_cost``)."""
        return kernel_cost(self.sass, self.registers, self.spills, self.shared_bytes, self.num_warps,
                           elements_per_thread, trips)


def compile_for(path: str, name: str, example: list, arch: str = "sm_90",
                constexprs: dict | None = None, num_warps: int = 4,
                num_stages: int | None = None) -> GpuCompileReport:
    """Compile kernel ``name`` of the file at ``path`` for ``arch``.

    ``example`` gives each argument in order: ``("ptr", dtype)``,
    ``("int", value)`` (specialised as the JIT does: 1 is compiled in, a
    multiple of 16 gets the divisibility attribute), or ``("const", value)``
    for an integer the JIT compiles in; ``constexprs`` the compile-time
    arguments.
    """
    key = (path, name, repr(example), arch, repr(constexprs), num_warps, num_stages)
    if key not in _compiled:
        _compiled[key] = _compile(path, name, example, arch, constexprs, num_warps, num_stages)
    return _compiled[key]


# compiled reports by everything that decides them (the path holds the source's hash)
_compiled: dict[tuple, GpuCompileReport] = {}


def _compile(path, name, example, arch, constexprs, num_warps, num_stages) -> GpuCompileReport:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _load_jit(Path(path), name)
    constexprs = dict(constexprs or {"BLOCK_SIZE": 1024})
    names = list(fn.arg_names)
    signature, attrs = {}, {}
    for i, (kind, value) in enumerate(example):
        if kind == "ptr":
            signature[names[i]] = "*" + _SIG[value]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif kind == "const" or value == 1:
            constexprs[names[i]] = value  # the JIT compiles an integer equal to 1 in
        else:
            signature[names[i]] = "i64" if abs(value) >= 2**31 else "i32"
            if value % 16 == 0:  # 0 included: the JIT marks it divisible by 16 too
                attrs[(i,)] = [["tt.divisibility", 16]]
    for k in constexprs:
        signature[k] = "constexpr"
    signature = {n: signature[n] for n in names}  # in argument order
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                    attrs=attrs)
    options = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    with gpu_compile_scope():
        start = cpu_seconds()
        compiled = triton.compile(src, target=GPUTarget("cuda", ARCHS[arch], 32), options=options)
        spent = cpu_seconds() - start
    cubin = compiled.asm["cubin"]
    regs, stack, shared = _resource_usage(cubin)
    return GpuCompileReport(arch, compiled.asm["ptx"], regs, stack,
                            max(shared, int(getattr(compiled.metadata, "shared", 0) or 0)),
                            disassemble(cubin), num_warps, spent)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas): unlike wall time, it
    does not grow with other work on a shared machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _load_jit(path: Path, name: str):
    """Import the file with the interpreter off, so ``@triton.jit`` gives a JITFunction."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        module = import_file(path, suffix="_gpu")
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    return getattr(module, name)


def _resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers, stack-frame bytes, shared bytes) per ``cuobjdump --dump-resource-usage``."""
    out = cuobjdump(cubin, "--dump-resource-usage")

    def field(key):
        m = re.search(rf"{key}:(\d+)", out)
        return int(m.group(1)) if m else 0
    return field("REG"), field("STACK"), field("SHARED")
