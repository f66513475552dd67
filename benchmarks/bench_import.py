"""Cost of `import igot` (DESIGN.md: under 0.3 s, no torch/transformers/triton/numba): the import's own
wall time, timed inside a fresh interpreter per run (start-up excluded, nothing to subtract), quoted with
its spread over the runs; `import torch` in the same run for scale. A ratio of the two would mostly show
the noise of a few milliseconds, so none is printed.

Usage: python benchmarks/bench_import.py [--quick] [--runs N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

HEAVY = ("torch", "transformers", "triton", "numba")

# Runs in a fresh interpreter: times the import alone and reports which heavy modules it loaded.
_CHILD = """
import json, sys, time
start = time.perf_counter()
import {module}
seconds = time.perf_counter() - start
print(json.dumps({{"s": seconds, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def time_import(module: str, runs: int) -> tuple[list[float], set[str]]:
    """Import times (s) of `module` over `runs` fresh interpreters, and the heavy modules any run loaded."""
    times, loaded = [], set()
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", _CHILD.format(module=module, heavy=HEAVY)],
                              check=True, capture_output=True, text=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        times.append(row["s"])
        loaded.update(row["loaded"])
    return times, loaded


def spread_row(module: str, times: list[float], loaded: set[str]) -> str:
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (f"| {module} | {median * 1e3:,.1f} | {q1 * 1e3:,.1f}-{q3 * 1e3:,.1f} | {min(times) * 1e3:,.1f}-"
            f"{max(times) * 1e3:,.1f} | {len(times)} | {', '.join(sorted(loaded)) or 'none'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 runs per module instead of 21")
    parser.add_argument("--runs", type=int, default=None, help="fresh interpreters per module")
    args = parser.parse_args()
    runs = args.runs or (5 if args.quick else 21)
    print(f"`python benchmarks/bench_import.py {' '.join(sys.argv[1:])}` (python {sys.version.split()[0]})\n")
    print("| import | median ms | IQR ms | min-max ms | runs | heavy modules loaded |")
    print("|---|---:|---:|---:|---:|---|")
    for module in ("igot", "torch"):
        times, loaded = time_import(module, runs)
        print(spread_row(module, times, loaded), flush=True)


if __name__ == "__main__":
    main()
