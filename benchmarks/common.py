"""What the benchmark scripts share: where they run, the machine line, the providers, the workloads.

Import it before triton. Without a CUDA GPU, ``--smoke`` runs a GPU script at tiny sizes
with fusion's kernels in Triton's interpreter (``TRITON_INTERPRET=1``, read when triton
is imported): that checks the code; its figures mean nothing.
"""
import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts run as files: this checkout's fusion

import torch  # noqa: E402  (torch does not import triton)

GPU = torch.cuda.is_available() and os.environ.get("FUSION_BENCH_DEVICE") != "cpu"
SMOKE = not GPU and "--smoke" in sys.argv
if GPU or SMOKE:
    os.environ["TRITON_INTERPRET"] = "0" if GPU else "1"
DEVICE = "cuda" if GPU else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_COMPILE = {"torch.compile": {}, "max-autotune": {"mode": "max-autotune"},
                 "reduce-overhead": {"mode": "reduce-overhead"}}  # provider -> torch.compile's options

import fusion  # noqa: E402


def gate(x, g, b):  # the workloads the scripts measure
    return x * torch.sigmoid(g) + b


def gating(q, k):
    s = q @ k.transpose(-2, -1)
    return s * torch.sigmoid(s)


def environment() -> str:
    """The card, driver and versions the figures come from."""
    import triton
    if GPU:
        smi = shutil.which("nvidia-smi")
        driver = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                text=True).stdout.split("\n")[0] if smi else "?"
        where = f"{torch.cuda.get_device_name()}, driver {driver}, CUDA {torch.version.cuda}"
    else:
        info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        names = [ln.split(":")[1].strip() for ln in info.splitlines() if ln.startswith("model name")]
        where = f"CPU ({names[0] if names else platform.machine()}, {os.cpu_count()} cores), no GPU"
    return f"{where}; torch {torch.__version__}, Triton {triton.__version__}, Python {platform.python_version()}"


def gpu_lines(lines: list[str]) -> list[str]:
    """A GPU script's providers; a smoke run leaves torch.compile out (minutes of C++ compiles on a CPU)."""
    return [p for p in lines if not (SMOKE and p in TORCH_COMPILE)]


_compiled: dict = {"config": None}


def compiled(fn, provider: str, config):
    """``fn`` as ``provider`` runs it, compiled once per ``config`` (a table): a new config resets
    dynamo, so that each table compiles afresh instead of meeting dynamo's recompile limit."""
    if _compiled["config"] != config:
        torch._dynamo.reset()
        _compiled.clear()
        _compiled["config"] = config
    if (fn, provider) not in _compiled:
        _compiled[(fn, provider)] = (fn if provider == "eager" else fusion.compile(fn) if provider == "ours"
                                     else torch.compile(fn, **TORCH_COMPILE[provider]))
    return _compiled[(fn, provider)]


def bench(fn) -> list[float]:
    """Median, 20th and 80th percentile ms of ``fn()``: ``do_bench`` on a GPU; a smoke run
    times three calls after a first one by the wall clock."""
    if GPU:
        import triton.testing
        return triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    times = []
    for _ in range(4):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return [sorted(times[1:])[1], min(times[1:]), max(times[1:])]


def fwd_bwd(f, inputs: list, dy: torch.Tensor):
    """One training step of ``f``: forward, then backward into every input (nothing accumulates)."""
    return lambda: torch.autograd.grad(f(*inputs), inputs, dy)


def peak_mb(fn) -> float:
    """GPU memory (MB) at the peak of ``fn()`` beyond what was allocated before; NaN on a CPU."""
    fn()  # compiles outside the measurement
    if not GPU:
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def parser(doc: str, smoke: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", help="folder for each table's CSV and plot (perf_report's save_path)")
    if smoke:
        p.add_argument("--smoke", action="store_true", help="no GPU: tiny sizes, Triton's interpreter")
    return p


def start(args, needs_gpu: bool = True) -> bool:
    """Print the machine; False (the script then exits 0) where it needs a GPU and there is none."""
    print(environment(), flush=True)
    if needs_gpu and not GPU and not SMOKE:
        print("This benchmark needs a CUDA GPU: nothing measured. (--smoke checks the code on a CPU.)")
        return False
    if SMOKE:
        print("SMOKE RUN on a CPU (Triton's interpreter): checks the code; the figures mean nothing.")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    return True


def report(mark, args, **kwargs):
    """Run a perf_report benchmark: tables printed, each also saved (CSV, PNG) to ``--out``."""
    return mark.run(print_data=True, save_path=args.out or "", return_df=True, **kwargs)


def headline(title: str, values: dict) -> None:
    """A line that gpu_check.sh copies into its short table."""
    print(f"headline: {title}: " + ", ".join(f"{k} {v:.3g}" for k, v in values.items()), flush=True)


def table(headers: list, rows: list) -> str:
    """A Markdown table whose columns line up; floats to 3 significant digits."""
    def cell(v):
        ok = isinstance(v, float) and abs(v) < float("inf")
        return (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}") if ok else "-" if v is None else str(v)
    cells = [list(map(str, headers))] + [[cell(v) for v in r] + [""] * (len(headers) - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines[:1] + ["|" + "|".join("-" * (w + 2) for w in widths) + "|"] + lines[1:])


class Results:  # cpu_report.py's interface (it is being rewritten elsewhere): delete with its last use
    def __init__(self, name: str, out: str | None):
        self.path, self.text = Path(out, f"{name}.md") if out else None, []
        self.add_summary(f"# {name}: {environment()}\n")

    def add_table(self, title: str, headers: list, rows: list, note: str = ""):
        self.add_summary(f"## {title}\n\n{table(headers, rows)}\n\n{note}\n")

    def add_summary(self, *cells):
        self.text.append(", ".join(cells))
        print(self.text[-1], flush=True)

    def save(self):
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("\n".join(self.text) + "\n")


def base_args(description: str) -> argparse.ArgumentParser:  # cpu_report.py's too
    p = parser(description, smoke=False)
    p.add_argument("--quick", action="store_true", help="fewer configurations")
    return p


if __name__ == "__main__":
    print(environment())
