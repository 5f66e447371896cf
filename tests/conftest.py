"""Test setup: generated kernels run in Triton's interpreter on CPU.

TRITON_INTERPRET must be set before triton is imported, so it is set here,
before any test module imports fusion. Set FUSION_TEST_DEVICE=cuda (and
TRITON_INTERPRET=0) to run the same suite on a GPU with real kernels: every
test follows that device (``helpers.DEVICE`` or the ``device`` fixture) except
those marked ``cpu_only`` (they build CPU tensors on purpose, to test the
interpreter path), which a CUDA run skips; ``gpu`` tests need a CUDA GPU.
"""
import os
import tempfile

DEVICE = os.environ.get("FUSION_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.setdefault("FUSION_CACHE_DIR", tempfile.mkdtemp(prefix="fusion-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only: builds CPU tensors on purpose (skipped on a CUDA run)")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache directory and no kernel loaded yet in this process."""
    import codegen.cache as cache
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_loaded", {})
    monkeypatch.setattr(cache, "_fallback_dir", None)
    return tmp_path / "cache" / "kernels"


@pytest.fixture
def device():
    """The device tests put their tensors on (cpu: interpreter kernels)."""
    return torch.device(DEVICE)


def pytest_collection_modifyitems(config, items):
    if DEVICE != "cpu":
        skip_cpu = pytest.mark.skip(reason="builds CPU tensors (interpreter path): run without "
                                           "FUSION_TEST_DEVICE")
        for item in items:
            if "cpu_only" in item.keywords:
                item.add_marker(skip_cpu)
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
