"""The pointwise emitter: one fused Triton kernel for a group of pointwise nodes.

The kernel walks the group's iteration space (the shape of its outputs) in
flat blocks, like the vector-add tutorial. Each external input is read once
per element: directly at ``offs`` when it is contiguous with the iteration
shape, through per-dimension strides otherwise (a stride of 0 broadcasts, so
nothing is materialised). Values are computed in fp32 (fp64 stays fp64) and
rounded once at the store.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from codegen.checks import CHECKS_PARAM, check_lines
from codegen.layouts import InputLayout
from codegen.literals import emit_literal, scalar_type
from codegen.prelude import helpers_used
from ir.graph import Node, format_node, format_value
from ir.ops import OPS, OpKind
from ir.types import compute_type, promote, triton_type

# The numerics policy kernels are emitted for (``fusion.compile(..., precision=...)``; docs/NUMERICS.md).
# "default": each tiered op computes with the forms of its node's tier (ir.opdef.TIERS): fp32
# arithmetic for fp16/bf16/fp32 results, no fp64 instruction. "exact": fp32 results of tiered
# ops are computed in fp64 and rounded once (within 0.5 ulp), fp16/bf16 with the fp32 forms.
NUMERICS = ("default", "exact")


@dataclass(frozen=True)
class PointwiseSpec:
    """What the emitter needs: the group and how each input is laid out."""
    nodes: tuple        # group members in topological order
    inputs: tuple       # external nodes the group reads
    layouts: tuple      # per input: an InputLayout
    outputs: tuple      # group values written to memory
    rank: int           # rank of the (collapsed) iteration space
    int64: bool         # 64-bit offsets: some tensor has 2**31 elements or more
    numerics: str = "default"   # "default" or "exact": see NUMERICS
    checks: tuple = ()  # (node, ValueCheck) pairs the kernel flags (codegen.checks)


@dataclass(frozen=True)
class EmittedKernel:
    name: str
    source: str
    arg_names: tuple    # kernel arguments in launch order, BLOCK_SIZE excluded


def kernel_name(nodes) -> str:
    """``fused_sigmoid_mul_add``: the distinct ops of the group, in order."""
    ops = list(dict.fromkeys(n.op for n in nodes))
    return "fused_" + "_".join(ops[:5]) + ("_etc" if len(ops) > 5 else "")


def _ident(text: str) -> str:
    ident = re.sub(r"\W+", "_", text).strip("_").lower()
    return ident if ident and not ident[0].isdigit() else f"v_{ident}"


def namer(taken: set[str]):
    """``fresh(base)``: ``base``, or ``base_1``, ``base_2``... whichever is not taken yet."""
    def fresh(base: str) -> str:
        cand, k = base, 1
        while cand in taken:
            cand, k = f"{base}_{k}", k + 1
        taken.add(cand)
        return cand
    return fresh


def emit_pointwise(spec: PointwiseSpec, name: str | None = None, reference: bool = False) -> EmittedKernel:
    """Generate the Triton source of one fused pointwise kernel (``reference``: the same
    kernel in the tutorial spelling of each op, the cost baseline; see ``emit_body``)."""
    name = name or kernel_name(spec.nodes)
    members = set(spec.nodes)
    var: dict[Node, str] = {}
    taken: set[str] = {"offs", "mask", "pid", "n_elements", "BLOCK_SIZE", "tl", "triton", "rem"}
    fresh = namer(taken)

    params, loads = [], []
    for node, layout in zip(spec.inputs, spec.layouts):
        base = fresh(input_name(node))
        var[node] = base
        ptr = f"{base}_ptr"
        taken.add(ptr)
        how = {InputLayout.FLAT: "contiguous", InputLayout.SCALAR: "one element, broadcast",
               InputLayout.STRIDED: "read through strides (0 = broadcast)"}[layout]
        params.append((ptr, f"{format_value(node)}, {how}"))
        if layout == InputLayout.STRIDED:
            strides = [f"{base}_stride{d}" for d in range(spec.rank)]
            params.append((", ".join(strides), f"element strides of {base} over the iteration space"))
            index = " + ".join(f"i{d} * {s}" for d, s in enumerate(strides)) if strides else "0"
            loads.append(f"{base} = tl.load({ptr} + {index}, mask=mask)")
        elif layout == InputLayout.SCALAR:
            loads.append(f"{base} = tl.load({ptr})")
        else:
            loads.append(f"{base} = tl.load({ptr} + offs, mask=mask)")
        loads[-1] += load_cast(node)

    body = emit_body(spec.nodes, var, fresh, spec.numerics, reference)

    stores = []
    for k, out in enumerate(spec.outputs):
        assert out in members, f"output {out!r} is not computed by the group"
        ptr = f"out{k}_ptr"
        if out.kind == OpKind.REDUCTION:
            src = var[out.inputs[0]]
            params.append((ptr, f"%{out.id} = {out.op}(%{out.inputs[0].id}): one partial sum per program"))
            acc = "tl.float64" if out.inputs[0].dtype == torch.float64 else (
                "tl.float32" if out.inputs[0].dtype.is_floating_point else "tl.int64")
            # widen before reducing: an int32 (or bool) sum must not wrap inside the kernel
            stores.append(f"tl.store({ptr} + pid, tl.sum(tl.where(mask, {src}, 0).to({acc}), axis=0))"
                          f"  # partial {out.op} of %{out.inputs[0].id}")
            continue
        params.append((ptr, f"%{out.id}: {out.type_str()}, written contiguous"))
        stores.append(f"tl.store({ptr} + offs, {store_cast(var[out], ptr)}, mask=mask)")
    if spec.checks:
        params.append(CHECKS_PARAM)
        stores += check_lines(spec.checks, lambda n, k: operand_expr(n, k, var))
    sizes = [f"size{d}" for d in range(1, spec.rank)]
    if sizes:
        params.append((", ".join(sizes), f"iteration space [size0, {', '.join(sizes)}]; "
                                          "size0 follows from n_elements"))
    params.append(("n_elements", "number of elements in the iteration space"))

    strided = any(layout == InputLayout.STRIDED for layout in spec.layouts)
    out = ["@triton.jit", f"def {name}("]
    out += [f"    {p},  # {c}" for p, c in params]
    out += ["    BLOCK_SIZE: tl.constexpr,  # elements handled by one program", "):"]
    pid = "tl.program_id(axis=0).to(tl.int64)" if spec.int64 else "tl.program_id(axis=0)"
    reads = len(spec.layouts)
    out += [f"    # memory traffic: {reads} read(s) and {len(spec.outputs)} write(s) per element",
            f"    pid = {pid}",
            "    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)",
            "    mask = offs < n_elements"]
    if strided:
        out.append("    # index of each element along every dimension, for strided reads")
        if spec.rank == 1:
            out.append("    i0 = offs")
        else:
            out.append("    rem = offs")
            for d in range(spec.rank - 1, 0, -1):
                out.append(f"    i{d} = rem % size{d}")
                if d > 1:
                    out.append(f"    rem = rem // size{d}")
            out.append("    i0 = rem // size1")
    out += [f"    {line}" for line in loads + body + stores]
    header = [
        f'"""Generated by fusion: {len(spec.nodes)} pointwise op(s) fused into one kernel.',
        *([REFERENCE_NOTE] if reference else []),
        "",
        *[f"    {format_node(n)}" for n in spec.nodes],
        '"""',
        "import triton",
        "import triton.language as tl",
    ]
    helpers = helpers_used([line.split("  # ")[0] for line in body + stores])  # calls, not comments
    source = "\n".join(header) + "\n" + "".join(helpers) + "\n\n" + "\n".join(out) + "\n"
    arg_names = tuple(a.strip() for p, _ in params for a in p.split(","))
    return EmittedKernel(name, source, arg_names)


