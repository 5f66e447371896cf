"""Workarounds for Triton tool defects, all in one place.

Generated kernels are written for the GPU, as the tutorials write them; what
Triton's CPU interpreter (``TRITON_INTERPRET=1``) or its compiler gets wrong
is mended here, never in the kernels or the emitters:

* The interpreter (3.9 seen; 3.6 alike) converts fp32 -> bf16 by truncation
  (the GPU rounds to nearest even), mis-converts bf16 subnormals, reinterprets
  fp64/int bits when casting straight to bf16, and multiplies bf16 ``tl.dot``
  operands as raw uint16. ``patch_interpreter`` replaces those conversions and
  the dot with exact NumPy versions (bf16 is stored as uint16 there).
* The interpreter patches ``triton.language`` while a kernel calls a library
  ``@jit`` function (``tl.sum``, ``tl.cdiv``) and does not restore it; a later
  ``triton.compile`` in the same process then fails. ``patch_interpreter``
  makes such calls restore what they patched; ``undo_interpreter_leaks`` puts
  the originals back before ``compile_for`` compiles, for versions where the
  first cannot apply.
* Under ``TRITON_INTERPRET=1`` the library's own ``@jit`` functions
  (``tl.cdiv``, ``tl.sum``, ``tl.sigmoid``...) are interpreter objects, which
  the GPU compiler cannot inline: ``gpu_compile_scope`` swaps compiler-ready
  twins in while ``compile_for`` compiles for a GPU in such a process.
* The interpreter patches module state while it runs a kernel, so launches
  from several threads must take turns (``launch``).
* Triton 3.6's interpreter evaluates ``tl.fma`` as a product and a sum, two
  roundings; the GPU (and 3.9's interpreter) rounds once. ``patch_interpreter``
  makes it a true fused multiply-add where the version needs it.
* The interpreter evaluates ``tl.exp``, ``tl.sqrt``, ``/``... with NumPy, correctly
  rounded or nearly so; the GPU runs approximations (``ex2.approx``,
  ``div.full``...). ``gpu_math`` makes the interpreter return results at the edge
  of each approximation's documented error, so that a CPU sweep bounds what a GPU
  returns (docs/NUMERICS.md, "How the GPU's approximations are emulated").
"""
from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np

_INTERPRETER_LOCK = threading.RLock()
_patched = False


def launch(fn, grid, args: list, interpreted: bool, **constexprs) -> None:
    """``fn[grid](*args, **constexprs)``; in the interpreter one launch at a time."""
    if not interpreted:
        fn[grid](*args, **constexprs)
        return
    patch_interpreter()
    with _INTERPRETER_LOCK:
        fn[grid](*args, **constexprs)


# ---- bf16 in the interpreter --------------------------------------------------------------
def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 values -> bf16 bit patterns (uint16), rounded to nearest even as the GPU's
    ``cvt.rn.bf16.f32``; NaN stays a quiet NaN of the same sign."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = ((bits >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return np.where(nan, quiet, rounded)


