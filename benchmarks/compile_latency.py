"""Compile latency: fusion.compile + first call against torch.compile's first call.

Every measurement runs in a fresh Python process. "Cold" gives each run fresh,
empty cache directories (``FUSION_CACHE_DIR`` for ours; ``TORCHINDUCTOR_CACHE_DIR``
and ``TRITON_CACHE_DIR`` for both, since ours JIT-compiles through Triton on a
GPU); "warm" is a fresh process reusing the directories a cold run filled.
The clock starts after ``import torch`` (and ``import fusion``) and after the
device is initialised (CUDA context, cuBLAS handle: paid by everyone alike);
it stops when the first result is on the host/synchronised. Lazy imports each
library makes on its first call (triton, dynamo, inductor) count.

Providers: on a GPU, ours (Triton JIT) and torch.compile (default mode;
``--max-autotune`` adds that mode). On a CPU, ours twice: with
``TRITON_INTERPRET=1`` (generated kernels in Triton's interpreter) and without
(the default CPU path: the graph's eager references, no Triton), and
torch.compile (Inductor's C++ backend).

"frontend ms" is what the library itself costs per model once imports are
done: in the same process after the cold run, a second ``fusion.compile`` of
the function, its plan (capture, passes, partition) and source emission,
excluding Triton's compiler and running the kernels. Target: <= 20 ms.

    python benchmarks/compile_latency.py [--quick] [--reps N] [--out DIR]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_MODULES = ("fusion.kernel", "fusion.matmul_kernel")  # classes with variant_for: timed as "emit"
WORKLOADS = {  # name -> (description, GPU config, CPU config)
    "gating": ("s = q @ k.T; s * sigmoid(s)", ((8192, 64), "bf16"), ((512, 64), "fp32")),
    "x*sigmoid(g)+b": ("x * sigmoid(g) + b", ((4096, 4096), "bf16"), ((1024, 1024), "fp32")),
}


# ---- the child: one measurement in a fresh process -------------------------------------
def child(provider: str, workload: str, device: str) -> dict:
    t = time.perf_counter()
    import torch
    import_torch = time.perf_counter() - t
    t = time.perf_counter()
    if provider == "ours":
        sys.path.insert(0, str(HERE.parent))
        import fusion
        from fusion.api import CompiledModule
        kernel_modules = _import_kernel_modules()
    import_lib = time.perf_counter() - t
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":  # context and cuBLAS handle: not part of anyone's compile
        a = torch.randn(64, 64, device=dev)
        (a @ a).sum().item()
    _, gpu_cfg, cpu_cfg = WORKLOADS[workload]
    shape, dname = gpu_cfg if dev.type == "cuda" else cpu_cfg
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dname]
    fn, args = make_workload(torch, workload, shape, dtype, dev)

    t0 = time.perf_counter()
    if provider == "ours":
        compiled = fusion.compile(fn)
    else:
        compiled = torch.compile(fn, mode=None if provider == "torch.compile" else provider)
    t1 = time.perf_counter()
    compiled(*args)
    sync()
    t2 = time.perf_counter()
    compiled(*args)
    sync()
    t3 = time.perf_counter()
    out = {"provider": provider, "workload": workload, "device": device, "shape": shape, "dtype": dname,
           "import_torch_ms": import_torch * 1e3,
           "import_lib_ms": import_lib * 1e3 if provider == "ours" else None,
           "compile_ms": (t1 - t0) * 1e3, "first_call_ms": (t2 - t1) * 1e3,
           "first_result_ms": (t2 - t0) * 1e3, "second_call_ms": (t3 - t2) * 1e3}
    if provider == "ours":
        out.update(frontend(fusion, CompiledModule, kernel_modules, fn, args, sync))
    return out


def make_workload(torch, workload, shape, dtype, dev):
    if workload == "gating":
        def fn(q, k):
            s = q @ k.transpose(-2, -1)
            return s * torch.sigmoid(s)
        args = [torch.randn(shape, device=dev, dtype=dtype) for _ in range(2)]
    else:
        def fn(x, g, b):
            return x * torch.sigmoid(g) + b
        args = [torch.randn(shape, device=dev, dtype=dtype) for _ in range(2)]
        args.append(torch.randn(shape[-1], device=dev, dtype=dtype))
    return fn, args


def _import_kernel_modules() -> list:
    """fusion's kernel runtimes (none imports triton at import time)."""
    import importlib
    mods = []
    for name in KERNEL_MODULES:
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods


