"""The matmul-epilogue emitter: one Triton matmul kernel that applies a fused
pointwise chain to its accumulator before the single store.

The kernel is Triton's matrix-multiplication tutorial (03): a tiled loop over
K with fp32 accumulation (fp64 stays fp64), programs ordered in groups of
``GROUP_M`` rows of tiles so neighbouring programs share A and B tiles in L2,
and every operand read through strides (``k.T`` and linear's weight are
swapped strides, never copies). A batch of matrices is axis 1 of the grid.
The epilogue is the pointwise emitter's body run on the accumulator tile:
its other inputs (a bias row, a gate tensor, scalars) are loaded as tiles,
rows, columns or single values, and each output is rounded once at the store.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from codegen.checks import CHECKS_PARAM, check_lines
from codegen.layouts import EpilogueLayout
from codegen.pointwise import REFERENCE_NOTE, emit_body, input_name, load_cast, namer, operand_expr, store_cast
from codegen.prelude import helpers_used
from ir.graph import Node, format_node, format_value

TILE, ROW, COL, SCALAR = (EpilogueLayout.TILE, EpilogueLayout.ROW, EpilogueLayout.COL,
                          EpilogueLayout.SCALAR)


@dataclass(frozen=True)
class MatmulSpec:
    """What the emitter needs: the anchor, its epilogue and how inputs are read."""
    anchor: Node        # the matmul node: out = A @ B (+ bias)
    bias: Node | None   # added to the accumulator first (linear, addmm)
    epilogue: tuple     # pointwise nodes after the anchor, topological
    inputs: tuple       # external values the epilogue (and bias) read
    layouts: tuple      # per epilogue input: an EpilogueLayout
    outputs: tuple      # group values written, each [*batch, M, N] contiguous
    batch_rank: int     # batch dimensions left after merging (0: one matrix)
    int64: bool         # 64-bit offsets: some tensor reaches 2**31 elements
    precision: str      # tl.dot input_precision for fp32 inputs: "ieee" or "tf32"
    numerics: str = "default"   # the epilogue's numerics policy (codegen.pointwise.NUMERICS)
    checks: tuple = ()  # (node, ValueCheck) pairs the epilogue flags (codegen.checks)


@dataclass(frozen=True)
class MatmulEmitted:
    name: str
    source: str
    arg_names: tuple    # kernel arguments in launch order, constexprs excluded
    bases: tuple        # per epilogue input: the name its pointer and strides use


def kernel_name(anchor: Node, epilogue) -> str:
    """``matmul_sigmoid_mul``: the anchor op, then the epilogue's distinct ops."""
    ops = list(dict.fromkeys(n.op for n in epilogue))
    return "_".join([anchor.op] + ops[:4]) + ("_etc" if len(ops) > 4 else "")


