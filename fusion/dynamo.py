"""``torch.compile(model, backend="fusion")``: Dynamo hands us FX graphs.

Registered through the ``torch_dynamo_backends`` entry point in
pyproject.toml, so no import is needed. Each graph Dynamo captures (one per
region between graph breaks) is lowered by the same pipeline as
``fusion.compile``. Training goes through our own autodiff, not AOTAutograd:
the compiled graph's fused kernels are ``torch.autograd.Function``s whose
backward kernels come from the op table's rules, so gradients get the same
stable sigmoid derivative (AOTAutograd would hand us ATen's decomposed
``sigmoid_backward``, computed from the rounded output).
"""
from __future__ import annotations

import torch.fx as fx

from fusion.api import CompiledModule

_compiled: list[CompiledModule] = []  # the most recent graphs, for compiled_graphs()


def fusion_backend(gm: fx.GraphModule, example_inputs, options: dict | None = None, mode: str | None = None):
    """A Dynamo backend: returns a callable running ``gm`` through fused kernels (a graph
    that cannot be lowered runs as it is, eagerly, with a warning: torch.compile never fails
    for a backend's reason). ``torch.compile(..., options={"precision": "exact"})`` reaches
    ``options``; ``mode`` (torch.compile's "max-autotune", "reduce-overhead"...) is
    accepted and changes nothing: the kernels have one form, tuned by the heuristic table
    (``FUSION_AUTOTUNE=1`` autotunes matmul epilogues)."""
    unknown = set(options or {}) - {"precision"}
    if unknown:
        raise ValueError(f"fusion backend: unknown options {sorted(unknown)} (known: 'precision')")
    compiled = CompiledModule(gm, fallback="eager", precision=(options or {}).get("precision", "default"))
    _compiled.append(compiled)
    del _compiled[:-16]
    return compiled


def compiled_graphs() -> list[CompiledModule]:
    """The CompiledModules created by the backend most recently (newest last)."""
    return list(_compiled)


def reset() -> None:
    """Forget the graphs compiled so far (``torch._dynamo.reset()`` forgets Dynamo's side)."""
    _compiled.clear()
