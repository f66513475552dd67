"""Fused linear cross-entropy, forward + backward: time and peak memory of igot against naive torch
(F.linear + F.cross_entropy, logits materialised) and, where present, torch's F.linear_cross_entropy
(chunked) and Liger-Kernel's LigerFusedLinearCrossEntropyLoss, all measured in the same run.

Usage:
  python benchmarks/bench_fused_linear_ce.py [--quick] [--tokens N] [--twin-rows R ...]   CPU: igot's torch
      twin, float32, SmolLM2's head (H=576, V=49,152 + 2,000 new tokens padded to 64) and a 262k vocabulary
      (H=640). Every timed run is a fresh subprocess, the variants taking turns round by round; peak memory
      = growth of the resident set's high-water mark (VmHWM) over the inputs, reset after they are built
      (/proc/self/clear_refs).
      --twin-rows adds the twin with R rows per chunk (the sweep behind its chunk constants).
  python benchmarks/bench_fused_linear_ce.py --gpu [--quick]   CUDA, bfloat16, H=4096, V=128k/256k,
      N=8k/32k; time = triton.testing.do_bench median; memory = torch.cuda.max_memory_allocated (inputs
      included, as Liger-Kernel reports it).
  python benchmarks/bench_fused_linear_ce.py --gpu --tune   block size / warps / chunk sweep of the kernel.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from igot.ops import fused_linear_cross_entropy


def setup(n_tokens: int, n_vocab: int, n_hidden: int, dtype: torch.dtype, device: str, seed: int = 0,
          k: int = 1) -> dict:
    """Inputs shared by the speed and memory runs: leaves that need grad, targets [N] (or [N, k]) with
    10% ignored."""
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n_tokens, n_hidden, generator=gen, device=device, dtype=dtype).requires_grad_()
    # scaled in place: a temporary weight, once freed, would leave a weight-sized hole under the CPU
    # high-water mark that the variants then fill without raising it
    weight = torch.randn(n_vocab, n_hidden, generator=gen, device=device, dtype=dtype).div_(n_hidden**0.5).requires_grad_()
    shape = (n_tokens,) if k == 1 else (n_tokens, k)
    targets = torch.randint(0, n_vocab, shape, generator=gen, device=device)
    targets[torch.rand(shape, generator=gen, device=device) < 0.1] = -100
    return dict(hidden=hidden, weight=weight, targets=targets)


def _naive(inputs: dict) -> torch.Tensor:
    return F.cross_entropy(F.linear(inputs["hidden"], inputs["weight"]), inputs["targets"])


def _naive_patch(inputs: dict) -> torch.Tensor:
    """Patch-level loss with materialised logits: mean over valid (row, k) of lse − z[y_k]."""
    logits = F.linear(inputs["hidden"], inputs["weight"])  # [N, V]
    targets = inputs["targets"]  # [N, K]
    valid = targets != -100
    pair_loss = logits.float().logsumexp(-1, keepdim=True) - logits.gather(1, targets.clamp(min=0)).float()
    return (pair_loss * valid).sum() / valid.sum().clamp(min=1)


def _igot(inputs: dict) -> torch.Tensor:
    return fused_linear_cross_entropy(inputs["hidden"], inputs["weight"], inputs["targets"])


# torch's chunked path on a CPU: its default options pick 32-row chunks at SmolLM2's shape (aspect_ratio:2),
# about 10x slower than 512-row ones, so the CPU table runs it with batch_chunk_size=512.
TORCH_CPU_CHUNK_ROWS = 512


def _torch_chunked(inputs: dict) -> torch.Tensor:
    hidden = inputs["hidden"]
    options = torch.nn.LinearCrossEntropyOptions(
        batch_chunk_size=None if hidden.is_cuda else TORCH_CPU_CHUNK_ROWS)
    return F.linear_cross_entropy(hidden, inputs["weight"], inputs["targets"], options=options)


def _igot_twin_rows(rows: int):  # type: ignore[no-untyped-def]
    """igot's twin with `rows` rows per chunk instead of its default (the chunk-size sweep)."""
    import igot.ops.fused_linear_ce as twin_module

    def run(inputs: dict) -> torch.Tensor:
        twin_module._twin_chunk_rows = lambda n_rows, n_vocab: rows
        return _igot(inputs)
    return run


