"""Differential fuzzing: N random programs from the op table, compiled and eager.

    python tools/fuzz_graphs.py --graphs 10000 [--seed 0] [--steps 6]

Prints the number of graphs, kernels and mismatches; every mismatch is printed
as a program (tests/random_graphs.py's ``Program.describe``) with its seed, so
it can be replayed and turned into a regression test in tests/test_random_graphs.py.
Runs on a GPU when there is one, otherwise in Triton's interpreter.
"""
import argparse
import os
import random
import sys
import time
import warnings
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# this checkout's code, not whichever copy of the package is installed (an editable
# install of another worktree would otherwise be what gets fuzzed)
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import random_graphs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--steps", type=int, default=6, help="most steps per program")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    kernels = mismatches = errors = 0
    t0 = time.perf_counter()
    for seed in range(args.seed, args.seed + args.graphs):
        rng = random.Random(seed)
        prog = random_graphs.generate(lambda name, opts: rng.choice(list(opts)),
                                      rng.randint(1, args.steps))
        try:
            n, problem = random_graphs.check(prog, seed)
        except Exception as e:  # a crash is a finding too
            n, problem = 0, f"{type(e).__name__}: {e}"
            errors += 1
        kernels += n
        if problem:
            mismatches += 1
            print(f"--- seed {seed}: {problem}\n{prog.describe()}", flush=True)
    dt = time.perf_counter() - t0
    print(f"graphs: {args.graphs}  kernels: {kernels}  mismatches: {mismatches} "
          f"(of which crashes: {errors})  time: {dt:.0f} s")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
