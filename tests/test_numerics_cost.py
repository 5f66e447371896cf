"""What the numerics policy costs on an H100, measured in SASS: ours against tl.sigmoid.

Each kernel of the sigmoid family's chains (sigmoid, silu, x·σ(g)+b; forward and
backward; fp32 and bf16) is compiled for sm_90 without a GPU (``compile_for``),
disassembled with the cuobjdump Triton ships, and counted per element (1024
elements over 4 warps: 8 per thread). Its reference is the same generated kernel
with our helpers swapped for the spellings of the Triton tutorials (``tl.sigmoid``,
``s * (1 - s)``): same loads, stores and layout. Budgets (docs/NUMERICS.md): no
FP64 instruction in a kernel whose tensors are not fp64; at most 2x the
reference's instructions in fp32 and 1.25x in fp16/bf16 (the tests run bf16; the
table below adds fp16).

    python tests/test_numerics_cost.py     # prints the table
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

os.environ.setdefault("TRITON_INTERPRET", "1")  # as conftest: the kernels are generated on CPU
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import pytest
import torch
import torch.nn.functional as F

import fusion
from codegen.gpu_report import compile_for

triton = pytest.importorskip("triton")
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
pytestmark = pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists(),
                                reason="this Triton ships no ptxas/cuobjdump")

PER_THREAD = 8          # BLOCK_SIZE 1024 over 4 warps of 32 threads
BUDGET = {torch.float32: 2.0, torch.bfloat16: 1.25}
FP64_OPCODES = ("DADD", "DMUL", "DFMA", "DSETP", "DSET", "DMNMX", "DMMA")

CHAINS = {
    "sigmoid": (lambda x: torch.sigmoid(x), [(64, 256)]),
    "silu": (F.silu, [(64, 256)]),
    "x*sigmoid(g)+b": (lambda x, g, b: x * torch.sigmoid(g) + b, [(64, 256), (64, 256), (256,)]),
}

# our helpers -> the tutorials' spellings, in a generated kernel's source
REFERENCE = [(r'\bsigmoid\((\w+), "\w+"\)', r"tl.sigmoid(\1)"),
             (r'\bsigmoid_grad\((\w+), "\w+"\)', r"ref_sigmoid_grad(\1)"),
             (r'\bsilu\((\w+), "\w+"\)', r"(\1 * tl.sigmoid(\1))"),
             (r'\bsilu_grad\((\w+), "\w+"\)', r"ref_silu_grad(\1)")]
REFERENCE_HELPERS = '''
@triton.jit
def ref_sigmoid_grad(x):
    s = tl.sigmoid(x)
    return s * (1.0 - s)


@triton.jit
def ref_silu_grad(x):
    s = tl.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))
'''


def sass(path: str, name: str, example: list) -> list[str]:
    """The SASS opcodes of kernel ``name`` compiled for sm_90 (NOP padding left out)."""
    compiled = []
    real = triton.compile

    def keep(*args, **kwargs):
        compiled.append(real(*args, **kwargs))
        return compiled[-1]
    with mock.patch.object(triton, "compile", keep):
        compile_for(path, name, example, "sm_90")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled[-1].asm["cubin"])
    try:
        text = subprocess.run([str(BIN / "cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)
    ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)", text)
    return [op for op in ops if op != "NOP"]


def fp64_count(ops: list[str]) -> int:
    return sum(1 for op in ops if op.split(".")[0] in FP64_OPCODES or ".F64" in op or "64H" in op)


def reference_source(source: str) -> str:
    for pattern, spelling in REFERENCE:
        source = re.sub(pattern, spelling, source)
    return source + REFERENCE_HELPERS


def chain_variants(fn, shapes, dtype) -> dict:
    """{"fwd": variant, "bwd": variant} of the chain's one forward and one backward kernel."""
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]
    compiled = fusion.compile(fn)
    compiled(*args).sum().backward()
    (step,) = [s for s in compiled.plan_for(*args).steps if s.kernel is not None]
    (backward,) = step.backward.values()
    (bstep,) = [s for s in backward.plan.steps if s.kernel is not None]
    return {"fwd": next(iter(step.kernel.variants.values())),
            "bwd": next(iter(bstep.kernel.variants.values()))}


def measure(chain: str, dtype: torch.dtype, tmp: Path) -> list[dict]:
    """Per kernel of ``chain``: instructions per element, ours and reference, and FP64 counts."""
    rows = []
    for direction, v in chain_variants(*CHAINS[chain], dtype).items():
        ours = sass(v.path, v.emitted.name, v.example)
        ref_path = tmp / f"ref_{v.emitted.name}_{direction}_{str(dtype)[6:]}.py"
        ref_path.write_text(reference_source(v.emitted.source))
        ref = sass(str(ref_path), v.emitted.name, v.example)
        rows.append({"chain": chain, "dtype": str(dtype)[6:], "pass": direction,
                     "ours": len(ours) / PER_THREAD, "reference": len(ref) / PER_THREAD,
                     "fp64": fp64_count(ours), "mufu": sum(op.startswith("MUFU") for op in ours) / PER_THREAD})
    return rows


@pytest.mark.parametrize("dtype", list(BUDGET), ids=["f32", "bf16"])
@pytest.mark.parametrize("chain", list(CHAINS))
def test_within_budget_and_no_fp64(chain, dtype, tmp_path):
    for row in measure(chain, dtype, tmp_path):
        assert row["fp64"] == 0, f"{row}: FP64 instructions in a {row['dtype']} kernel"
        assert row["ours"] <= BUDGET[dtype] * row["reference"], f"{row}: over {BUDGET[dtype]}x the reference"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        print(f"{'kernel':<28} {'dtype':<9} {'ours':>6} {'ref':>6} {'ratio':>6} {'FP64':>5} {'MUFU':>5}")
        for chain in CHAINS:
            for dtype in (*BUDGET, torch.float16):  # fp16 as bf16; the tests run bf16
                for r in measure(chain, dtype, Path(d)):
                    print(f"{chain + ' ' + r['pass']:<28} {r['dtype']:<9} {r['ours']:>6.2f} {r['reference']:>6.2f} "
                          f"{r['ours'] / r['reference']:>6.2f} {r['fp64']:>5} {r['mufu']:>5.2f}")
