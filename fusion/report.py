"""What ``fusion.explain`` returns: the report of one compiled call, and how it prints."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from codegen.cache import write_source
from codegen.gpu_report import compile_for
from codegen.sass_cost import GpuSpec, KernelCost, Modelled
from fusion.modes import Mode


@dataclass
class KernelReport:
    """One generated kernel, with enough to read it, find it and compile it."""
    name: str
    kind: str
    source: str
    path: str
    inputs: list          # IR values read, e.g. "%0 x: f32[37, 53]"
    outputs: list         # IR values written
    bytes_read: int
    bytes_written: int
    eager_bytes: int      # what eager's separate ops would read + write
    _example: list = field(repr=False, default_factory=list)
    _constexprs: dict = field(repr=False, default_factory=dict)
    flops: int = 0        # matmul kernels: 2*M*N*K per matrix, plus ~1 per epilogue op and element
    config: str = ""      # matmul kernels: the tile config (GPU heuristic; what the interpreter ran)
    _num_warps: int = field(repr=False, default=4)
    _num_stages: int | None = field(repr=False, default=None)
    elements: int = 0     # the iteration space's elements (matmul: outputs, batch included)
    moved: tuple = ()     # (numel, itemsize) of every value read or written
    K: int = 0            # matmul kernels: the reduction length
    candidates: tuple = ()  # matmul kernels: the TileConfigs a GPU may run, the pick first
    reference_source: str = field(repr=False, default="")  # the same kernel in the tutorial spelling

    def compile_for(self, arch: str = "sm_90"):
        """Compile for ``sm_90`` / ``sm_80`` without a GPU: ``.ptx``, ``.sass``, ``.registers``,
        ``.spills`` (stack-frame bytes), ``.shared_bytes``."""
        return compile_for(self.path, self.name, self._example, arch, self._constexprs or None,
                           self._num_warps, self._num_stages)

    def reference(self) -> KernelReport:
        """The same kernel (group, layout, tiles) with each op in its tutorial spelling
        (``tl.sigmoid``...): the baseline our cost is compared with. Never run."""
        assert self.reference_source, f"{self.name}: no reference source"
        path = str(write_source(self.name, self.reference_source))
        return dataclasses.replace(self, source=self.reference_source, path=path, reference_source="")

    def with_config(self, config) -> KernelReport:
        """This matmul kernel compiled with another ``TileConfig`` (an autotune candidate)."""
        return dataclasses.replace(self, _constexprs=dict(config.constexprs), _num_warps=config.num_warps,
                                   _num_stages=config.num_stages, config=str(config))

    def cost(self, arch: str = "sm_90") -> KernelCost:
        """Static cost from the SASS for ``arch``: instructions per element (per output for
        matmul kernels, the K loop run ceil(K / BLOCK_K) times), registers, spills."""
        c = self._constexprs
        per_program = c.get("BLOCK_M", 1) * c.get("BLOCK_N", 1) if self.kind == "matmul" else \
            c.get("BLOCK_SIZE", 1024)
        trips = math.ceil(self.K / c["BLOCK_K"]) if self.kind == "matmul" else 1
        return self.compile_for(arch).cost(per_program / (self._num_warps * 32), trips)

    def bytes_at(self, elements: int) -> float:
        """Bytes moved at ``elements`` (grown from this size: full-size values in proportion,
        smaller ones, a matmul's operands or a broadcast row, with the side: its square root)."""
        grow = elements / max(self.elements, 1)
        return sum(n * size * (grow if n == self.elements else math.sqrt(grow)) for n, size in self.moved)

    def modelled(self, gpu: GpuSpec, elements: int | None = None, cost: KernelCost | None = None,
                 arch: str = "sm_90") -> Modelled:
        """The modelled (roofline, not measured) time on ``gpu`` at ``elements`` (default:
        this size), from the ``arch`` SASS."""
        elements = elements or self.elements
        cost = cost or self.cost(arch)
        dtype = self._example[0][1] if self._example and self._example[0][0] == "ptr" else None
        kind = {"torch.float64": "fp64", "torch.float32": "tf32"}.get(str(dtype), "half")
        return cost.modelled(gpu, elements, self.bytes_at(elements), 2.0 * elements * self.K, kind)


@dataclass
class Report:
    """The result of ``fusion.explain``; ``str(report)`` is a readable summary."""
    graph: str
    mode: Mode
    kernels: list
    backward_kernels: list
    extern: list          # (op, reason) for every node not fused
    saved: list           # per forward kernel: the inputs it saves for backward
    saved_bytes: int
    eager_saved_bytes: int | None
    rewrites: list = field(default_factory=list)  # what the passes changed, in words
    capture: str = ""     # how the model was captured (torch.fx, or Dynamo and why)
    graph_breaks: list = field(default_factory=list)  # Dynamo's reasons, where breaks run eagerly
    eager_reason: str | None = None  # why the whole call ran eagerly, if it did

    def __str__(self) -> str:
        lines = [f"== Capture: {self.capture} ==", "", "== IR ==", self.graph, "",
                 f"== Execution: {f'eagerly: {self.eager_reason}' if self.eager_reason else self.mode.describe()} =="]
        if self.rewrites:
            lines += ["", "== Rewrites =="] + self.rewrites
        for title, ks in (("Forward kernels", self.kernels), ("Backward kernels", self.backward_kernels)):
            if not ks:
                continue
            lines += ["", f"== {title} =="]
            for k in ks:
                moved = k.bytes_read + k.bytes_written
                lines.append(f"{k.name} [{k.kind}]  reads {', '.join(k.inputs)}  writes "
                             f"{', '.join(k.outputs)}")
                lines.append(f"    bytes moved {moved:,} vs {k.eager_bytes:,} for eager's separate ops"
                             f" ({k.eager_bytes / max(moved, 1):.2f}x less)  source: {k.path}")
                if k.kind == "matmul":
                    lines.append(f"    {k.flops:,} FLOPs, the same unfused; {k.flops / max(moved, 1):.1f}"
                                 f" FLOP/byte fused vs {k.flops / max(k.eager_bytes, 1):.1f} unfused;"
                                 f" tiles {k.config}")
        lines += ["", "== Not fused (run by eager torch) =="]
        lines += [f"graph break: {why}" for why in self.graph_breaks]
        lines += [f"{op}: {why}" for op, why in self.extern] or (
            [] if self.graph_breaks else ["nothing: every op was fused or is a view"])
        if self.saved:
            lines += ["", "== Saved for backward =="]
            lines += [f"{name}: {', '.join(vals) or 'nothing'}" for name, vals in self.saved]
            eager = "" if self.eager_saved_bytes is None else \
                f" (eager autograd saves {self.eager_saved_bytes:,})"
            lines.append(f"total {self.saved_bytes:,} bytes{eager}; a module's parameters not counted")
        return "\n".join(lines)