def _liger(accum_dtype: torch.dtype | None):  # type: ignore[no-untyped-def]
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss(accum_dtype=accum_dtype)
    return lambda inputs: loss_fn(inputs["weight"], inputs["hidden"], inputs["targets"])


TORCH_CHUNKED = "torch F.linear_cross_entropy (chunked)"


def variants(gpu: bool, twin_rows: list[int] | tuple[int, ...] = ()) -> dict:
    """name -> fn(inputs) -> scalar loss; the first is the baseline, the second igot."""
    found = {"naive torch (logits + F.cross_entropy)": _naive,
             "igot Triton" if gpu else "igot torch twin": _igot}
    if hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):
        found[TORCH_CHUNKED if gpu else f"{TORCH_CHUNKED[:-1]}, batch_chunk_size={TORCH_CPU_CHUNK_ROWS})"] = _torch_chunked
    for rows in twin_rows:
        found[f"igot torch twin, {rows} rows per chunk"] = _igot_twin_rows(rows)
    if gpu:
        try:
            found["Liger FLCE (bf16 grad_W)"] = _liger(None)
            found["Liger FLCE (fp32 grad_W)"] = _liger(torch.float32)
        except ImportError:
            pass
    return found


def _fwd_bwd(fn, inputs: dict) -> None:  # type: ignore[no-untyped-def]
    for leaf in (inputs["hidden"], inputs["weight"]):
        leaf.grad = None
    fn(inputs).backward()


# ---- CPU: one subprocess per (variant, shape) so that the high-water mark measures that variant alone ----

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _cpu_child(name: str, n: int, v: int, h: int) -> None:
    """One timed fwd+bwd of one variant in this fresh process (after an untimed 16-row one, which pays
    the first call's one-time costs: lazy imports, thread pools): wall s, CPU s, VmHWM growth."""
    fn = variants(gpu=False, twin_rows=_rows_in(name))[name]
    _fwd_bwd(fn, setup(16, v, h, torch.float32, "cpu", seed=1))
    inputs = setup(n, v, h, torch.float32, "cpu")
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident set: setup's peak is not counted
    base_kib = _status_kib("VmRSS")
    cpu_start, start = time.process_time(), time.perf_counter()
    _fwd_bwd(fn, inputs)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_kib = _status_kib("VmHWM") - base_kib
    print(json.dumps({"s": seconds, "cpu_s": cpu_seconds, "peak_mib": peak_kib / 1024}))


def _rows_in(name: str) -> list[int]:
    """The chunk rows of a sweep variant's name ("igot torch twin, 256 rows per chunk"), else []."""
    return [int(name.split(", ")[1].split()[0])] if name.endswith("rows per chunk") else []


