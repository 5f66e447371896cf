"""Generated kernels at run time, the leaves of the runtime: the interface every
kernel family shares (``FusedKernel``) and the pointwise family.

A kernel knows its group and where it runs, and nothing of plans or
autograd. One ``PointwiseKernel`` per pointwise group: each call looks at
its input tensors' strides (``fusion.layout``), emits and caches one source
variant per distinct layout, allocates the outputs and launches the grid.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from codegen.cache import load_kernel, source_path
from codegen.checks import checks_of
from codegen.layouts import InputLayout
from codegen.pointwise import EmittedKernel, PointwiseSpec, emit_pointwise
from codegen.triton_compat import launch
from fusion.checks import ValueFlags
from fusion.layout import Layout, memory_order, plan_layout
from fusion.modes import Mode
from ir.graph import numel
from ir.interpret import eval_node
from ir.ops import OPS, OpKind


@dataclass
class Variant:
    """One generated source specialised to a layout, and its loaded kernel."""
    emitted: EmittedKernel
    fn: object
    layout: Layout
    example: list  # per kernel argument ("ptr", dtype) or ("int", value), for compile_for
    spec: PointwiseSpec | None = None  # what it was emitted from (explain emits its reference)

    @property
    def path(self) -> str:
        return str(source_path(self.emitted.name, self.emitted.source))


class FusedKernel:
    """One generated kernel for one group: the interface the runtime calls.

    ``kernel(inputs, keep=())`` takes one tensor per ``group.inputs`` and returns
    one per ``group.outputs``, then one per node of ``keep`` (a subset of
    ``keep_for_backward``: values the kernel can write as a by-product so that
    its backward reads them instead of recomputing them).
    """
    family = ""                              # the report's label: "pointwise" | "matmul"

    def __init__(self, group, mode: Mode, role: str = "forward", numerics: str = "default"):
        self.group = group
        self.mode = mode
        self.role = role                     # "forward" | "backward": the logs' label
        self.numerics = numerics             # codegen.pointwise.NUMERICS: precision="..." of the API
        self.keep_for_backward: tuple = ()
        self.variants: dict = {}             # generated sources, one per layout pattern

    def __call__(self, inputs: list[torch.Tensor], keep: tuple = ()) -> list[torch.Tensor]:
        raise NotImplementedError

    def launch(self, fn, grid, args: list, **constexprs) -> None:
        launch(fn, grid, args, self.mode == Mode.INTERPRETER, **constexprs)


def log_source(role: str, name: str, source: str) -> None:
    """``FUSION_LOG=code``: print each generated kernel as it is compiled."""
    if os.environ.get("FUSION_LOG", "") in ("code", "output_code"):
        print(f"# fusion: {role} kernel {name}\n{source}", file=sys.stderr)


class PointwiseKernel(FusedKernel):
    """Runs one pointwise group as a single Triton kernel."""
    family = "pointwise"

    def __init__(self, group, mode: Mode, role: str = "forward", numerics: str = "default"):
        super().__init__(group, mode, role, numerics)
        # per pattern of input shapes and strides: its variant, and its layout (the variant's
        # source serves every layout of its kinds; strides, sizes and order are this one's)
        self._by_strides: dict[tuple, tuple[Variant, Layout]] = {}
        # all fixed per group: sizes, grid, and what each output is allocated as
        self.shape = group.shape
        self.device = group.outputs[0].device
        self.n = numel(self.shape)
        self.block = _block_size(self.n, mode)
        self.grid = ((self.n + self.block - 1) // self.block,)
        # element outputs are written whole; a full reduction gets one partial per program
        self.allocs = [(self.grid, _partial_dtype(o), OPS[o.op].combine) if _is_reduction(o)
                       else (self.shape, o.dtype, None) for o in group.outputs]
        self.elementwise_outputs = [o for o in group.outputs if not _is_reduction(o)]
        # eager's value checks (bce's ranges), made by forward kernels: a backward sees
        # only values its forward already checked
        self.checks = checks_of(group.nodes) if role == "forward" else ()
        self.flags = ValueFlags(self.checks) if self.checks else None

    def __call__(self, inputs: list[torch.Tensor], keep: tuple = ()) -> list[torch.Tensor]:
        assert not keep, "a pointwise kernel keeps nothing for backward"
        device, n = self.device, self.n
        inputs = [t if t.device == device else t.to(device) for t in inputs]
        variant, layout = self.variant_for(inputs)
        outs = [torch.empty(shape, dtype=dtype, device=device) if combine is not None
                else layout.empty(shape, dtype, device) for shape, dtype, combine in self.allocs]
        if n:
            args = []
            for t, kind, strides in zip(inputs, layout.kinds, layout.strides):
                args.append(t)
                if kind == InputLayout.STRIDED:
                    args.extend(strides)
            args += outs
            flags = [self.flags.buffer(device)] if self.flags else []
            args += flags
            args += list(layout.sizes[1:])
            args.append(n)
            self.launch(variant.fn, self.grid, args, BLOCK_SIZE=self.block)
            for buf in flags:  # after the launch: eager's error if an element failed a check
                self.flags.raise_if_set(buf)
        return [t if combine is None else combine(t, n).to(o.dtype)
                for o, t, (_, _, combine) in zip(self.group.outputs, outs, self.allocs)]

    def variant_for(self, inputs: list[torch.Tensor]) -> tuple[Variant, Layout]:
        """The generated variant for these inputs' layout kinds, and their layout."""
        key = tuple((t.shape, t.stride()) for t in inputs)
        found = self._by_strides.get(key)
        if found is None:
            layout = plan_layout(self.group.shape, inputs, self._output_order(inputs))
            vkey = (len(layout.sizes), layout.kinds, layout.int64)
            v = self.variants.get(vkey)
            if v is None:
                v = self.variants[vkey] = self._build(layout, inputs)
            found = self._by_strides[key] = (v, layout)
        return found

    def _output_order(self, inputs: list[torch.Tensor]) -> tuple | None:
        """The memory order eager gives the outputs (channels_last in, channels_last out),
        learnt by running the group's ops on meta tensors with the inputs' strides; None
        when every input is contiguous, or the outputs would disagree."""
        if all(t.is_contiguous() for t in inputs) or not self.elementwise_outputs:
            return None
        env = {x: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
               for x, t in zip(self.group.inputs, inputs)}
        try:
            for node in self.group.nodes:
                if not _is_reduction(node):
                    env[node] = eval_node(node, env)
        except (RuntimeError, NotImplementedError, TypeError):
            return None  # a reference that needs values (a value check): iterate as is
        orders = {memory_order(env[o]) for o in self.elementwise_outputs}
        order = orders.pop() if len(orders) == 1 else None
        return None if order is None or list(order) == sorted(order) else order

    def _build(self, layout: Layout, inputs) -> Variant:
        g = self.group
        spec = PointwiseSpec(tuple(g.nodes), tuple(g.inputs), layout.kinds, tuple(g.outputs),
                             len(layout.sizes), layout.int64, self.numerics, self.checks)
        emitted = emit_pointwise(spec)
        log_source(self.role, emitted.name, emitted.source)
        fn = load_kernel(emitted.name, emitted.source)
        example = []
        for t, kind, strides in zip(inputs, layout.kinds, layout.strides):
            example.append(("ptr", t.dtype))
            example += [("int", s) for s in (strides if kind == InputLayout.STRIDED else ())]
        example += [("ptr", _partial_dtype(o) if _is_reduction(o) else o.dtype) for o in g.outputs]
        example += [("ptr", torch.int32)] if self.checks else []
        n = numel(layout.sizes)
        example += [("int", s) for s in layout.sizes[1:]] + [("int", n)]
        return Variant(emitted, fn, layout, example, spec)


def _is_reduction(node) -> bool:
    return node.kind == OpKind.REDUCTION


def _partial_dtype(node) -> torch.dtype:
    src = node.inputs[0].dtype
    return torch.float64 if src == torch.float64 else (
        torch.float32 if src.is_floating_point else torch.int64)


def _block_size(n: int, mode: Mode) -> int:
    if mode == Mode.INTERPRETER:
        # the interpreter costs ~0.6 ms per program: few, large programs
        return min(max(16, 1 << (n - 1).bit_length()), 1 << 16)
    return 1024