def emit_matmul(spec: MatmulSpec, a: Node, b: Node, b_transposed: bool = False,
                reference: bool = False) -> MatmulEmitted:
    """Generate the Triton source of one matmul-epilogue kernel (``a``, ``b``: the
    IR values read as A [M, K] and B [K, N], for the comments; ``b_transposed``:
    ``b`` is stored [N, K], like linear's weight; ``reference``: the epilogue in the
    tutorial spelling, the cost baseline)."""
    name = kernel_name(spec.anchor, spec.epilogue)
    taken = {"a", "b", "acc", "pid", "pid_m", "pid_n", "pid_b", "offs_m", "offs_n", "offs_k",
             "offs_am", "offs_bn", "a_ptrs", "b_ptrs", "mask", "k", "rem", "tl", "triton", "M", "N",
             "K", "num_pid_m", "num_pid_n", "num_pid_in_group", "group_id", "first_pid_m",
             "group_size_m", "offs_out", "out_offset", *_split("acc", EPILOGUE_CHUNKS)[1],
             *[f"out{k}" for k in range(len(spec.outputs))], *[f"i_b{d}" for d in range(spec.batch_rank)]}
    fresh = namer(taken)

    batch = [f"b{d}" for d in range(spec.batch_rank)]
    params = [("a_ptr", f"A [M, K]: {format_value(a)}"),
              ("b_ptr", f"B [K, N]: {format_value(b)}"
                        + (", read transposed through its strides" if b_transposed else ""))]
    strides = [("stride_am, stride_ak" + "".join(f", stride_a{d}" for d in batch),
                "element strides of A (a transposed operand is swapped strides)"),
               ("stride_bk, stride_bn" + "".join(f", stride_b{d}" for d in batch),
                "element strides of B (0 on batch dims it is broadcast over)")]
    var: dict[Node, str] = {}
    bases, loads = [], []
    for node, layout in zip(spec.inputs, spec.layouts):
        base = fresh(input_name(node))
        taken.add(f"{base}_ptr")
        var[node] = base
        bases.append(base)
        ptr = f"{base}_ptr"
        how = {TILE: "an [M, N] tile", ROW: "a row over N, broadcast down M",
               COL: "a column over M, broadcast along N", SCALAR: "one value"}[layout]
        params.append((ptr, f"epilogue input {format_value(node)}, {how}"))
        own = {TILE: ["m", "n"], ROW: ["n"], COL: ["m"], SCALAR: []}[layout]
        own += batch if layout != SCALAR else []
        if own:
            strides.append((", ".join(f"stride_{base}_{d}" for d in own), f"element strides of {base}"))
        load = {TILE: f"tl.load({ptr} + offs_m[:, None] * stride_{base}_m + offs_n[None, :] * "
                      f"stride_{base}_n, mask=mask)",
                ROW: f"tl.load({ptr} + offs_n * stride_{base}_n, mask=offs_n < N)[None, :]",
                COL: f"tl.load({ptr} + offs_m * stride_{base}_m, mask=offs_m < M)[:, None]",
                SCALAR: f"tl.load({ptr})"}[layout]
        loads.append((layout, f"{base} = {load}{load_cast(node)}"))
    for k, out in enumerate(spec.outputs):
        params.append((f"out{k}_ptr", f"%{out.id}: {out.type_str()}, written contiguous"))
    params += [CHECKS_PARAM] if spec.checks else []
    params.append(("M, N, K", "out[M, N] = A[M, K] @ B[K, N], per batch"))
    params += strides
    if spec.batch_rank > 1:
        params.append((", ".join(f"size_b{d}" for d in range(1, spec.batch_rank)),
                       "batch sizes (the first follows from the grid)"))

    acc_type = "tl.float64" if a.dtype == torch.float64 else "tl.float32"
    lines = _prologue(spec, batch, [b for b, lay in zip(bases, spec.layouts) if lay != SCALAR],
                      len(spec.outputs))
    lines += [
        f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_type})",
        "for k in range(0, tl.cdiv(K, BLOCK_K)):",
        "    # the last step may run past K: masked lanes read 0 and add nothing",
        "    a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_K, other=0.0)",
        "    b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_K, other=0.0)",
    ]
    precision = spec.precision if a.dtype == torch.float32 else "ieee"
    lines += [
        # out_dtype spelled out: Triton 3.6 defaults it to fp32 and rejects an fp64 acc
        f"    acc = tl.dot(a, b, acc, input_precision=\"{precision}\", out_dtype={acc_type})",
        "    a_ptrs += BLOCK_K * stride_ak",
        "    b_ptrs += BLOCK_K * stride_bk",
    ]
    body = _epilogue(spec, var, loads, taken, reference)
    lines += body

    consts = [("BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr",
               "tile computed by one program"),
              ("GROUP_M: tl.constexpr", "rows of tiles per group, for L2 reuse of B tiles")]
    out = ["@triton.jit", f"def {name}("]
    out += [f"    {p},  # {c}" for p, c in params + consts]
    out += ["):"] + [f"    {line}" for line in lines]
    header = [f'"""Generated by fusion: a matmul with {len(spec.epilogue)} pointwise op(s) '
              'fused as its epilogue.', "", f"    {format_node(spec.anchor)}",
              *[f"    {format_node(n)}" for n in spec.epilogue],
              *([REFERENCE_NOTE] if reference else []), '"""',
              "import triton", "import triton.language as tl"]
    helpers = helpers_used([line.split("  # ")[0] for line in body])  # calls, not comments
    source = "\n".join(header) + "\n" + "".join(helpers) + "\n\n" + "\n".join(out) + "\n"
    arg_names = tuple(a.strip() for p, _ in params for a in p.split(","))
    return MatmulEmitted(name, source, arg_names, tuple(bases))


# The epilogue runs on the accumulator in column chunks, one after another, so only one
# chunk's temporaries are live at a time. Whole-tile, our sigmoid epilogue spilled on sm_90
# at 128x64 and 128x128 tiles on 4 warps (64 and 128 values a thread); in 4 chunks it fits
# (145 and 254 registers, no spill: compile_for, Triton 3.9), so large tiles keep 2 blocks
# per SM, and the tutorial's tl.sigmoid epilogue loses nothing (18.7 -> 18.3 instructions
# per output at 128x128).
EPILOGUE_CHUNKS = 4