def bf16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns -> fp32 values: exact (subnormals included), a shift."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def patch_interpreter() -> None:
    """Make the interpreter's bf16 conversions and half-precision dots exact (idempotent)."""
    global _patched
    if _patched:
        return
    import triton.language as tl
    from triton.runtime import interpreter
    builder = interpreter.InterpreterBuilder
    cast_impl, fp_to_fp, dot = builder.cast_impl, builder.create_fp_to_fp, builder.create_dot
    TensorHandle = interpreter.TensorHandle

    def to_fp32(handle):
        if handle.dtype.scalar == tl.bfloat16:
            return bf16_bits_to_fp32(handle.data)
        return handle.data.astype(np.float32)

    def convert(self, src, dst_type, original, *extra):
        s, d = src.dtype.scalar, dst_type.scalar
        if d == tl.bfloat16 and s != tl.bfloat16:
            # through fp32, as our kernels spell every cast to bf16 (and as torch rounds)
            return TensorHandle(fp32_to_bf16_bits(to_fp32(src)), d)
        if s == tl.bfloat16 and d != tl.bfloat16:
            data = bf16_bits_to_fp32(src.data)
            return TensorHandle(data if d == tl.float32 else data.astype(interpreter._get_np_dtype(d)), d)
        return original(self, src, dst_type, *extra)

    builder.cast_impl = lambda self, src, dst_type: convert(self, src, dst_type, cast_impl)
    builder.create_fp_to_fp = (lambda self, src, dst_type, rounding_mode:
                               convert(self, src, dst_type, fp_to_fp, rounding_mode))

    @functools.wraps(dot)
    def create_dot(self, a, b, d, *rest):
        if a.dtype.scalar in (tl.bfloat16, tl.float16) or b.dtype.scalar in (tl.bfloat16, tl.float16):
            a = TensorHandle(to_fp32(a), tl.float32)
            b = TensorHandle(to_fp32(b), tl.float32)
        return dot(self, a, b, d, *rest)

    builder.create_dot = create_dot
    if getattr(interpreter._interpreter, "fma_fp32", None) is None:  # 3.6: x * y + z, rounded twice
        fma = builder.create_fma

        @functools.wraps(fma)
        def create_fma(self, x, y, z):
            if z.data.dtype == np.float32:
                return TensorHandle(fma_fp32(*np.broadcast_arrays(x.data, y.data, z.data)), z.dtype.scalar)
            return fma(self, x, y, z)
        builder.create_fma = create_fma
    _restore_after_device_calls(interpreter)
    _patched = True


def fma_fp32(x, y, z) -> np.ndarray:
    """``x * y + z`` rounded once to fp32, as ``fma.rn.f32``. The product is exact in
    float64; the float64 sum rounds, and rounding it again to fp32 is right except when
    it lands exactly halfway between two fp32 numbers: the sum's own rounding error
    (TwoSum) then says which neighbour the exact value is nearer to."""
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
    with np.errstate(all="ignore"):
        p = x * y
        s = p + z
        t = s - p
        err = (p - (s - t)) + (z - t)          # s + err == x * y + z exactly (finite values)
        r = s.astype(np.float32)
        other = np.nextafter(r, np.where(r > s, -np.inf, np.inf).astype(np.float32))
        halfway = (np.abs(s - r) == np.abs(s - other)) & (err != 0) & np.isfinite(err)
        toward = np.where((other > r) == (err > 0), other, r)
        return np.where(halfway, toward, r).astype(np.float32)


def _restore_after_device_calls(interpreter) -> None:
    """A ``@jit`` function called from a kernel patches ``triton.language`` and, in
    Triton 3.9, never restores it: restore the scope ``_patch_lang`` returns."""
    function = getattr(interpreter, "InterpretedFunction", None)
    if function is None or not hasattr(interpreter, "_LangPatchScope"):
        return

    def __call__(self, *args, **kwargs):
        scope = interpreter._patch_lang(self.fn)
        try:
            return self.rewrite()(*args, **kwargs)
        except Exception as e:
            raise interpreter.InterpreterError(repr(e)) from e
        finally:
            scope.restore()
    function.__call__ = __call__


# ---- the GPU's approximate math, in the interpreter ---------------------------------------------
# Each spelling below compiles (Triton 3.6 and 3.9, sm_80 and sm_90; read from the PTX) to an
# operation whose error the PTX ISA (section 9.7.3) or the CUDA C++ Programming Guide (its
# mathematical functions appendix, for the libdevice functions Triton inlines) documents:
#
#   tl.exp, fp32     mul.f32 by log2(e), then ex2.approx.f32: the product rounds, then "the
#                    maximum ulp error is 2 ulp from correctly rounded result" (9.7.3.21)
#   tl.exp2, fp32    ex2.approx.ftz.f32: the same 2 ulp; subnormal inputs and results are 0
#   tl.log/log2 fp32 libdevice logf/log2f, inlined: 1 ulp (Programming Guide)
#   x / y, fp32      div.full.f32: "the maximum ulp error is 2 across the full range" (9.7.3.8)
#   tl.math.fdiv(approx=True) (3.9)  div.approx.f32: 2 ulp for |y| in [2^-126, 2^126] (9.7.3.8)
#   tl.sqrt, fp32    sqrt.approx.ftz.f32: relative error 2^-23 (9.7.3.15)
#   tl.math.rsqrt    rsqrt.approx.ftz.f32: relative error 2^-22.9 (9.7.3.16)
#   fp64 tl.exp/log  libdevice exp/log, inlined: 1 ulp (Programming Guide)
#   exact, nothing to model: +, -, *, tl.fma, tl.math.div_rn (div.rn.f32), tl.math.sqrt_rn, and
#   fp64 / and tl.sqrt (div.rn.f64, sqrt.rn.f64)
LOG2E_F32 = np.float32(1.4426950408889634)   # the constant tl.exp multiplies by (0f3FB8AA3B)


