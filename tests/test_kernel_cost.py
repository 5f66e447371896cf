"""Cost budgets of the benchmarked kernels, each compiled for sm_90 beside its reference.

The reference is the same kernel (group, layout, tiles) with each op in its tutorial
spelling (``tl.sigmoid``, ``tl.exp``: ``OpDef.triton_reference``), compiled in the same
test: budgets are ratios to it, never instruction counts of our own kernels. Costs come
from the SASS (``codegen.sass_cost``) and the times are modelled (a roofline), not measured.

Budgets: no FP64 outside fp64 kernels; SASS instructions per element <= 1.25x the
reference's for bf16, <= 2x for fp32; 128-bit global accesses on aligned contiguous
tensors; no spills in any config a GPU may run; pointwise kernels modelled at >= 0.9 of
their bandwidth floor on an H100 SXM and an L4; the bf16 gating kernels (8192^2, K = 64,
and 4 x 16 heads of 2048^2) at >= 2 blocks per SM and >= 85% of the floor of the [M, N]
tensors they read and write.

Every budget holds for every benchmarked kernel (the sigmoid family in fp32 arithmetic
only, cheap fp32 forms for half types: docs/NUMERICS.md).
"""
from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fusion
from codegen.gpu_report import compile_for
from codegen.sass_cost import GPUS, H100_SXM, count
from fusion.matmul_tiles import gpu_candidates

from examples_models import gated, gating

triton = pytest.importorskip("triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
pytestmark = [pytest.mark.cpu_only, pytest.mark.skipif(not PTXAS.exists(), reason="this Triton ships no ptxas")]


def sigmoid(x):
    return torch.sigmoid(x)


def silu(x):
    return F.silu(x)


def gating_heads(q, k):
    scores = q @ k.transpose(-2, -1)
    return scores * torch.sigmoid(scores)


# the benchmarked chains at sizes whose kernels are the benchmarks' (multiples of 16, so
# pointers and sizes are aligned; the tiles of 8192^2 at 256^2, see
# test_gating_tiles_are_the_benchmarks; heads at 128^2 keep the pick, and grow to 2048^2 as
# their operands do, with the side)
POINTWISE = {"sigmoid": (sigmoid, [(64, 256)]), "silu": (silu, [(64, 256)]),
             "gated": (gated, [(64, 256), (64, 256), (256,)])}
MATMUL = {"gating": (gating, [(256, 64), (256, 64)]),
          "heads": (gating_heads, [(4, 16, 128, 64), (4, 16, 128, 64)])}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FACTOR = {"fp32": 2.0, "bf16": 1.25}    # instructions per element, ours / reference


def kids(names, dtypes=tuple(DTYPES)) -> list[str]:
    """Kernel ids workload-dtype-pass."""
    return [f"{n}-{d}-{r}" for n in names for d in dtypes for r in ("fwd", "bwd")]


@functools.lru_cache(maxsize=None)
def explain(name: str, dname: str):
    fn, shapes = {**POINTWISE, **MATMUL}[name]
    torch.manual_seed(0)
    return fusion.explain(fn, *[torch.randn(s, dtype=DTYPES[dname]).requires_grad_() for s in shapes])


def kernel(kid: str):
    """The KernelReport of ``kid`` = workload-dtype-pass (one kernel each)."""
    name, dname, role = kid.split("-")
    report = explain(name, dname)
    (k,) = report.kernels if role == "fwd" else report.backward_kernels
    return k


def costs(kid: str):
    k = kernel(kid)
    return k.cost(), k.reference().cost()


def floor_cases(kid_list) -> list:
    return [pytest.param(k, gpu, id=f"{k}-{gpu.name}")
            for k in kid_list for gpu in GPUS]


ALL = kids(POINTWISE) + kids(["gating"]) + kids(["heads"], ["bf16"])


@pytest.mark.parametrize("kid", ALL)
def test_no_fp64_outside_fp64_kernels(kid):
    ours, ref = costs(kid)
    assert ref.per_element["fp64"] == 0
    assert ours.per_element["fp64"] == 0, f"{kid}: {ours.per_element['fp64']:.1f} FP64 instructions per element"


@pytest.mark.parametrize("kid", ALL)
def test_instructions_per_element_within_budget_of_the_reference(kid):
    ours, ref = costs(kid)
    factor = FACTOR[kid.split("-")[1]]
    assert ours.total <= factor * ref.total, \
        f"{kid}: {ours.total:.1f} SASS instructions per element, reference {ref.total:.1f} (budget {factor}x)"


@pytest.mark.parametrize("kid", ALL)
def test_global_accesses_are_128_bit(kid):
    ours, ref = costs(kid)
    assert ours.accesses and all(op.endswith(".128") for op in ours.accesses), ours.accesses
    assert sum(ours.accesses.values()) == sum(ref.accesses.values())


@pytest.mark.parametrize("kid", kids(POINTWISE))
def test_pointwise_kernels_do_not_spill(kid):
    ours, _ = costs(kid)
    assert ours.spill_bytes == 0 and ours.spill_ops == 0


@pytest.mark.parametrize("kid", kids(["gating"]) + kids(["heads"], ["bf16"]))
def test_no_gating_candidate_spills(kid):
    """Every config a GPU may run: the pick, or any that FUSION_AUTOTUNE=1 tunes over."""
    k = kernel(kid)
    for config in k.candidates:
        cost = k.with_config(config).cost()
        assert cost.spill_bytes == 0, f"{kid} at {config}: {cost.spill_bytes} bytes of stack (spills)"


@pytest.mark.parametrize("heavy", [False, True])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=list(DTYPES))
def test_gating_tiles_are_the_benchmarks(dtype, heavy):
    """The 256^2 scores here get the candidates of 8192^2 and 2048^2 heads; 128^2 heads the pick."""
    def candidates(size):
        return gpu_candidates(size, size, 64, dtype, "ieee", heavy)
    assert candidates(256) == candidates(8192) == candidates(2048)
    assert candidates(128)[0] == candidates(2048)[0]