def _epilogue(spec: MatmulSpec, var: dict, loads: list, taken: set, reference: bool) -> list[str]:
    """The fused chain on each column chunk of ``acc``: its inputs' loads, the bias, the op
    table's expressions, one rounding per store. ``loads``: (layout, line) per input."""
    n = EPILOGUE_CHUNKS
    width = f"BLOCK_N // {n}"
    lines = [f"# ---- epilogue: the fused chain on {n} column chunks of acc in turn (one chunk's",
             "# temporaries live at a time: fewer registers), then one rounding per store",
             "offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)"]
    lines += [line for layout, line in loads if layout in (COL, SCALAR)]  # the same for every chunk
    split, chunks = _split("acc", n)
    lines += split
    for c, chunk in enumerate(chunks):
        chunk_var = dict(var)
        lines += [f"# chunk {c}: columns [{c}/{n}, {c + 1}/{n}) of the tile",
                  f"offs_n = pid_n * BLOCK_N + {c} * ({width}) + tl.arange(0, {width})",
                  "mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)"]
        lines += [line for layout, line in loads if layout in (TILE, ROW)]
        fresh = namer(set(taken))  # the same names in every chunk: the chunks read alike
        chunk_var[spec.anchor] = chunk
        if spec.bias is not None:
            biased = chunk_var[spec.anchor] = fresh(f"v{spec.anchor.id}")
            lines.append(f"{biased} = {chunk} + {chunk_var[spec.bias]}  # {format_node(spec.anchor)}")
        elif c == 0:
            lines.append(f"# acc is {format_node(spec.anchor)}")
        lines += emit_body(spec.epilogue, chunk_var, fresh, spec.numerics, reference)
        if not reference:  # eager's value checks, flagged by every chunk alike
            lines += check_lines(spec.checks, lambda node, k: operand_expr(node, k, chunk_var))
        lines.append("offs_out = offs_m[:, None] * N + offs_n[None, :]")
        lines += [f"tl.store(out{k}_ptr + offs_out, {store_cast(chunk_var[out], f'out{k}_ptr')}, mask=mask)"
                  for k, out in enumerate(spec.outputs)]
    return lines


def _split(name: str, parts: int, div: int = 2) -> tuple[list[str], list[str]]:
    """Lines splitting the tile ``name`` (BLOCK_N // (div / 2) columns) into ``parts`` column
    chunks, and the chunks' names in column order: reshape to [BLOCK_M, 2, half], put the 2
    last, split (on the accumulator's layout a renaming of registers, no data movement)."""
    if parts == 1:
        return [], [name]
    lo, hi = f"{name}_lo", f"{name}_hi"
    lines = [f"{lo}, {hi} = tl.split(tl.permute(tl.reshape({name}, (BLOCK_M, 2, BLOCK_N // {div})), "
             "(0, 2, 1)))"]
    lo_lines, lo_names = _split(lo, parts // 2, div * 2)
    hi_lines, hi_names = _split(hi, parts // 2, div * 2)
    return lines + lo_lines + hi_lines, lo_names + hi_names


def _prologue(spec: MatmulSpec, batch: list, epilogue_bases: list, n_out: int) -> list[str]:
    """Program ids in grouped order, batch offsets, and the first A and B tile pointers."""
    to64 = ".to(tl.int64)" if spec.int64 else ""
    lines = [
        f"pid = tl.program_id(axis=0){to64}",
        "num_pid_m = tl.cdiv(M, BLOCK_M)",
        "num_pid_n = tl.cdiv(N, BLOCK_N)",
        "# grouped order: GROUP_M rows of tiles share the B tiles they read, in L2",
        "num_pid_in_group = GROUP_M * num_pid_n",
        "group_id = pid // num_pid_in_group",
        "first_pid_m = group_id * GROUP_M",
        "group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)",
        "pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)",
        "pid_n = (pid % num_pid_in_group) // group_size_m",
    ]
    if batch:
        lines.append(f"pid_b = tl.program_id(axis=1){to64}")
        lines.append("# index of this matrix along each batch dimension")
        if len(batch) == 1:
            lines.append("i_b0 = pid_b")
        else:
            lines.append("rem = pid_b")
            for d in range(len(batch) - 1, 0, -1):
                lines.append(f"i_b{d} = rem % size_b{d}")
                if d > 1:
                    lines.append(f"rem = rem // size_b{d}")
            lines.append("i_b0 = rem // size_b1")
        for t in ["a", "b"] + epilogue_bases:
            sep = "" if t in ("a", "b") else "_"  # stride_ab0 as in the tutorial; stride_x_b0
            offset = " + ".join(f"i_b{d} * stride_{t}{sep}{bd}" for d, bd in enumerate(batch))
            lines.append(f"{t}_ptr += {offset}")
        lines.append("out_offset = pid_b * M * N  # outputs are contiguous [batch, M, N]")
        lines += [f"out{k}_ptr += out_offset" for k in range(n_out)]
    lines += [
        # a clamp, not the tutorial's % M: one min instead of an integer remainder per row
        # (4 instructions per output of a 64x64 tile on sm_90)
        "# rows and columns past M and N read the last one: reads stay in bounds, the store masks them",
        "offs_am = tl.minimum(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), M - 1)",
        "offs_bn = tl.minimum(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)",
        "offs_k = tl.arange(0, BLOCK_K)",
        "a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak",
        "b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn",
    ]
    return lines
