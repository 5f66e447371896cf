"""What a compiled kernel costs, read from its SASS: no GPU needed.

``cuobjdump -sass`` (shipped with Triton) disassembles the cubin that
``codegen.gpu_report.compile_for`` builds. Every instruction is put in a class
by its opcode (FP32, FP64, MUFU, integer, conversion, memory, ...) and counted
as the thread runs it: straight-line code once, a loop body (the code a
backward branch jumps over) once per trip, and cold code not at all: the
subroutines after the kernel's final ``EXIT`` (division's slow path, reached by
``CALL``) and the few instructions that set up such a call behind a branch.

Units: counts are instructions per thread; ``per_element`` divides them by the
elements (or matmul outputs) one thread computes. The modelled time of a
kernel on a GPU (``GpuSpec``) is ``max(bytes / bandwidth, issue time of each
class, tensor-core time)``: a roofline, never a measurement.
"""
from __future__ import annotations

import math
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# opcode root (before the first ".") -> class; "U..." opcodes run on the uniform datapath
_CLASSES = {
    "fp32": "FADD FMUL FFMA FMNMX FSETP FSET FSEL FCHK FSWZADD FADD32I FMUL32I FFMA32I",
    "fp16": "HADD2 HMUL2 HFMA2 HMNMX2 HSETP2 HSET2 HADD2_32I HMUL2_32I HFMA2_32I",
    "fp64": "DADD DMUL DFMA DSETP DMNMX DSET",
    "mufu": "MUFU",
    "int": "IADD3 IADD IMAD IMUL ISETP LOP3 LOP SHF SHL SHR LEA IMNMX IABS SEL PRMT FLO POPC BREV "
           "BMSK SGXT ISCADD PLOP3 P2R R2P VABSDIFF VABSDIFF4 IDP",
    "conversion": "F2F F2I I2F FRND F2FP I2FP F2IP I2I",
    "move": "MOV MOV32I S2R CS2R SHFL S2UR R2UR VOTE MATCH LDC",
    "memory": "LDG STG LDS STS LDL STL LD ST LDSM STSM LDGSTS LDGDEPBAR ATOM ATOMG ATOMS RED "
              "UTMALDG UTMASTG UBLKCP UTMAPF",
    "tensor": "HGMMA HMMA DMMA IMMA QGMMA",
}
OPCODE_CLASS = {op: cls for cls, ops in _CLASSES.items() for op in ops.split()}
CLASSES = tuple(_CLASSES) + ("control", "uniform")

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([.\w]*)\s*([^;]*);")
_TARGET = re.compile(r"0x([0-9a-f]+)")


@dataclass(frozen=True)
class Instr:
    addr: int
    opcode: str      # e.g. "LDG"
    suffix: str      # e.g. ".E.128"
    operands: str

    @property
    def cls(self) -> str:
        if self.opcode in OPCODE_CLASS:
            return OPCODE_CLASS[self.opcode]
        return "uniform" if self.opcode.startswith("U") else "control"


def cuobjdump(cubin: bytes, *flags: str) -> str:
    """``cuobjdump FLAGS`` on a cubin, with the tool Triton ships."""
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), *flags, f.name], capture_output=True, text=True,
                              check=True).stdout


def disassemble(cubin: bytes) -> str:
    """The cubin's SASS text."""
    return cuobjdump(cubin, "-sass")


def parse(sass: str) -> list[Instr]:
    return [Instr(int(m[1], 16), m[3], m[4], m[5].strip()) for m in _LINE.finditer(sass)]


def hot_path(instrs: list[Instr]) -> list[tuple[Instr, int]]:
    """(instruction, times a thread runs it per loop trip: 0 cold, 1 straight-line,
    or ``-1`` for a loop body) over the kernel up to its end; NOP padding left out."""
    end = next((i for i, ins in enumerate(instrs) if ins.opcode == "BRA" and _target(ins) == ins.addr),
               len(instrs))
    code = instrs[:end]
    weight = [0 if ins.opcode == "NOP" else 1 for ins in code]
    index = {ins.addr: i for i, ins in enumerate(code)}
    for i, ins in enumerate(code):
        target = _target(ins) if ins.opcode == "BRA" else None
        if target is None or target not in index:
            continue
        j = index[target]
        if j <= i:      # a backward branch closes a loop: its body runs once per trip
            for k in range(j, i + 1):
                weight[k] = -1 if weight[k] else 0
        elif any(c.opcode == "CALL" for c in code[i + 1:j]):
            for k in range(i + 1, j):  # a branch around a slow-path call: the call is cold
                weight[k] = 0
    return list(zip(code, weight))