@pytest.mark.parametrize("kid, gpu", floor_cases(kids(POINTWISE)))
def test_pointwise_modelled_at_bandwidth_floor(kid, gpu):
    k = kernel(kid)
    ours, ref = costs(kid)
    floor = k.bytes_at(k.elements) / gpu.bandwidth
    assert floor / k.reference().modelled(gpu, cost=ref).seconds >= 0.9  # the model's own check
    m = k.modelled(gpu, cost=ours)
    assert floor / m.seconds >= 0.9, f"{kid} on {gpu.name}: {floor / m.seconds:.2f} of the floor ({m.bound}-bound)"


GATING_ELEMENTS = {"gating": 8192 * 8192, "heads": 4 * 16 * 2048 * 2048}


def _output_floor(k, gpu, elements: int) -> float:
    """Seconds to move the [M, N] tensors (outputs and gradient inputs) at ``elements``."""
    return elements * sum(size for n, size in k.moved if n == k.elements) / gpu.bandwidth


@pytest.mark.parametrize("kid", kids(["gating", "heads"], ["bf16"]))
def test_bf16_gating_tiles_keep_occupancy_and_allow_the_floor(kid):
    """The pick's epilogue leaves 2 blocks per SM, and the reference epilogue at the same
    tiles is modelled at >= 85% of the output floor on both GPUs: the tiles are not the limit."""
    k = kernel(kid)
    ours, ref = costs(kid)
    elements = GATING_ELEMENTS[kid.split("-")[0]]
    assert ours.blocks_per_sm(H100_SXM) >= 2, f"{kid}: {ours.registers} registers cap occupancy"
    for gpu in GPUS:
        assert _output_floor(k, gpu, elements) / k.reference().modelled(gpu, elements, ref).seconds >= 0.85


@pytest.mark.parametrize("kid, gpu", floor_cases(kids(["gating", "heads"], ["bf16"])))
def test_bf16_gating_modelled_at_its_output_floor(kid, gpu):
    k = kernel(kid)
    ours, _ = costs(kid)
    elements = GATING_ELEMENTS[kid.split("-")[0]]
    m = k.modelled(gpu, elements, ours)
    share = _output_floor(k, gpu, elements) / m.seconds
    assert share >= 0.85, f"{kid} on {gpu.name}: {share:.2f} of its floor ({m.bound}-bound)"


# ---- the tools the budgets stand on ------------------------------------------------------------

def test_spills_are_read_from_the_stack_frame():
    """ptxas puts spills in the stack frame: cuobjdump's STACK, never its LOCAL field. A
    kernel made to spill (256 values a thread) shows them in both ptxas -v and the report."""
    k = kernel("sigmoid-fp32-fwd").reference()
    rep = compile_for(k.path, k.name, k._example, "sm_90", {"BLOCK_SIZE": 8192}, num_warps=1)
    ptx = Path(k.path).with_suffix(".spill.ptx")
    ptx.write_text(rep.ptx)
    log = subprocess.run([_ptxas(), "-v", "--gpu-name=sm_90a", str(ptx), "-o", "/dev/null"],
                         capture_output=True, text=True, check=True).stderr
    stores = int(re.search(r"(\d+) bytes spill stores", log)[1])
    assert stores > 0 and rep.spills > 0, log
    assert count(rep.sass).spill_ops > 0


def _ptxas() -> str:
    """The ptxas Triton runs for sm_90 (Triton 3.9 ships a newer one beside the old)."""
    from triton.backends.nvidia import compiler
    get = getattr(compiler, "get_ptxas", None)
    return get(90).path if get else str(PTXAS)


SASS = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   FFMA R1, R0, R0, R0 ;
        /*0020*/              @!P0 BRA 0x50 ;
        /*0030*/                   MOV R4, 0x1 ;
        /*0040*/                   CALL.REL.NOINC 0x100 ;
        /*0050*/                   DFMA R2, R2, R2, R2 ;
        /*0060*/                   MUFU.EX2 R3, R3 ;
        /*0070*/               @P1 BRA 0x50 ;
        /*0080*/                   STG.E.128 desc[UR4][R6.64], R8 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0xa0 ;
        /*00b0*/                   NOP ;
        /*0100*/                   FADD R5, R5, R5 ;
        /*0110*/                   RET.REL.NODEC R20 0x0 ;
"""


def test_sass_counts_hot_path_loops_and_cold_calls():
    c = count(SASS, trips=3)
    # a loop body (0x50-0x70) runs trips times; the slow-path call setup and the
    # subroutine after the final EXIT do not count
    assert c.by_class["fp64"] == 3 and c.by_class["mufu"] == 3 and c.by_class["fp32"] == 1
    assert c.by_class["move"] == 1 and c.accesses == {"STG.E.128": 1}
    assert c.by_class["control"] == 1 + 3 + 1  # the branch around the call, the loop's, EXIT
