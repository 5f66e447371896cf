"""A matmul-epilogue kernel at run time: layout, specialisation, tile config, launch.

One ``MatmulKernel`` per group of kind "matmul" (a matmul node and the
pointwise ops it feeds, see ``fusion.partition``). Each call views A, B and
the epilogue inputs through their strides (``fusion.matmul_layout``), emits
and caches one source per distinct layout, and launches a grid of
``(tiles, batch)`` programs: on a GPU the first tile config of its candidates that
does not spill (autotuned over those with ``FUSION_AUTOTUNE=1``), one config in the
interpreter.

The plan builder chooses per group between saving the matmul result for the
backward and recomputing it there (``recompute_in_backward``); the kernel
offers the result in ``keep_for_backward`` and writes it when asked to.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from codegen.cache import load_kernel, source_path
from codegen.checks import checks_of
from codegen.layouts import EpilogueLayout
from codegen.matmul import MatmulEmitted, MatmulSpec, emit_matmul
from fusion.checks import ValueFlags
from fusion.kernel import FusedKernel, log_source
from fusion.matmul_layout import MatmulLayout, plan_matmul_layout
from fusion.matmul_tiles import TileConfig, gpu_candidates, interpreter_config, without_spills
from fusion.modes import Mode
from ir.interpret import eval_node
from ir.ops import OPS, OpKind

# Recompute the matmul in backward when its K is at most this; save its result otherwise.
# Recomputing costs 2*M*N*K flops (A and B are read again, but they are K-sized); saving
# costs an M*N write in forward, an M*N read in backward, and M*N elements of memory held
# in between. Break-even K = bytes per element * flop rate / bandwidth: on an H100
# (~990 TFLOP/s fp16/bf16, ~495 tf32, ~67 fp32 FMA; ~3.3 TB/s) about 600 for half types
# and tf32 but only ~80 for fp32 without tf32. 128 keeps attention scores (head dim 64)
# and small layers on the recompute side, where the M*N saved is largest relative to the
# work; benchmarks/matmul_recompute.py measures both sides on a GPU.
RECOMPUTE_MAX_K = 128
MAX_BATCH_GRID = 65535  # CUDA's limit on grid axis 1; larger batches run in torch


def recompute_in_backward(K: int) -> bool:
    """The save-or-recompute rule for a matmul result that the backward reads."""
    return K <= RECOMPUTE_MAX_K


@dataclass
class MatmulVariant:
    """One generated source specialised to a layout, its loaded kernel and GPU config."""
    emitted: MatmulEmitted
    fn: object
    config: TileConfig       # the heuristic's pick for a GPU (explain, compile_for)
    candidates: list         # what a GPU may run: the pick first (autotuning tries them all)
    example: list            # per argument ("ptr", dtype) / ("int", v) / ("const", 1)
    outputs: tuple = ()      # the values written: the group's outputs, then any kept ones
    tuned: tuple | None = None  # (kernel, launch kwargs) on a GPU, chosen at its first launch
    spec: MatmulSpec | None = None  # what it was emitted from (explain emits its reference)

    @property
    def path(self) -> str:
        return str(source_path(self.emitted.name, self.emitted.source))


def _tf32_enabled() -> bool:
    # torch >= 2.9 has fp32_precision; reading allow_tf32 after a user set the new API
    # raises ("mix of the legacy and new APIs"), so ask the new one first
    new = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
    if new not in (None, "none"):
        return new == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32)


class MatmulKernel(FusedKernel):
    """Runs one matmul group (anchor + pointwise epilogue) as a single Triton kernel."""
    family = "matmul"

    def __init__(self, group, mode: Mode, role: str = "forward", numerics: str = "default"):
        super().__init__(group, mode, role, numerics)
        self.anchor = next(n for n in group.nodes if n.kind == OpKind.MATMUL)
        form = OPS[self.anchor.op].form
        ins = self.anchor.inputs
        self.a, self.b = ins[form.a], ins[form.b]
        self.bias = ins[form.bias] if form.bias is not None and form.bias < len(ins) else None
        self.b_transposed = form.b_transposed
        self.epilogue = [n for n in group.nodes if n is not self.anchor]
        inside = set(group.nodes)
        read = {i for n in self.epilogue for i in n.operands() if i not in inside}
        read |= {self.bias} if self.bias is not None else set()
        self.epilogue_inputs = [i for i in group.inputs if i in read]
        self.K = self.a.shape[-1]
        # the matmul result, which the backward reads instead of recomputing it when K is large
        self.keep_for_backward = () if recompute_in_backward(self.K) else (self.anchor,)
        self.layouts: dict[tuple, MatmulLayout] = {}  # by operand shapes and strides seen
        # eager's value checks on the epilogue (bce's ranges), made by forward kernels
        self.checks = checks_of(self.epilogue) if role == "forward" else ()
        self.flags = ValueFlags(self.checks) if self.checks else None

    def __call__(self, inputs: list[torch.Tensor], keep: tuple = ()) -> list[torch.Tensor]:
        """The group's outputs, then one tensor per ``keep`` node (written too)."""
        env = dict(zip(self.group.inputs, inputs))
        device = self.anchor.device
        extras = tuple(k for k in keep if k not in self.group.outputs)
        outputs = list(self.group.outputs) + list(extras)
        outs = [torch.empty(o.shape, dtype=o.dtype, device=device) for o in outputs]
        a, b = env[self.a], env[self.b]
        b = b.transpose(-1, -2) if self.b_transposed else b
        epi = [t if t.device == device else t.to(device) for t in (env[i] for i in self.epilogue_inputs)]
        key = tuple((t.shape, t.stride()) for t in [a, b, *epi])
        layout = self.layouts.get(key)
        if layout is None:
            layout = self.layouts[key] = plan_matmul_layout(self.anchor.shape, a, b, epi)
        if outs[0].numel() == 0:
            return self._with_keep(outs, outputs, keep)
        if layout.batch_count > MAX_BATCH_GRID:
            return self._eager(env, outputs, keep)
        variant = self.variant_for(layout, extras)
        values = _arguments(variant.emitted.bases, layout, a, b, epi, outs)
        if self.flags:
            values["checks_ptr"] = self.flags.buffer(device)
        args = [values[n] for n in variant.emitted.arg_names]
        M, N = layout.M, layout.N
        if self.mode == Mode.TRITON:
            if variant.tuned is None:
                variant.tuned = gpu_kernel(variant, args)
            fn, config = variant.tuned
            grid = lambda meta: (triton_cdiv(M, meta["BLOCK_M"]) * triton_cdiv(N, meta["BLOCK_N"]),
                                 layout.batch_count)
            self.launch(fn, grid, args, **config)
        else:
            cfg = interpreter_config(M, N, layout.K)
            grid = (triton_cdiv(M, cfg.BLOCK_M) * triton_cdiv(N, cfg.BLOCK_N), layout.batch_count)
            self.launch(variant.fn, grid, args, **cfg.constexprs)
        if self.flags:
            self.flags.raise_if_set(values["checks_ptr"])
        return self._with_keep(outs, outputs, keep)

    def _with_keep(self, outs, outputs, keep):
        by_node = dict(zip(outputs, outs))
        return outs[:len(self.group.outputs)] + [by_node[k] for k in keep]

    def _eager(self, env, outputs, keep):
        env = dict(env)
        for n in self.group.nodes:
            env[n] = eval_node(n, env)
        return [env[o] for o in self.group.outputs] + [env[k] for k in keep]

    def precision(self) -> str:
        """tl.dot's input precision for fp32: tf32 exactly when torch would use it
        (CUDA and ``torch.backends.cuda.matmul.allow_tf32``); CPU torch never does."""
        if self.mode != Mode.TRITON or self.a.dtype != torch.float32:
            return "ieee"
        return "tf32" if _tf32_enabled() else "ieee"

    def variant_for(self, layout: MatmulLayout, extras: tuple = (),
                    precision: str | None = None) -> MatmulVariant:
        """The kernel for ``layout`` that also writes ``extras`` (values kept for
        backward); ``precision`` overrides ``self.precision()`` (tests of tf32 PTX)."""
        precision = precision or self.precision()
        vkey = (len(layout.batch), layout.kinds, layout.int64, precision, extras)
        v = self.variants.get(vkey)
        if v is None:
            v = self.variants[vkey] = self._build(layout, precision, extras)
        return v

    def _build(self, layout: MatmulLayout, precision: str, extras: tuple) -> MatmulVariant:
        outputs = list(self.group.outputs) + list(extras)
        spec = MatmulSpec(self.anchor, self.bias, tuple(self.epilogue), tuple(self.epilogue_inputs),
                          layout.kinds, tuple(outputs), len(layout.batch), layout.int64, precision,
                          self.numerics, self.checks)
        emitted = emit_matmul(spec, self.a, self.b, self.b_transposed)
        log_source(self.role, emitted.name, emitted.source)
        fn = load_kernel(emitted.name, emitted.source)
        heavy = epilogue_weight(self.epilogue, layout.kinds) > LIGHT_EPILOGUE
        candidates = gpu_candidates(layout.M, layout.N, layout.K, self.a.dtype, precision, heavy)
        # the arguments' types and values as compile_for needs them: dtypes stand for tensors
        values = _arguments(emitted.bases, layout, self.a.dtype, self.b.dtype,
                            [i.dtype for i in self.epilogue_inputs], [o.dtype for o in outputs])
        values.update({"checks_ptr": torch.int32} if self.checks else {})
        example = [_example(values[n]) for n in emitted.arg_names]
        return MatmulVariant(emitted, fn, candidates[0], candidates, example, tuple(outputs), spec=spec)