@contextlib.contextmanager
def gpu_math(direction: int):
    """While open, the interpreter returns every result of the operations above at the edge
    of its documented error: the number farthest from the exact value towards +inf
    (``direction=1``) or -inf (``-1``) that the bound allows. A kernel whose sweep meets
    its accuracy goal in both directions meets it on a GPU (within what the bounds say;
    mixed directions are not tried, and the GPU's FMA contraction of ``a * b + c``, which
    only removes a rounding, is not modelled). Zeros, infinities and NaN stay exact."""
    if direction not in (1, -1):
        raise ValueError(f"gpu_math: direction is 1 or -1, not {direction!r}")
    patch_interpreter()
    from triton.runtime import interpreter
    builder = interpreter.InterpreterBuilder
    models = {k: v for k, v in _gpu_math_models(direction, interpreter.TensorHandle).items()
              if hasattr(builder, k)}
    saved = {k: builder.__dict__[k] for k in models}
    with _INTERPRETER_LOCK:
        for name, fn in models.items():
            setattr(builder, name, fn)
        try:
            yield
        finally:
            for name, fn in saved.items():
                setattr(builder, name, fn)


def _gpu_math_models(direction: int, TensorHandle) -> dict:
    f32, f64 = np.float32, np.float64

    def unary(fp32, fp64, other):
        def create(self, arg):
            x = arg.data
            out = fp32(x) if x.dtype == f32 else fp64(x) if x.dtype == f64 else other(x)
            return TensorHandle(np.asarray(out, dtype=x.dtype), arg.dtype.scalar)
        return create

    def div(self, lhs, rhs):
        a, b = np.broadcast_arrays(lhs.data, rhs.data)
        with np.errstate(all="ignore"):
            out = (_edge(a.astype(f64) / b, f32, direction, ulps=2) if a.dtype == f32 else a / b)
        return TensorHandle(np.asarray(out, dtype=a.dtype), lhs.dtype.scalar)

    def ex2(t, ftz):
        # 2 ulp from the correctly rounded 2^t; 2^0 is 1 exactly (the PTX table), and a result
    # that underflows to 0 stays 0 (ex2.approx computes 2^t on a scaled argument that has
    # flushed to 0 long before: a nonzero "2 ulp" there is no model of the hardware)
        if ftz:
            t = np.where(np.abs(t) < np.finfo(f32).tiny, f32(0), t)
        with np.errstate(all="ignore"):
            rounded = np.exp2(t.astype(f64)).astype(f32)
        out = np.maximum(_ulp_steps(rounded, direction, 2), f32(0))
        out = np.where((t == 0) | (rounded == 0) | ~np.isfinite(t), rounded, out)
        return np.where(out < np.finfo(f32).tiny, f32(0), out) if ftz else out

    def exp32(x):
        with np.errstate(all="ignore"):
            return ex2((x * LOG2E_F32).astype(f32), ftz=False)

    def libdevice(fn, dtype):   # 1 ulp
        def model(x):
            with np.errstate(all="ignore"):
                return _edge(fn(x.astype(f64)), dtype, direction, ulps=1)
        return model

    def approx_root(power, rel):   # sqrt.approx / rsqrt.approx: .ftz, a relative bound
        def model(x):
            x = np.where(np.abs(x) < np.finfo(f32).tiny, f32(0) * x, x)
            with np.errstate(all="ignore"):
                return _edge(np.power(x.astype(f64), power), f32, direction, rel=rel)
        return model

    def numpy_rsqrt(x):
        with np.errstate(all="ignore"):
            return 1 / np.sqrt(x)
    return {
        "create_exp": unary(exp32, libdevice(np.exp, f64), np.exp),
        "create_exp2": unary(lambda x: ex2(x, ftz=True), libdevice(np.exp2, f64), np.exp2),
        "create_log": unary(libdevice(np.log, f32), libdevice(np.log, f64), np.log),
        "create_log2": unary(libdevice(np.log2, f32), libdevice(np.log2, f64), np.log2),
        "create_fdiv": div,
        "create_approx_divf": div,
        "create_sqrt": unary(approx_root(0.5, 2.0**-23), np.sqrt, np.sqrt),
        "create_rsqrt": unary(approx_root(-0.5, 2.0**-22.9), numpy_rsqrt, numpy_rsqrt),
    }


