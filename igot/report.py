"""Read `igot train` run folders and plot their held-out curves (`igot plot RUN_DIR...`).

A run folder's metrics.jsonl has a "start" line, one line per step and "eval" lines with heldout_bpb;
read_run turns it into the figures users compare (tokens, bytes, FLOPs, time, memory, held-out bits per
byte before and after) and the eval curves; plot_runs draws held-out bits per byte against bytes, FLOPs
and the wall time of the training steps, one line per run, into one PNG (matplotlib, an optional extra).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# x axes of plot_runs; time is the wall time of the training steps (train_s), evaluations and loading excluded
X_AXES = {"bytes": "UTF-8 bytes of training text", "flops": "training FLOPs", "train_s": "training wall time (s)"}


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """Summarise one run folder.

    Args:
        run_dir: an `igot train` train.out folder (metrics.jsonl inside).
    Returns:
        {"run", "steps", "tokens", "bytes", "flops", "wall_s", "train_s", "peak_mem_bytes", "n_params",
         "heldout_bpb_before", "heldout_bpb_after" (dicts by held-out set, from the first and last eval
         lines), "evals" (the eval lines: step, tokens, bytes, flops, wall_s, heldout_bpb)}.
    Raises:
        FileNotFoundError: no metrics.jsonl in run_dir.
        ValueError: metrics.jsonl has no step line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an igot train run folder (no metrics.jsonl)")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    steps = [r for r in lines if r.get("event") is None]
    if not steps:
        raise ValueError(f"{path} has no step line yet: the run has not trained")
    start = next((r for r in lines if r.get("event") == "start"), {})
    evals = [{k: r.get(k) for k in ("step", "tokens", "bytes", "flops", "wall_s", "train_s", "heldout_bpb")}
             for r in lines if r.get("event") == "eval"]
    last = steps[-1]
    return {
        "run": str(run_dir), "steps": last["step"], "tokens": last["tokens"], "bytes": last["bytes"],
        "flops": last["flops"], "wall_s": last["wall_s"], "train_s": last.get("train_s"),
        "peak_mem_bytes": max(r["peak_mem_bytes"] for r in lines), "n_params": start.get("n_params"),
        "heldout_bpb_before": evals[0]["heldout_bpb"] if evals else {},
        "heldout_bpb_after": evals[-1]["heldout_bpb"] if evals else {}, "evals": evals,
    }


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, heldout: str | None = None,
              labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Draw held-out bits per byte against bytes, FLOPs and training wall time for several runs into one PNG.

    Args:
        run_dirs: `igot train` run folders.
        out: the PNG file to write.
        heldout: which held-out set to draw (default: the first set of the first run).
        labels: one legend label per run (default: the folder names).
        title: a title over the three panels.
    Returns:
        The PNG path.
    Raises:
        ImportError: matplotlib is not installed (pip install "igot[plot]").
        ValueError: no run has an evaluation of that held-out set.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('igot plot needs matplotlib: pip install "igot[plot]" (or pip install matplotlib)') from None
    runs = [read_run(d) for d in run_dirs]
    labels = list(labels) if labels is not None else [Path(d).name for d in run_dirs]
    if heldout is None:
        heldout = next((name for run in runs for e in run["evals"] for name in e["heldout_bpb"]), None)
    if heldout is None or not any(heldout in e["heldout_bpb"] for run in runs for e in run["evals"]):
        raise ValueError(f"no run has an evaluation of held-out set {heldout!r}")
    fig, axes = plt.subplots(1, len(X_AXES), figsize=(5 * len(X_AXES), 4), sharey=True)
    for axis, (key, label) in zip(axes, X_AXES.items()):
        for run, name in zip(runs, labels):
            points = [(e[key], e["heldout_bpb"][heldout]) for e in run["evals"] if heldout in e["heldout_bpb"]]
            if points:
                axis.plot(*zip(*points), marker="o", markersize=3, label=name)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"held-out bits per byte ({heldout})")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