def input_name(node: Node) -> str:
    """The variable an input is loaded into: its argument name, else ``buf<id>``."""
    return _ident(node.name) if node.name and node.op in ("input", "param") else f"buf{node.id}"


def store_cast(value: str, ptr: str) -> str:
    """``value`` converted for a store to ``ptr``: rounded once, to nearest even."""
    return f"{value}.to({ptr}.dtype.element_ty)"


def load_cast(node: Node) -> str:
    """The ``.to(...)`` a loaded value needs: half types are computed in fp32."""
    want = compute_type(node.dtype)
    return f".to({want})" if want != triton_type(node.dtype) else ""


# the header line of a reference kernel (``reference=True``)
REFERENCE_NOTE = "Reference spelling (tl.sigmoid, tl.exp): the cost baseline, compiled and never run."


def emit_body(nodes, var: dict, fresh, numerics: str = "default", reference: bool = False) -> list[str]:
    """One line per node, ``v4 = sigmoid(v3, "fp32")  # %4 = sigmoid(%3) : f32[..]``, from the
    op table's Triton expressions. ``var`` maps operands to variables (and is
    extended with the new ones); ``fresh(base)`` returns an unused name. Shared
    by every kernel family: a matmul epilogue is this body on the accumulator.
    ``reference``: each op's tutorial spelling (``OpDef.triton_reference``), in the
    compute type, for the kernel our cost is compared with."""
    body = []
    for n in nodes:
        if n.kind == OpKind.REDUCTION:
            continue  # a full reduction is stored as per-program partial sums
        var[n] = fresh(f"v{n.id}")
        d = OPS[n.op]
        args = [_operand(n, i, k, var) for k, i in enumerate(n.inputs)]
        if reference:
            spell = d.triton_reference or d.triton
            body.append(f"{var[n]} = {spell(args, n.attrs, compute_type(n.dtype))}  # {format_node(n)}")
            continue
        if d.tiered and numerics == "exact" and n.dtype == torch.float32:
            # computed in fp64 and rounded once: within 0.5 ulp (precision="exact")
            args = [f"{a}.to(tl.float64)" if isinstance(x, Node) else a for a, x in zip(args, n.inputs)]
            expr = f"({d.triton(args, {**n.attrs, 'tier': 'fp64'}, 'tl.float64')}).to(tl.float32)"
        else:
            attrs = {**n.attrs, "tier": tier(n.dtype, numerics)} if d.tiered else n.attrs
            expr = d.triton(args, attrs, compute_type(n.dtype))
        body.append(f"{var[n]} = {expr}  # {format_node(n)}")
    return body