def _edge(exact: np.ndarray, dtype, direction: int, *, ulps: float = 0.0, rel: float = 0.0):
    """The number of ``dtype`` farthest from ``exact`` (float64) towards ``direction`` whose
    error stays within ``ulps`` units in the last place (subnormal spacing below the normal
    range) or within ``rel`` relative error. Zeros, infinities and NaN are returned as they are."""
    info = np.finfo(dtype)
    exact = np.asarray(exact, dtype=np.float64)
    with np.errstate(all="ignore"):
        spacing = np.exp2(np.floor(np.log2(np.maximum(np.abs(exact), info.tiny))) - info.nmant)
        room = ulps * spacing + rel * np.abs(exact)
        out = (exact + direction * room).astype(dtype)
        past = (out.astype(np.float64) - exact) * direction > room
        out = np.where(past, np.nextafter(out, dtype(-direction * np.inf)), out)
        keep = ~np.isfinite(exact) | (exact == 0)
        return np.where(keep, exact.astype(dtype), out).astype(dtype)


def _ulp_steps(values: np.ndarray, direction: int, n: int) -> np.ndarray:
    """``values`` moved ``n`` representable numbers towards ``direction`` (infinities and
    NaN stay)."""
    out = values
    for _ in range(n):
        out = np.nextafter(out, values.dtype.type(direction * np.inf))
    return np.where(np.isfinite(values), out, values)


# ---- triton.language left patched by the interpreter ----------------------------------------
def undo_interpreter_leaks() -> None:
    """Put back what the interpreter left patched in ``triton.language.core``.

    A kernel that calls a library ``@jit`` function in the interpreter (``tl.sum``,
    ``tl.zeros``, ``tl.cdiv``: their module imports ``core``) patches ``core``'s
    builtins for that call and never restores them; the compiler would then run the
    interpreter's versions ("'value' object has no attribute 'dtype'"). The
    originals are ``triton.language``'s own names (re-exported from ``core``, and
    restored there), or the ``member`` a patched builtin closes over.
    """
    import triton.language as tl
    from triton.runtime import interpreter

    def patched(v) -> bool:
        fn = v.func if isinstance(v, functools.partial) else v
        return getattr(fn, "__module__", None) == interpreter.__name__ or v is print
    for name, value in list(vars(tl.core).items()):
        if name.startswith("__") or not patched(value):
            continue
        original = getattr(tl, name, None)
        if original is None or patched(original):
            original = (getattr(value, "__kwdefaults__", None) or {}).get("member")
        if original is not None:
            setattr(tl.core, name, original)


# ---- compiling for a GPU in an interpreter process -------------------------------------------
_jit_twins: dict = {}


@contextlib.contextmanager
def gpu_compile_scope():
    """While open, ``triton.language``'s library functions are ``JITFunction``s even
    when the process imported triton with ``TRITON_INTERPRET=1``."""
    import triton.language as tl
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction
    undo_interpreter_leaks()
    swapped = []
    for module in (tl, tl.standard, tl.math):
        for name, value in list(vars(module).items()):
            if isinstance(value, interpreter.InterpretedFunction):
                twin = _jit_twins.get(id(value))
                if twin is None:
                    twin = _jit_twins[id(value)] = JITFunction(value.fn)
                swapped.append((module, name, value))
                setattr(module, name, twin)
    try:
        yield
    finally:
        for module, name, value in swapped:
            setattr(module, name, value)
