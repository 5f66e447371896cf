"""Shared pieces of the benchmark suite: device, providers, timing, targets, tables, plots.

Import this before torch/triton/fusion in a benchmark script: it decides where
kernels run. With a CUDA GPU, everything runs on it (Triton JIT kernels,
``TRITON_INTERPRET=0``). Without one, ``TRITON_INTERPRET=1`` is set so that
fusion's generated kernels run in Triton's interpreter; such runs measure only
what is meaningful on a CPU (compile latency, the bytes model, sm_90 compile
reports) and never print GPU figures.

Timing follows the Triton tutorials: ``triton.testing.do_bench`` with quantiles
(median, 20th, 80th percentile) on a GPU; a ``time.perf_counter`` loop on a CPU.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts run as files: make fusion/ir/codegen importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402  (torch does not import triton: the env below still takes effect)

GPU = torch.cuda.is_available() and os.environ.get("FUSION_BENCH_DEVICE", "") != "cpu"
DEVICE = torch.device("cuda" if GPU else "cpu")
os.environ.setdefault("TRITON_INTERPRET", "0" if GPU else "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTILES = [0.5, 0.2, 0.8]


# ---- environment -------------------------------------------------------------------
def environment() -> dict:
    """What the figures were measured on: card, driver, versions, CPU."""
    import triton
    env = {"device": "cuda" if GPU else "cpu", "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "cpu": _cpu_name(), "cpu_cores": os.cpu_count()}
    if GPU:
        env["card"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def environment_line(env: dict | None = None) -> str:
    env = env or environment()
    where = (f"{env['card']}, driver {env['driver']}, CUDA {env['cuda']}" if env["device"] == "cuda"
             else f"CPU only ({env['cpu']}, {env['cpu_cores']} cores): no GPU figures")
    return f"{where}; torch {env['torch']}, Triton {env['triton']}, Python {env['python']}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# ---- time budget -------------------------------------------------------------------
class Budget:
    """Seconds a script may spend; configurations past it are skipped and say so."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def spent(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


# ---- timing ------------------------------------------------------------------------
def sync():
    if GPU:
        torch.cuda.synchronize()


def bench(fn, quick: bool = False) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn()``: do_bench on a GPU, perf_counter on a CPU."""
    if GPU:
        import triton.testing
        ms = triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100,
                                     quantiles=QUANTILES)
        return tuple(float(m) for m in ms)
    return cpu_bench(fn, seconds=0.2 if quick else 0.5)


def cpu_bench(fn, seconds: float = 0.5, min_runs: int = 5, max_runs: int = 10_000):
    """Median/p20/p80 ms of ``fn()`` by wall clock (CPU work, or host overhead)."""
    fn()
    times = []
    end = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < end and len(times) < max_runs):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return pick(0.5), pick(0.2), pick(0.8)


def peak_memory_mb(fn) -> float | None:
    """Extra GPU memory (MB) at the peak of ``fn()`` over what was allocated before it."""
    if not GPU:
        return None
    sync()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def training_step_peaks(fn, inputs, dy, providers=("eager", "torch.compile", "ours")) -> dict:
    """Peak memory (MB) of one forward+backward of ``fn`` per provider; None where it failed."""
    mb = {}
    for name, f in make_providers(fn, list(providers)).items():
        step = forward_backward(f, inputs, inputs, dy)
        try:
            step()
            mb[name] = peak_memory_mb(step)
        except Exception as e:  # noqa: BLE001  (a provider that fails is reported, not fatal)
            mb[name] = None
            print(f"peak memory, {name}: {type(e).__name__}: {e}")
    return mb


# ---- providers ---------------------------------------------------------------------
def make_providers(fn, names: list[str]) -> dict:
    """The callables compared side by side, each a fresh compilation of ``fn``.

    ``torch._dynamo.reset()`` first: each configuration gets its own static-shape
    compilation instead of hitting dynamo's recompile limit or going dynamic.
    """
    import fusion
    torch._dynamo.reset()
    make = {
        "eager": lambda: fn,
        "torch.compile": lambda: torch.compile(fn, dynamic=False),
        "max-autotune": lambda: torch.compile(fn, mode="max-autotune", dynamic=False),
        "reduce-overhead": lambda: torch.compile(fn, mode="reduce-overhead", dynamic=False),
        "ours": lambda: fusion.compile(fn),
    }
    return {n: make[n]() for n in names if n in make}


def forward_backward(f, inputs: list, grad_inputs: list, dy: torch.Tensor):
    """A closure running ``f`` forward and backward (``autograd.grad``: nothing accumulates)."""
    def step():
        return torch.autograd.grad(f(*inputs), grad_inputs, dy)
    return step


def try_bench(fn, quick: bool) -> tuple[tuple | None, str]:
    """bench(fn), or (None, reason) when the provider fails (compile error, OOM)."""
    try:
        fn()  # compile / warm up outside the timing
        sync()
        return bench(fn, quick), ""
    except Exception as e:  # noqa: BLE001  a failing provider must not end the run
        if GPU:
            torch.cuda.empty_cache()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"


# ---- targets -----------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A goal printed next to a measured figure: ``value >= goal`` or ``value <= goal``."""
    goal: float
    at_least: bool
    unit: str = "x"

    def check(self, value: float | None) -> str:
        if value is None:
            return f"target {self.text()}: not measured"
        ok = value >= self.goal if self.at_least else value <= self.goal
        return f"target {self.text()}: {'ok' if ok else 'MISSED'}"

    def text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.goal:g}{self.unit}"