def tier(dtype: torch.dtype, numerics: str = "default") -> str:
    """The precision tier (ir.opdef.TIERS) a result of ``dtype`` is computed with."""
    if dtype == torch.float64:
        return "fp64"
    if dtype in (torch.float16, torch.bfloat16) and numerics == "default":
        return "half"
    return "fp32"


def operand_expr(n: Node, k: int, var: dict) -> str:
    """Operand ``k`` of ``n`` as the op reads it (what its value checks test)."""
    return _operand(n, n.inputs[k], k, var)


def _operand(n: Node, x, k: int, var: dict) -> str:
    """Operand ``k`` of ``n`` as an expression in the type the op computes in."""
    promotion = OPS[n.op].promotion
    if promotion == "none" or (promotion == "select" and k == 0):
        want = None
    elif promotion == "bool":
        want = compute_type(promote(n.inputs))
    else:
        want = compute_type(n.dtype)
    if not isinstance(x, Node):
        return _literal(n, x, want)
    have = compute_type(x.dtype)
    return var[x] if want is None or want == have else f"{var[x]}.to({want})"


def _literal(n: Node, v, want: str | None) -> str:
    """A Python scalar operand of ``n``, converted as eager converts it (codegen.literals)."""
    if want is None:  # an attr-like operand the op's expression reads as is
        return repr(v)
    promotion = OPS[n.op].promotion
    values = n.inputs[1:] if promotion == "select" else n.inputs
    dtype = scalar_type(n.dtype, promote(n.inputs) if promotion == "bool" else n.dtype, promotion)
    return emit_literal(v, dtype, want, typed=not any(isinstance(i, Node) for i in values))