def _cpu_main(args: argparse.Namespace) -> None:
    n = args.tokens or (512 if args.quick else 4096)
    repeats = args.repeats or (1 if args.quick else 3)
    shapes = [("SmolLM2 + 2k new tokens", 576, _pad(49_152 + 2_000, 64)), ("262k vocabulary", 640, 262_144)]
    if args.shapes:
        shapes = [shape for shape in shapes if any(word in shape[0] for word in args.shapes)]
    found = variants(gpu=False, twin_rows=args.twin_rows)
    names = [name for name in found if not args.variants or any(v in name for v in args.variants)]
    naive = next((name for name in names if name.startswith("naive")), None)
    chunked = next((name for name in names if name.startswith(TORCH_CHUNKED[:-1])), None)
    print(f"CPU float32, N={n} tokens, fwd+bwd; {repeats} rounds, each running every variant once in a fresh "
          "process, in a rotated order (load drift on a shared box hits all variants alike); medians over the "
          "rounds; CPU s = process CPU time (user + system); peak = growth of VmHWM over the inputs (reset "
          f"after setup), the largest over the rounds; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| shape | H | V | variant | median s | min-max s | median CPU s | peak MiB | time naive/this | "
          "memory naive/this | time chunked/this | memory chunked/this |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, h, v in shapes:
        runs: dict[str, list[dict] | None] = {name: [] for name in names}
        for round_ in range(repeats):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                if runs[name] is None:
                    continue
                cmd = [sys.executable, __file__, "--cpu-child", name, str(n), str(v), str(h)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    runs[name] = None
                else:
                    runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows = {name: None if got is None else {"s": statistics.median(r["s"] for r in got),
                                                "cpu_s": statistics.median(r["cpu_s"] for r in got),
                                                "peak_mib": max(r["peak_mib"] for r in got),
                                                "range": (min(r["s"] for r in got), max(r["s"] for r in got))}
                for name, got in runs.items()}
        for name, row in rows.items():
            if row is None:
                print(f"| {label} | {h} | {v} | {name} | failed | | | | | | | |")
                continue
            ratios = [_ratio(rows.get(base), row, key, digits) for base in (naive, chunked)
                      for key, digits in (("s", 2), ("peak_mib", 1))]
            print(f"| {label} | {h} | {v} | {name} | {row['s']:.2f} | {row['range'][0]:.2f}-{row['range'][1]:.2f} | "
                  f"{row['cpu_s']:.2f} | {row['peak_mib']:.0f} | " + " | ".join(ratios) + " |", flush=True)


def _ratio(base: dict | None, row: dict, key: str, digits: int) -> str:
    return "" if base is None else f"{base[key] / max(row[key], 1e-9):.{digits}f}x"


def _pad(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# ---- GPU ----

def _gpu_measure(fn, inputs: dict) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(median ms of fwd+bwd, peak GiB allocated during one fwd+bwd, inputs included)."""
    import triton

    gc.collect()  # a previous variant's autograd graph can sit in a reference cycle
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    _fwd_bwd(fn, inputs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    ms = triton.testing.do_bench(lambda: _fwd_bwd(fn, inputs), warmup=100, rep=500, return_mode="median")
    return ms, peak


def _gpu_main(args: argparse.Namespace) -> None:
    h = 4096
    shapes = [(8192, 131_072), (32_768, 131_072), (8192, 262_144), (32_768, 262_144)]
    if args.quick:
        shapes = shapes[:1]
    found = variants(gpu=True)
    names = list(found)
    print(f"{torch.cuda.get_device_name()}, bfloat16, H={h}, fwd+bwd; time = do_bench median; "
          "peak = max_memory_allocated, inputs included\n")
    _gpu_patch_table(h)  # first: measured on a fresh allocator
    print("\n| N | V | variant | median ms | peak GiB | time ratio naive/this | memory ratio naive/this |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for n, v in shapes:
        inputs = setup(n, v, h, torch.bfloat16, "cuda")
        rows = {}
        for name in names:
            try:
                rows[name] = _gpu_measure(found[name], inputs)
            except torch.cuda.OutOfMemoryError:
                rows[name] = None
            for leaf in (inputs["hidden"], inputs["weight"]):
                leaf.grad = None
            torch.cuda.empty_cache()
        base = rows[names[0]]
        for name, row in rows.items():
            if row is None:
                print(f"| {n} | {v} | {name} | OOM | OOM | | |", flush=True)
                continue
            ratio_t = f"{base[0] / row[0]:.2f}x" if base else "naive OOM"
            ratio_m = f"{base[1] / row[1]:.1f}x" if base else "naive OOM"
            print(f"| {n} | {v} | {name} | {row[0]:.1f} | {row[1]:.2f} | {ratio_t} | {ratio_m} |", flush=True)
        del inputs
        torch.cuda.empty_cache()


def _gpu_patch_table(h: int) -> None:
    """Patch-level training's loss (K=4 targets per row, one softmax): igot vs materialised logits."""
    n, v, k = 8192, 131_072, 4
    inputs = setup(n, v, h, torch.bfloat16, "cuda", k=k)
    print(f"Patch loss, K={k} targets per row, N={n} rows, V={v}, H={h}, bfloat16, fwd+bwd\n")
    print("| variant | median ms | peak GiB | time ratio naive/this | memory ratio naive/this |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, fn in (("naive torch (logits + logsumexp + gather)", _naive_patch), ("igot Triton", _igot)):
        ms, peak = _gpu_measure(fn, inputs)
        base = base or (ms, peak)
        print(f"| {name} | {ms:.1f} | {peak:.2f} | {base[0] / ms:.2f}x | {base[1] / peak:.1f}x |", flush=True)


def _gpu_tune() -> None:
    """Sweep the kernel's tuned constants (bf16, H=4096, fwd+bwd median ms): BLOCK_V and num_warps at
    N=8k, V=128k; rows per chunk at N=8k and N=32k, V=128k."""
    import igot.kernels.fused_linear_ce as kernel_module

    defaults = (kernel_module._BLOCK_V, kernel_module._NUM_WARPS, kernel_module._default_chunk_rows)
    default_rows = defaults[2](4096)
    print("| N | V | BLOCK_V | num_warps | chunk rows | median ms | peak GiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    sweeps = {8192: [(b, w, default_rows) for b, w in ((2048, 8), (4096, 4), (4096, 8), (8192, 8), (8192, 16))]}
    sweeps[8192] += [(defaults[0], defaults[1], rows) for rows in (1024, 2048, 8192)]
    sweeps[32_768] = [(defaults[0], defaults[1], rows) for rows in (1024, 2048, 4096, 8192)]
    for n, settings in sweeps.items():
        inputs = setup(n, 131_072, 4096, torch.bfloat16, "cuda")
        for block_v, warps, rows in settings:
            kernel_module._BLOCK_V, kernel_module._NUM_WARPS = block_v, warps
            kernel_module._default_chunk_rows = lambda n_hidden, rows=rows: rows
            ms, peak = _gpu_measure(_igot, inputs)
            print(f"| {n} | 131072 | {block_v} | {warps} | {rows} | {ms:.2f} | {peak:.2f} |", flush=True)
        del inputs
    kernel_module._BLOCK_V, kernel_module._NUM_WARPS, kernel_module._default_chunk_rows = defaults


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--cpu-child":
        name, n, v, h = sys.argv[2], *map(int, sys.argv[3:6])
        _cpu_child(name, n, v, h)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, one repeat")
    parser.add_argument("--gpu", action="store_true", help="CUDA bfloat16 tables (needs a GPU)")
    parser.add_argument("--tune", action="store_true", help="with --gpu: sweep block size, warps, chunk")
    parser.add_argument("--tokens", type=int, default=None, help="CPU: number of tokens N (default 4096)")
    parser.add_argument("--repeats", type=int, default=None, help="CPU: rounds, one timed run of each variant per round (default 3)")
    parser.add_argument("--variants", nargs="*", default=None,
                        help="CPU: only variants whose name contains one of these words (keep 'naive': it is the baseline)")
    parser.add_argument("--shapes", nargs="*", default=None, help="CPU: only shapes whose label has one of these words")
    parser.add_argument("--twin-rows", nargs="*", type=int, default=[],
                        help="CPU: add the twin with this many rows per chunk (sweep)")
    args = parser.parse_args()
    print(f"`python benchmarks/bench_fused_linear_ce.py {' '.join(sys.argv[1:])}`\n")
    if args.gpu:
        _gpu_tune() if args.tune else _gpu_main(args)
    else:
        _cpu_main(args)


if __name__ == "__main__":
    main()