# The heaviest epilogue that may take tiles of 128 values a thread: s * sigmoid(s) (weight 4)
# fits them without spilling; the gating backward (11) does not (fusion.matmul_tiles).
LIGHT_EPILOGUE = 4


def epilogue_weight(epilogue: list, kinds: tuple) -> int:
    """Registers the epilogue holds next to the accumulator, roughly, in tile-sized
    values: one per full tile it loads, and each op's ``live_values`` (op table)."""
    return sum(k == EpilogueLayout.TILE for k in kinds) + sum(OPS[n.op].live_values for n in epilogue)


def _arguments(bases: tuple, layout: MatmulLayout, a, b, epi, outs) -> dict:
    """Every kernel argument by name: tensors (or their dtypes), sizes and strides."""
    batch = [f"b{d}" for d in range(len(layout.batch))]
    values = {"a_ptr": a, "b_ptr": b, "M": layout.M, "N": layout.N, "K": layout.K}
    for name, st in (("a", layout.a_strides), ("b", layout.b_strides)):
        dims = ["am", "ak"] if name == "a" else ["bk", "bn"]
        values.update(zip([f"stride_{d}" for d in dims] + [f"stride_{name}{d}" for d in batch], st))
    for base, t, st in zip(bases, epi, layout.epilogue):
        values[f"{base}_ptr"] = t
        values.update(zip([f"stride_{base}_{d}" for d in ["m", "n", *batch]], st))
    values.update({f"out{k}_ptr": o for k, o in enumerate(outs)})
    values.update({f"size_b{d}": s for d, s in enumerate(layout.batch)})
    return values


