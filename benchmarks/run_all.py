"""Run the benchmark suite, gather its tables, print a short summary table last.

Each script runs in its own process (fresh dynamo state, its own device setup)
with a time limit; the scripts' JSON results are merged into one folder:

    OUT/report.md      every table of every script, with the environment
    OUT/summary.md     the short table (an entry ready for BENCHMARKS.md)
    OUT/results.json   all of it, machine-readable
    OUT/*.png          the plots (GPU runs)

With a CUDA GPU: pointwise, gating, compile_latency, overhead (and cpu_report
unless --quick). Without one (CPU mode): compile_latency, overhead, cpu_report.

    python benchmarks/run_all.py --out DIR [--quick] [--tests-log FILE]
    python benchmarks/run_all.py --record DIR     # put DIR/summary.md into BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = "<!-- GPU runs: newest first; `python benchmarks/run_all.py --record DIR` inserts here -->"
# script -> (GPU seconds with --quick, GPU seconds, CPU seconds): soft budgets; each also gets a hard limit
SCRIPTS = {
    "pointwise": (80, 900, None),
    "gating": (115, 1200, None),
    "compile_latency": (95, 600, 1200),
    "overhead": (35, 120, 120),
    "cpu_report": (None, 300, 300),
    "matmul_recompute": (None, 600, None),
}


def run_script(name: str, parts: Path, quick: bool, seconds: float) -> str:
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--out", str(parts)]
    if quick:
        cmd.append("--quick")
    if name in ("pointwise", "gating", "compile_latency"):  # soft limits: they skip what is left
        cmd += ["--budget", str(max(10, seconds - 30))]
    if name == "compile_latency" and quick:
        cmd += ["--workloads", "gating"]
    print(f"\n==== {name} (limit {seconds:.0f} s) ====", flush=True)
    t = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
        out, status = proc.stdout + proc.stderr, ("ok" if proc.returncode == 0 else f"exit {proc.returncode}")
    except subprocess.TimeoutExpired as e:  # its JSON keeps the tables written so far
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = f"killed after {seconds:.0f} s"
    keep = [ln for ln in out.splitlines() if "Warning" not in ln and "warn(" not in ln]
    print("\n".join(keep), flush=True)
    return f"{status} in {time.monotonic() - t:.0f} s"


def tests_line(path: str | None) -> str:
    """The pytest summary line from a log, e.g. '412 passed, 3 skipped in 95s'."""
    if not path or not Path(path).exists():
        return "tests: not run"
    lines = [ln.strip("= ") for ln in Path(path).read_text(errors="replace").splitlines()
             if (" passed" in ln or " failed" in ln or " error" in ln) and " in " in ln]
    if lines:
        return f"tests on this machine: {lines[-1]}"
    status = [ln for ln in Path(path).read_text(errors="replace").splitlines() if "pytest exit status" in ln]
    return "tests: no pytest summary line" + (f" ({status[-1]})" if status else "")


def write_reports(out: Path, parts: Path, statuses: dict, tests: str) -> str:
    sys.path.insert(0, str(HERE))
    from common import environment, environment_line, table
    env = environment()
    results = {p.stem: json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))}
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = f"{when}: {environment_line(env)}"
    full = [f"# Benchmark report\n\n{head}\n\n{tests}\n"]
    for name, r in results.items():
        full.append(f"\n## {name} ({statuses.get(name, '')})\n")
        for t in r["tables"]:
            full.append(f"\n### {t['title']}\n\n{table(t['headers'], t['rows'])}\n")
            if t["note"]:
                full.append(f"\n{t['note']}\n")
    rows = [[name] + row for name, r in results.items() for row in r["summary"]]
    rows += [[name, "script", status, "", ""] for name, status in statuses.items() if not status.startswith("ok")]
    short = table(["script", "figure", "configuration", "value", "target"], rows)
    summary = f"### {head}\n\n{tests}\n\n{short}\n"
    (out / "report.md").write_text("".join(full) + "\n## Summary\n\n" + short + "\n")
    (out / "summary.md").write_text(summary)
    (out / "results.json").write_text(json.dumps({"env": env, "tests": tests, "statuses": statuses,
                                                  "results": results}, indent=1, default=str))
    for png in parts.glob("*.png"):
        shutil.copy(png, out / png.name)
    return summary


def record(folder: str):
    """Insert FOLDER/summary.md into BENCHMARKS.md right under the marker (newest first)."""
    env = json.loads((Path(folder) / "results.json").read_text())["env"]
    if env.get("device") != "cuda":
        raise SystemExit(f"{folder} is a CPU run: BENCHMARKS.md records GPU runs only")
    entry = (Path(folder) / "summary.md").read_text().strip()
    path = HERE.parent / "BENCHMARKS.md"
    text = path.read_text()
    if MARKER not in text:
        raise SystemExit(f"{path} has no marker line {MARKER!r}")
    path.write_text(text.replace(MARKER, f"{MARKER}\n\n{entry}\n", 1))
    print(f"recorded {folder}/summary.md in {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for report.md, summary.md, results.json and plots")
    p.add_argument("--quick", action="store_true", help="the GPU check's sizes and time limits")
    p.add_argument("--only", nargs="*", help="run only these scripts")
    p.add_argument("--tests-log", help="a pytest log whose summary line goes into the report")
    p.add_argument("--record", metavar="DIR", help="record DIR/summary.md in BENCHMARKS.md and stop")
    args = p.parse_args()
    if args.record:
        return record(args.record)
    import torch
    gpu = torch.cuda.is_available()
    out = Path(args.out or f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    statuses = {}
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp:
        parts = Path(tmp)
        for name, (quick_s, gpu_s, cpu_s) in SCRIPTS.items():
            seconds = (quick_s if args.quick else gpu_s) if gpu else cpu_s
            if seconds is None or (args.only and name not in args.only):
                continue
            statuses[name] = run_script(name, parts, args.quick, seconds)
        summary = write_reports(out, parts, statuses, tests_line(args.tests_log))
    print(f"\nFull tables: {out / 'report.md'}\n\n{summary}")


if __name__ == "__main__":
    main()