def _target(ins: Instr) -> int | None:
    m = _TARGET.search(ins.operands)
    return int(m[1], 16) if m else None


@dataclass(frozen=True)
class SassCounts:
    """Instructions a thread runs, by class, and the global accesses by width."""
    by_class: dict         # class -> instructions per thread
    accesses: dict         # e.g. {"LDG.E.128": 2, "STG.E.128": 1}: global access opcodes
    spill_ops: int         # STL/LDL instructions: register spills to local memory

    @property
    def total(self) -> float:
        return sum(self.by_class.values())


def count(sass: str, trips: int = 1) -> SassCounts:
    """Per-thread dynamic counts of ``sass``; a loop body counts ``trips`` times
    (a matmul's K loop: ceil(K / BLOCK_K))."""
    by_class: Counter = Counter()
    accesses: Counter = Counter()
    spill_ops = 0
    for ins, w in hot_path(parse(sass)):
        times = trips if w < 0 else w
        if not times:
            continue
        by_class[ins.cls] += times
        if ins.opcode in ("LDG", "STG"):
            accesses[ins.opcode + ins.suffix] += 1
        spill_ops += ins.opcode in ("LDL", "STL")
    return SassCounts({c: by_class[c] for c in CLASSES}, dict(accesses), spill_ops)


# ---- GPUs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuSpec:
    """One GPU's ceilings: per-SM-per-clock lanes by instruction class, and occupancy limits."""
    name: str
    sms: int
    clock_hz: float            # boost clock
    bandwidth: float           # DRAM bytes per second
    lanes: dict                # class -> thread-instructions per SM per clock
    issue: int                 # thread-instructions issued per SM per clock (4 schedulers x 32)
    tensor_flops: dict         # dense tensor-core FLOP/s by operand type
    max_warps: int
    max_blocks: int
    registers: int             # 32-bit registers per SM
    shared_bytes: int          # shared memory per SM usable by blocks
    reserved_shared: int       # shared memory the system keeps per block


# H100 SXM5: 132 SMs, ~1.98 GHz boost, 3.35 TB/s HBM3, dense bf16/fp16 989 TFLOP/s, tf32 495
# (NVIDIA H100 Tensor Core GPU datasheet). Lanes per SM per clock for compute capability 9.0:
# 128 FP32, 64 FP64, 16 MUFU (reciprocal, exp2, log2, sin...), 64 INT32, 16 conversions
# (CUDA C++ Programming Guide, "Arithmetic Instructions" throughput table,
# https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#arithmetic-instructions);
# 32 load/store lanes (4 SM partitions x 8 LSU; Hopper SM summary,
# https://fridayswithfaraday.com/posts/gpu-hw-streaming-multiprocessor-deep-dive).
# Occupancy: 64 warps, 32 blocks, 64K registers and 228 KB of shared memory per SM, 1 KB
# reserved per block (Hopper Tuning Guide,
# https://docs.nvidia.com/cuda/archive/12.5.0/hopper-tuning-guide/index.html, "Occupancy").
H100_SXM = GpuSpec(
    "H100 SXM", 132, 1.98e9, 3.35e12,
    {"fp32": 128, "fp16": 128, "fp64": 64, "mufu": 16, "int": 64, "conversion": 16, "memory": 32},
    128, {"half": 989e12, "tf32": 495e12, "fp64": 67e12},
    64, 32, 65536, 228 * 1024, 1024)

# L4 (Ada, compute capability 8.9): 58 SMs (7,424 CUDA cores / 128 per SM), 2.04 GHz boost,
# 300 GB/s GDDR6, FP32 30.3 TFLOP/s, FP64 1/64 of FP32 (473 GFLOP/s), dense bf16/fp16 121
# TFLOP/s (NVIDIA L4 datasheet; figures as listed at https://fpsbench.com/compare/gpu/
# nvidia-l4-vs-nvidia-tesla-m40). Lanes per SM per clock for 8.9: 128 FP32, 2 FP64, 16 MUFU,
# 64 INT32, 16 conversions, packed FP16 at the FP32 rate (programming guide table above; the
# FP64 drop on 8.6/8.9 is discussed at https://forums.developer.nvidia.com/t/relations-
# between-instruction-throughput-and-cuda-compute-capability/239005). Occupancy: 48 warps,
# 24 blocks, 64K registers, 100 KB shared memory per SM (Ada Tuning Guide,
# https://docs.nvidia.com/cuda/archive/12.2.2/ada-tuning-guide/index.html, "Occupancy").
L4 = GpuSpec(
    "L4", 58, 2.04e9, 300e9,
    {"fp32": 128, "fp16": 64, "fp64": 2, "mufu": 16, "int": 64, "conversion": 16, "memory": 32},
    128, {"half": 121e12, "tf32": 60e12, "fp64": 0.47e12},
    48, 24, 65536, 100 * 1024, 1024)

