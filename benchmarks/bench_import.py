"""Cost of `import igot` (DESIGN.md: under 0.3 s, no torch/transformers/triton/numba), against
`import torch` measured in the same run.

Usage: python benchmarks/bench_import.py [--quick]
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time


def _time_import(module: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    repeats = 3 if "--quick" in sys.argv else 7
    base = _time_import("sys", repeats)  # interpreter start-up, subtracted from both
    igot_s = _time_import("igot", repeats) - base
    torch_s = _time_import("torch", repeats) - base
    print("| import | median s (start-up subtracted) | ratio torch / this |")
    print("|---|---:|---:|")
    print(f"| igot | {igot_s:.3f} | {torch_s / igot_s:.0f}x |")
    print(f"| torch | {torch_s:.3f} | 1x |")


if __name__ == "__main__":
    main()
