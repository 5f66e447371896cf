"""FUSION_LOG=code prints the kernels; the kernel cache is reused across processes
and lives where FUSION_CACHE_DIR says. (Faults: corrupted files, unwritable
directories, races: test_cache_faults.py.)
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import codegen.cache as cache
import fusion

from helpers import DEVICE

REPO = Path(__file__).resolve().parents[1]


def gated(x, g, b):
    return x * torch.sigmoid(g) + b


def _args(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen).to(DEVICE).requires_grad_(requires_grad)
            for s in ((37, 53), (37, 53), (53,))]




def test_fusion_log_code_prints_every_generated_kernel(fresh_cache, monkeypatch, capfd):
    monkeypatch.setenv("FUSION_LOG", "code")
    args = _args(requires_grad=True)
    fusion.compile(gated)(*args).sum().backward()
    err = capfd.readouterr().err
    for name in [p.stem.rsplit("_", 1)[0] for p in fresh_cache.glob("*.py")]:
        assert f"kernel {name}" in err, f"{name} not logged:\n{err}"
    assert "# fusion: forward kernel fused_sigmoid_mul_add" in err
    assert "# fusion: backward kernel" in err
    # the whole source, as written to the cache
    source = next(fresh_cache.glob("fused_sigmoid_mul_add_*.py")).read_text()
    assert source in err


def test_no_log_without_fusion_log(fresh_cache, monkeypatch, capfd):
    monkeypatch.delenv("FUSION_LOG", raising=False)
    fusion.compile(gated)(*_args())
    captured = capfd.readouterr()
    assert "@triton.jit" not in captured.err + captured.out


def test_fusion_cache_dir_is_honoured(fresh_cache):
    fusion.compile(gated)(*_args())
    files = sorted(fresh_cache.glob("*.py"))
    assert [f.name.startswith("fused_sigmoid_mul_add_") for f in files] == [True]
    (kernel,) = fusion.explain(gated, *_args()).kernels
    assert Path(kernel.path).parent == fresh_cache


def test_a_new_process_reuses_the_cached_file(fresh_cache):
    """The file is not rewritten: same inode and modification time; the kernel is
    imported again from it (the in-memory cache is what a new process lacks)."""
    args = _args()
    expected = gated(*args)
    torch.testing.assert_close(fusion.compile(gated)(*args), expected)
    (path,) = fresh_cache.glob("*.py")
    before = path.stat()
    cache._loaded.clear()  # a new process: nothing loaded yet
    torch.testing.assert_close(fusion.compile(gated)(*args), expected)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(list(fresh_cache.glob("*.py"))) == 1
    assert any(str(path) == key[0] for key in cache._loaded), "loaded from the cached file"


def test_a_subprocess_reuses_the_cached_file(fresh_cache):
    fusion.compile(gated)(*_args())
    (path,) = fresh_cache.glob("*.py")
    before = path.stat()
    script = textwrap.dedent("""
        import os, torch, fusion
        x, g, b = torch.randn(37, 53), torch.randn(37, 53), torch.randn(53)
        out = fusion.compile(lambda x, g, b: x * torch.sigmoid(g) + b)(x, g, b)
        torch.testing.assert_close(out, x * torch.sigmoid(g) + b)
        print("ok")
    """)
    env = dict(os.environ, FUSION_CACHE_DIR=str(fresh_cache.parent), TRITON_INTERPRET="1",
               PYTHONPATH=str(REPO))
    if DEVICE.type != "cpu":
        env["TRITON_INTERPRET"] = "0"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(fresh_cache.glob("*.py")) == [path]
