"""Kernel cache faults: corrupted files, unwritable directories, concurrent compiles."""
import threading
import warnings
from pathlib import Path

import pytest
import torch

import codegen.cache as cache
import fusion

pytestmark = pytest.mark.cpu_only  # CPU tensors: cache faults on the interpreter path


def chain(x, g):
    return x * torch.sigmoid(g) - torch.tanh(x)




def _run(x, g):
    out = fusion.compile(chain)(x, g)
    torch.testing.assert_close(out, chain(x, g))
    return out


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_kernel_file_is_detected_and_rewritten(fresh_cache, damage):
    x, g = torch.randn(5, 7), torch.randn(5, 7)
    _run(x, g)
    (path,) = list(fresh_cache.glob("fused_*.py"))
    good = path.read_text()
    text = {"truncate": good[: len(good) // 2], "garbage": good.replace("tl.", "xx."), "empty": ""}[damage]
    path.write_text(text)
    cache._loaded.clear()  # as a new process would start
    _run(x, g)
    assert path.read_text() == good


def test_unwritable_cache_dir_falls_back_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("FUSION_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(cache, "_loaded", {})
    monkeypatch.setattr(cache, "_fallback_dir", None)
    x, g = torch.randn(3, 4), torch.randn(3, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(x, g)
        _run(x.double(), g.double())  # a second kernel: no second warning
    msgs = [str(w.message) for w in caught if "not writable" in str(w.message)]
    assert len(msgs) == 1 and str(blocker) in msgs[0]
    assert list(Path(cache._fallback_dir).glob("fused_*.py"))


def test_two_threads_compiling_the_same_model(fresh_cache):
    x, g = torch.randn(64, 33), torch.randn(64, 33)
    results, errors = [], []
    start = threading.Barrier(2)

    def work():
        try:
            start.wait()
            results.append(fusion.compile(chain)(x, g))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for out in results:
        torch.testing.assert_close(out, chain(x, g))
    assert len(list(fresh_cache.glob("fused_*.py"))) == 1
    assert not list(fresh_cache.glob(".*.tmp"))  # no half-written files left behind


def test_one_compiled_module_called_from_two_threads(fresh_cache):
    fast = fusion.compile(chain)
    inputs = [(torch.randn(8, 3), torch.randn(8, 3)), (torch.randn(5, 2), torch.randn(5, 2))]
    outs = {}

    def work(i):
        outs[i] = fast(*inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (x, g) in enumerate(inputs):
        torch.testing.assert_close(outs[i], chain(x, g))