TARGETS = {  # issue 6, H100 figures
    "pointwise fwd / clone GB/s": Target(0.92, True),
    "pointwise fwd+bwd / clone GB/s": Target(0.88, True),
    "gating fwd time / matmul": Target(1.10, False),
    "gating fwd speedup vs eager": Target(5.0, True),
    "gating fwd speedup vs torch.compile": Target(2.5, True),
    "gating fwd speedup vs max-autotune": Target(1.0, True),
    "large-K epilogue / cuBLAS TFLOP/s": Target(0.90, True),
    "frontend compile ms": Target(20, False, " ms"),
    "CPU first result / torch.compile cold": Target(1 / 50, False),
}


# ---- tables, results, plots --------------------------------------------------------
def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v or abs(v) == float("inf"):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"
    return str(v)


def size_label(n: int) -> str:
    """2**20 -> '1M', 2**14 -> '16K'."""
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table whose columns line up in a terminal too."""
    pad = lambda r: list(r) + [""] * (len(headers) - len(r))  # noqa: E731  (short: a skipped row)
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in pad(r)] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


class Results:
    """Tables and summary rows of one script; printed as they come, saved as JSON."""

    def __init__(self, name: str, out: str | None):
        self.name, self.out = name, Path(out) if out else None
        self.tables: list[dict] = []
        self.summary: list[list] = []   # [figure, configuration, value, target verdict]
        self.env = environment()
        print(f"# {name}: {environment_line(self.env)}\n", flush=True)

    def add_table(self, title: str, headers: list[str], rows: list[list], note: str = ""):
        text = table(headers, rows)
        print(f"## {title}\n\n{text}\n" + (f"\n{note}\n" if note else ""), flush=True)
        self.tables.append({"title": title, "headers": headers, "rows": rows, "note": note})
        self.save()  # as we go: a script stopped by its time limit keeps what it measured

    def add_summary(self, figure: str, config: str, value: str, target: str = ""):
        self.summary.append([figure, config, value, target])
        self.save()

    def save(self):
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"name": self.name, "env": self.env, "tables": self.tables, "summary": self.summary}
        (self.out / f"{self.name}.json").write_text(json.dumps(data, indent=1, default=str))


def plot_panels(path: str | Path, title: str, panels: list[dict]) -> str:
    """Line plots in the style of the Triton tutorials' perf_report, one panel per config.

    Each panel: ``title``, ``x`` (values), ``series`` {provider: [y or None]},
    ``xlabel``, ``ylabel``, optional ``logx`` (default True) or ``bars`` (categorical x). Returns a line saying where it went.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"(no plot: matplotlib is not installed; {path} not written)"
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        if p.get("bars"):  # categorical x (dtypes): grouped bars, one colour per provider
            width = 0.8 / max(1, len(p["series"]))
            for i, (name, ys) in enumerate(p["series"].items()):
                ax.bar([j + i * width for j in range(len(p["x"]))], [y or 0 for y in ys], width, label=name)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(p["x"]))], p["x"])
        for name, ys in ({} if p.get("bars") else p["series"]).items():
            pts = [(x, y) for x, y in zip(p["x"], ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=name)
        if p.get("logx", True) and not p.get("bars"):
            ax.set_xscale("log", base=2)
        ax.set_title(p["title"], fontsize=9)
        ax.set_xlabel(p.get("xlabel", ""), fontsize=8)
        ax.set_ylabel(p.get("ylabel", ""), fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


def base_args(description: str, smoke: bool = False):
    """The options every benchmark script takes (``smoke``: also ``--smoke``)."""
    import argparse
    p = argparse.ArgumentParser(description=description)
    if smoke:
        p.add_argument("--smoke", action="store_true",
                       help="run on a CPU at tiny sizes (checks the code only)")
    p.add_argument("--out", help="folder for the JSON results (and plots)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and shorter timing (the GPU check)")
    p.add_argument("--budget", type=float, default=None, help="seconds; later configurations are skipped")
    return p


def finish(results: Results, args, plot_file: str, title: str, panels) -> None:
    """Plot ``panels`` into ``--out`` (if given), wait for the GPU, save the results."""
    if args.out:
        print(plot_panels(f"{args.out}/{plot_file}", title, panels))
    sync()
    results.save()


def run_mode(results: Results, args, what: str) -> str | None:
    """"smoke" (``--smoke`` on a CPU: the script checked at tiny sizes, figures
    meaningless), "gpu", or None: no GPU, nothing to measure (the caller stops)."""
    if getattr(args, "smoke", False) and not GPU:
        print("SMOKE RUN on a CPU (interpreter): checks the script, the figures mean nothing.\n")
        return "smoke"
    return None if gpu_only(results, what) else "gpu"


def gpu_only(results: Results, what: str) -> bool:
    """On a CPU: say that ``what`` has no figures here and return True (the caller stops)."""
    if GPU:
        return False
    print(f"No CUDA GPU: {what} is measured on a GPU only; no figures here "
          "(CPU mode reports compile latency, the bytes model and sm_90 compile reports: "
          "see compile_latency.py and cpu_report.py).")
    results.add_summary(what, "-", "no GPU: not measured")
    results.save()
    return True
