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
    _restore_after_device_calls(interpreter)
    _patched = True


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