GPUS = (H100_SXM, L4)


def blocks_per_sm(gpu: GpuSpec, registers: int, shared: int, num_warps: int) -> int:
    """Resident blocks per SM: the least of the warp, block, register and shared-memory
    limits. Registers are allocated per warp in units of 256 (8 per thread)."""
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    limits = [gpu.max_warps // num_warps, gpu.max_blocks, gpu.registers // (per_warp * num_warps)]
    if shared:
        limits.append(gpu.shared_bytes // (shared + gpu.reserved_shared))
    return max(min(limits), 0)


@dataclass(frozen=True)
class Modelled:
    """A modelled (roofline) time, and which ceiling sets it."""
    seconds: float
    memory_seconds: float      # bytes / bandwidth
    issue_seconds: dict        # per class, and "issue" for all instructions together
    tensor_seconds: float

    @property
    def bound(self) -> str:
        parts = {"memory": self.memory_seconds, "tensor": self.tensor_seconds, **self.issue_seconds}
        return max(parts, key=parts.get)


def model(gpu: GpuSpec, per_element: dict, elements: int, bytes_moved: float,
          tensor_flops: float = 0.0, tensor_type: str = "half") -> Modelled:
    """max(bytes / bandwidth, each class's instructions / its lanes, all instructions /
    the issue rate, tensor FLOPs / peak) for ``elements`` outputs; ``per_element``: class ->
    instructions per output element. Assumes enough warps to hide latency (no waves)."""
    per_second = gpu.sms * gpu.clock_hz
    issue = {c: elements * per_element.get(c, 0) / (lanes * per_second) for c, lanes in gpu.lanes.items()}
    issue["issue"] = elements * sum(per_element.values()) / (gpu.issue * per_second)
    tensor = tensor_flops / gpu.tensor_flops[tensor_type] if tensor_flops else 0.0
    memory = bytes_moved / gpu.bandwidth
    return Modelled(max(memory, tensor, *issue.values()), memory, issue, tensor)


# ---- one kernel's cost -----------------------------------------------------------------------
@dataclass(frozen=True)
class KernelCost:
    """A compiled kernel's static cost: what the model and the budgets read."""
    per_element: dict      # class -> instructions per element (matmul: per output)
    accesses: dict         # global access opcode -> instructions per thread, e.g. LDG.E.128
    registers: int         # per thread
    spill_bytes: int       # stack-frame bytes per thread (spills; 0: none)
    spill_ops: int         # STL/LDL instructions in the hot path
    shared_bytes: int      # per block
    num_warps: int
    tensor_cores: bool     # the SASS holds tensor-core instructions (HGMMA, HMMA, DMMA)

    @property
    def total(self) -> float:
        """All instructions per element."""
        return sum(self.per_element.values())

    def blocks_per_sm(self, gpu: GpuSpec) -> int:
        return blocks_per_sm(gpu, self.registers, self.shared_bytes, self.num_warps)

    def modelled(self, gpu: GpuSpec, elements: int, bytes_moved: float, tensor_flops: float = 0.0,
                 tensor_type: str = "half") -> Modelled:
        """The modelled time for ``elements`` outputs moving ``bytes_moved`` bytes."""
        return model(gpu, self.per_element, elements, bytes_moved,
                     tensor_flops if self.tensor_cores else 0.0, tensor_type)


def kernel_cost(sass: str, registers: int, spill_bytes: int, shared_bytes: int, num_warps: int,
                elements_per_thread: float, trips: int = 1) -> KernelCost:
    """The cost of one compiled kernel, per element: ``elements_per_thread`` elements (or
    outputs) per thread, a loop body ``trips`` times."""
    counts = count(sass, trips)
    per_element = {c: n / elements_per_thread for c, n in counts.by_class.items()}
    return KernelCost(per_element, counts.accesses, registers, spill_bytes, counts.spill_ops,
                      shared_bytes, num_warps, counts.by_class["tensor"] > 0)
