"""Test setup: generated kernels run in Triton's interpreter on CPU.

TRITON_INTERPRET must be set before triton is imported, so it is set here,
before any test module imports fusion. Set FUSION_TEST_DEVICE=cuda (and
TRITON_INTERPRET=0) to run the same suite on a GPU with real kernels.
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

# The files whose tensors follow FUSION_TEST_DEVICE; the others build CPU tensors to test
# the interpreter path, so a CUDA run (benchmarks/gpu_check.sh) skips them.
DEVICE_AWARE = {"test_autograd.py", "test_bad_inputs.py", "test_cache_and_logging.py",
                "test_gpu_compile.py", "test_matmul_epilogue.py", "test_op_table.py",
                "test_pointwise_chains.py", "test_sigmoid_numerics.py", "test_training.py",
                "test_input_catalogue.py"}


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
        cpu_only = pytest.mark.skip(reason="builds CPU tensors (interpreter path): run without "
                                           "FUSION_TEST_DEVICE")
        for item in items:
            if item.path.name not in DEVICE_AWARE:
                item.add_marker(cpu_only)
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