def _example(v):
    if isinstance(v, torch.dtype):
        return ("ptr", v)
    return ("const", v) if v == 1 else ("int", v)  # the JIT compiles 1 in as a constant


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def autotune_enabled() -> bool:
    """``FUSION_AUTOTUNE=1``: autotune over the candidates. Off by default: each candidate
    is a Triton compile (about a second) on the first call, and the pick is modelled at the
    write floor (tests/test_kernel_cost.py)."""
    return os.environ.get("FUSION_AUTOTUNE", "") == "1"


def gpu_kernel(variant: MatmulVariant, args: list) -> tuple:
    """(kernel, launch kwargs) for a GPU: the first candidate that does not spill on this
    card, or the autotuner over all that do not (``FUSION_AUTOTUNE=1``)."""
    if autotune_enabled():
        return _autotuned(variant), {}
    pick = without_spills(variant.candidates, lambda c: _gpu_spills(variant.fn, args, c.launch_kwargs),
                          keep=1)
    return variant.fn, pick[0].launch_kwargs


def _autotuned(variant: MatmulVariant):
    """``triton.autotune`` over the variant's candidates, pruned of those that spill."""
    import triton
    configs = [triton.Config(c.constexprs, num_warps=c.num_warps, num_stages=c.num_stages)
               for c in variant.candidates]
    return triton.autotune(configs=configs, key=["M", "N", "K"],
                           prune_configs_by={"early_config_prune": spill_prune(variant)})(variant.fn)


def spill_prune(variant: MatmulVariant):
    """An ``early_config_prune`` for ``triton.autotune``: keeps the configs that do not spill."""
    def prune(configs, named_args, **kwargs):
        args = [named_args[n] for n in variant.emitted.arg_names]
        return without_spills(configs, lambda c: _gpu_spills(
            variant.fn, args, {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}))
    return prune


def _gpu_spills(fn, args: list, launch_kwargs: dict) -> float:
    """Registers Triton says ``fn`` spills when compiled for this GPU with ``launch_kwargs``
    (``n_spills``, read once the cubin is loaded; infinite when it cannot load, e.g. more
    shared memory than the card has). The compile stays in Triton's cache for the launch."""
    try:
        kernel = fn.warmup(*args, grid=(1,), **launch_kwargs)
        kernel._init_handles()  # loads the cubin: n_regs and n_spills are set there (Triton 3.6, 3.9)
    except Exception:  # noqa: BLE001  out of resources: never the pick; a real error shows at launch
        return math.inf
    return kernel.n_spills
