"""What ``fusion.explain`` returns: the report of one compiled call, and how it prints."""
from __future__ import annotations

from dataclasses import dataclass, field

from codegen.gpu_report import compile_for
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

    def compile_for(self, arch: str = "sm_90"):
        """Compile for ``sm_90`` / ``sm_80`` without a GPU: ``.ptx``, ``.registers``,
        ``.spills``, ``.shared_bytes``."""
        return compile_for(self.path, self.name, self._example, arch, self._constexprs or None,
                           self._num_warps, self._num_stages)


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

    def __str__(self) -> str:
        lines = [f"== Capture: {self.capture} ==", "", "== IR ==", self.graph, "",
                 f"== Execution: {self.mode.describe()} =="]
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