def frontend(fusion, CompiledModule, kernel_modules, fn, args, sync) -> dict:
    """Time a second fusion.compile of ``fn`` in this warm process, split by stage.

    Stages: trace (fusion.compile), plan (capture, passes, partition: build_plan),
    emit (each kernel's ``variant_for``: source emission, cache file, import).
    """
    spent = {"plan_ms": 0.0, "emit_ms": 0.0}

    def timing(method, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return method(*a, **kw)
            finally:
                spent[key] += (time.perf_counter() - t) * 1e3
        return wrapper

    patched = [(CompiledModule, "build_plan", "plan_ms")] + [
        (cls, "variant_for", "emit_ms") for mod in kernel_modules for cls in vars(mod).values()
        if isinstance(cls, type) and cls.__module__ == mod.__name__ and "variant_for" in vars(cls)]
    originals = [(cls, name, getattr(cls, name)) for cls, name, _ in patched]
    for cls, name, key in patched:
        setattr(cls, name, timing(getattr(cls, name), key))
    try:
        t0 = time.perf_counter()
        compiled = fusion.compile(fn)
        trace_ms = (time.perf_counter() - t0) * 1e3
        compiled(*args)
        sync()
    finally:
        for cls, name, method in originals:
            setattr(cls, name, method)
    return {"frontend_ms": trace_ms + spent["plan_ms"] + spent["emit_ms"], "trace_ms": trace_ms, **spent}


def lazy_imports() -> dict:
    """One-time costs a cold first call may pay after ``import torch``: ``import triton``
    and torch's first meta-tensor op (which imports its meta registrations)."""
    t = time.perf_counter()
    import torch
    t0 = time.perf_counter()
    import triton  # noqa: F401
    t1 = time.perf_counter()
    a = torch.empty(4, 4, device="meta")
    a @ a
    t2 = time.perf_counter()
    return {"import_torch_ms": (t0 - t) * 1e3, "import_triton_ms": (t1 - t0) * 1e3,
            "first_meta_op_ms": (t2 - t1) * 1e3}


# ---- the parent: fresh processes and cache directories --------------------------------
def run_child(provider: str, workload: str, device: str, caches: Path, env_extra: dict) -> dict:
    env = dict(os.environ, FUSION_CACHE_DIR=str(caches / "fusion"),
               TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"), TRITON_CACHE_DIR=str(caches / "triton"),
               TRITON_DEFAULT_FP_FUSION="1", **env_extra)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", provider, workload, device]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]}
    return json.loads(lines[-1])


def providers_for(gpu: bool, max_autotune: bool) -> dict:
    """label -> (provider, extra environment)."""
    if gpu:
        out = {"ours": ("ours", {"TRITON_INTERPRET": "0"}),
               "torch.compile": ("torch.compile", {"TRITON_INTERPRET": "0"})}
        if max_autotune:
            out["max-autotune"] = ("max-autotune", {"TRITON_INTERPRET": "0"})
        return out
    return {"ours (interpreter)": ("ours", {"TRITON_INTERPRET": "1"}),
            "ours (eager refs)": ("ours", {"TRITON_INTERPRET": "0"}),
            "torch.compile": ("torch.compile", {"TRITON_INTERPRET": "0"})}


def median(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _overhead(runs: list[dict]):
    vals = [r["first_result_ms"] - r["second_call_ms"] for r in runs if "second_call_ms" in r]
    return statistics.median(vals) if vals else None


def main():
    sys.path.insert(0, str(HERE))
    from common import GPU, TARGETS, Budget, Results, base_args
    p = base_args(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None, help="fresh processes per figure (default 3, quick 1)")
    p.add_argument("--max-autotune", action="store_true", help="also time torch.compile max-autotune (GPU)")
    p.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    args = p.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    device = "cuda" if GPU else "cpu"
    res = Results("compile_latency", args.out)
    budget = Budget(args.budget)
    rows, summary = [], []
    for workload in args.workloads:
        desc, gpu_cfg, cpu_cfg = WORKLOADS[workload]
        shape, dname = gpu_cfg if GPU else cpu_cfg
        config = f"{workload} {'x'.join(map(str, shape))} {dname}"
        by_label = {}
        for label, (provider, env_extra) in providers_for(GPU, args.max_autotune).items():
            cold, warm = [], []
            for _ in range(reps):
                with tempfile.TemporaryDirectory(prefix="bench-cache-") as d:
                    for runs in (cold, warm):  # warm: a fresh process on the caches cold filled
                        runs.append({"error": "skipped: time budget"} if budget.spent() else
                                    run_child(provider, workload, device, Path(d), env_extra))
            errors = {r["error"] for r in cold + warm if "error" in r}
            by_label[label] = (cold, warm)
            rows.append([config, label, median(cold, "first_result_ms"), median(warm, "first_result_ms"),
                         median(cold, "compile_ms"), median(cold, "first_call_ms"),
                         median(cold, "second_call_ms"), _overhead(cold), median(cold, "frontend_ms"),
                         median(cold, "import_lib_ms"), "; ".join(sorted(errors))])
            print(f"  {config} {label}: cold {rows[-1][2]} ms, warm {rows[-1][3]} ms", flush=True)
        torch_cold = median(by_label["torch.compile"][0], "first_result_ms")
        for label, (cold, warm) in by_label.items():
            if not label.startswith("ours"):
                continue
            ours_cold = median(cold, "first_result_ms")
            ratio = ours_cold / torch_cold if ours_cold and torch_cold else None
            key = "CPU first result / torch.compile cold"
            target = TARGETS[key].check(ratio) if not GPU else ""
            summary.append([config, label, ratio, torch_cold / ours_cold if ratio else None,
                            median(warm, "first_result_ms"), target.split(": ")[-1]])
            res.add_summary("first result, ours cold / torch.compile cold", f"{config} {label}",
                            f"{ratio:.4f} (1/{1 / ratio:.0f})" if ratio else "-", target)
            fe = median(cold, "frontend_ms")
            res.add_summary("frontend compile ms", f"{config} {label}", f"{fe:.1f}" if fe else "-",
                            TARGETS["frontend compile ms"].check(fe))
    res.add_table(f"compile latency on {device}: median of {reps} fresh process(es), ms",
                  ["workload", "provider", "cold first result", "warm first result", "compile()",
                   "first call", "2nd call", "cold - 2nd call", "frontend", "import lib", "errors"], rows,
                  "cold first result = compile() + first call, fresh process, empty caches; warm = "
                  "fresh process, caches of a cold run. cold - 2nd call: the first result less one "
                  "steady call (what compiling cost beyond running). frontend = a second fusion.compile in the warm "
                  f"process: trace + plan + emit, no Triton compile (target "
                  f"{TARGETS['frontend compile ms'].text()}). import lib = import fusion (ours).")
    lazy = []
    for _ in range(0 if budget.spent() else reps):
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--lazy-imports"],
                              capture_output=True, text=True, timeout=300)
        lazy += [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lazy:
        res.add_table("one-time imports a cold first call can pay, fresh process after import torch (ms)",
                      ["import torch", "import triton", "first meta-tensor op"],
                      [[median(lazy, k) for k in ("import_torch_ms", "import_triton_ms", "first_meta_op_ms")]],
                      "Median of the same number of fresh processes. Ours' cold first call includes "
                      "both when it imports triton and infers shapes with meta tensors.")
    res.add_table("ours against torch.compile's cold first call",
                  ["workload", "ours", "ours cold / torch cold", "torch cold / ours cold",
                   "ours warm first result ms",
                   f"target {TARGETS['CPU first result / torch.compile cold'].text()} (CPU)"], summary)
    res.save()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:])), flush=True)
    elif sys.argv[1:] == ["--lazy-imports"]:
        print(json.dumps(lazy_imports()), flush=True)
    else:
        main()
