"""The kernel cache: generated sources live in content-hashed files.

The file name carries a hash of the source, so a file is reused across
processes when it exists with exactly that source; a truncated or corrupted
file (contents that no longer match) is rewritten. Writes go to a temporary
file and are renamed into place, so concurrent compilers never see half a
file. ``FUSION_CACHE_DIR`` overrides the location.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path

_lock = threading.Lock()
_loaded: dict[tuple[str, str], object] = {}
_fallback_dir: Path | None = None


def cache_dir() -> Path:
    """The directory kernels are written to (created on first use)."""
    global _fallback_dir
    if _fallback_dir is not None:
        return _fallback_dir
    root = os.environ.get("FUSION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fusion")
    path = Path(root) / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe", delete=True)
        probe.close()
        return path
    except OSError as e:
        _fallback_dir = Path(tempfile.mkdtemp(prefix="fusion-kernels-"))
        warnings.warn(f"fusion: kernel cache {path} is not writable ({e.strerror}); "
                      f"using {_fallback_dir} for this process", RuntimeWarning, stacklevel=3)
        return _fallback_dir


def source_path(name: str, source: str) -> Path:
    """Where ``source`` lives: ``<cache>/<name>_<sha256 prefix>.py``."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    return cache_dir() / f"{name}_{digest}.py"


def write_source(name: str, source: str) -> Path:
    """Ensure the cache holds ``source``; reuse a good file, replace a bad one."""
    path = source_path(name, source)
    try:
        if path.read_text() == source:
            return path
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: (re)write it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(source)
    os.replace(tmp, path)
    return path


def load_kernel(name: str, source: str):
    """Write (if needed) and import the kernel ``name`` defined by ``source``."""
    with _lock:
        path = write_source(name, source)
        key = (str(path), name)
        if key not in _loaded:
            _loaded[key] = getattr(import_file(path), name)
        return _loaded[key]


def import_file(path: Path, suffix: str = ""):
    """Import a generated file as a module (``@triton.jit`` needs real source files)."""
    mod_name = f"fusion_kernels.{path.stem}{suffix}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module
