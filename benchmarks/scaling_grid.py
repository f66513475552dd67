"""The grid of real training runs that the scaling-law planner (igot.scaling) is fitted on (issue 13).

    python benchmarks/scaling_grid.py --preset quick                                   # minutes: checks it all runs
    flock /tmp/igot-bench.lock .venv/bin/python benchmarks/scaling_grid.py --preset cpu # about an hour, 2 cores
    python benchmarks/scaling_grid.py --preset gpu                                     # sized for one GPU (not run yet)

Every point is a real `igot.train.train` run of a tiny random Llama over SmolLM2's tokenizer (49,152 ids):
- sizes: hidden width and depth grow together (PRESETS); embeddings are tied, as in SmolLM2 (the model whose
  continued pretraining the planner serves), which also halves the optimizer's work on the 49,152-row
  matrix that is most of these models. Tying does not change the planner's N: n_params_non_embedding
  leaves out the head, tied or not.
- general pretraining: for each size, one run per general token count D on State of the Union + Moby-Dick
  (train splits, equal weights; the gpu preset adds Python documentation), each with its own warmup-stable-decay schedule (a run read before its
  decay would not be a point of any law);
- domain continued pretraining: from each general run's final/ ([model] path), one run per domain token
  count D′ on HPO + GO definitions (train splits, equal weights), with a fresh optimizer and schedule. D′ = 0
  is the general run itself: its final evaluation includes the domain held-out set;
- domain only (D = 0): the same D′ values from the random initialisation, so that the "domain only" end the
  planner prices (law transfer) is measured, not only extrapolated;
- held out: the first documents of HPO and GO held-out definitions in turn (the domain loss) and of State of
  the Union and Moby-Dick held-out text (the general loss), in bits per byte;
- one replicate (another initialisation and data order) of one general and one domain run measures the
  run-to-run noise the fits must live with; it is kept out of the fits.
The runs are read back with igot.scaling.load_runs (N = n_params_non_embedding, D and D′ from
tokens_by_source, a domain run adding the tokens of the general run it branched from), every law in
igot.scaling.LAWS is fitted where it is defined, compared on its extrapolation to the largest size
(igot.scaling.compare), and the budget of the largest grid run is split with each law (igot.scaling.plan
among the grid's sizes, and at the largest size alone, where the split stays near the data). Writes <out>/grid.json (runs, fits, comparison, plans), <out>/tables.md,
<out>/split-<law>.png (the planner's iso-loss plot) and <out>/fits.png (data against the fitted laws).
A second call reuses every finished run folder and finishes an interrupted one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from igot.demo import DOMAIN, GENERAL, SEPARATOR, heldout_files

# sizes are (hidden width, layers); heads of 16 dimensions, SwiGLU width 8/3 of hidden rounded to 16.
# Tokens per step and the learning rate are the same for every size: a grid tuned per size would fit the
# tuning, not the law. lr: 3e-3 and 1e-2 were within 0.05 bpb of each other at widths 64 and 128 (32k tokens,
# held-out domain 3.00 vs 2.98 and 2.92 vs 2.97), 3e-2 worse at both; 5e-3 sits between.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(sizes=[(32, 1), (48, 2), (64, 2), (80, 3)], general_tokens=[4096, 8192, 16384],
                  domain_tokens=[1024, 2048, 4096], seq_len=64, batch_tokens=512, lr=5e-3, eval_docs=8,
                  eval_max_tokens=64, n_bootstrap=10, device="cpu"),
    # cpu: the largest D reads 192k tokens of Moby-Dick's 235k, so no text repeats; 8k..131k general and 3k..28k
    # domain tokens took 13.4 min on the idle box, these 3-4x as many about half an hour idle, an hour loaded
    "cpu": dict(sizes=[(48, 2), (64, 3), (80, 4), (96, 6)], general_tokens=[24576, 98304, 393216],
                domain_tokens=[12288, 36864, 110592], seq_len=128, batch_tokens=1024, lr=5e-3, eval_docs=128,
                eval_max_tokens=128, n_bootstrap=100, device="cpu"),
    # gpu: Python documentation joins the general text so that Moby-Dick (235k tokens), the smallest corpus, is
    # read at most 2.8 times (up to about 4 epochs cost little against fresh data: Muennighoff et al. 2023)
    "gpu": dict(sizes=[(128, 4), (192, 6), (256, 8), (384, 8)], general_tokens=[1 << 19, 1 << 20, 1 << 21],
                domain_tokens=[1 << 17, 1 << 18, 1 << 19], seq_len=512, batch_tokens=16384, lr=3e-3, eval_docs=512,
                eval_max_tokens=256, n_bootstrap=100, device="cuda", general=GENERAL + ("pydoc",)),
}
HEAD_DIM = 16
LOSS, GENERAL_LOSS = "domain", "general"  # the held-out sets: the planner's loss and the forgetting figure


def build_model(folder: Path, width: int, layers: int, seq_len: int, seed: int) -> str:
    """A random tied Llama of this width and depth over SmolLM2's tokenizer, as an HF folder (reused if there)."""
    if (folder / "config.json").is_file():
        return str(folder)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from igot.data import smollm2

    tokenizer_dir = smollm2()
    base = json.loads((tokenizer_dir / "config.json").read_text())
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=base["vocab_size"], hidden_size=width, num_hidden_layers=layers,
                         intermediate_size=16 * round(width * 8 / 3 / 16), num_attention_heads=width // HEAD_DIM,
                         num_key_value_heads=width // HEAD_DIM, max_position_embeddings=seq_len,
                         tie_word_embeddings=True, bos_token_id=base["bos_token_id"], eos_token_id=base["eos_token_id"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        LlamaForCausalLM(config).save_pretrained(staging)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, staging / name)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return str(folder)


def run_config(model: str, out: Path, corpora: tuple[str, ...], tokens: int, p: dict, heldout: dict[str, str],
               seed: int) -> dict[str, Any]:
    """One run's igot train config: `tokens` tokens of `corpora` (equal weights), evaluated at its end."""
    steps = tokens // p["batch_tokens"]
    return {
        "model": {"path": model},
        "data": {"seq_len": p["seq_len"], "separator": SEPARATOR, "eval_docs": p["eval_docs"],
                 "eval_max_tokens": p["eval_max_tokens"], "sources": {name: [f"{name}:train"] for name in corpora},
                 "heldout": {name: [path] for name, path in heldout.items()}},
        "train": {"out": str(out), "seed": seed, "batch_tokens": p["batch_tokens"],
                  "micro_batch_tokens": p["batch_tokens"], "lr": p["lr"], "schedule": "wsd",
                  "warmup_steps": max(1, steps // 10), "decay_fraction": 0.2, "eval_every": 0,
                  "checkpoint_every": 0, "device": p["device"]},
        "stage": [{"tokens": tokens, "weights": {name: 1.0 for name in corpora}}],
    }


def train_run(cfg: dict[str, Any], log: list[dict]) -> Path:
    """Train the run (a finished run folder is reused, an interrupted one restarted) and note its cost."""
    from igot.train import TrainConfig, train

    out = Path(cfg["train"]["out"])
    finished = (out / "final" / "config.json").is_file()
    if finished and TrainConfig.from_toml(out / "config.toml").to_dict() != TrainConfig.from_dict(cfg).to_dict():
        raise ValueError(f"{out} holds a finished run of another config (a different preset or version of this "
                         "script); pass another --out or delete it")
    if not finished:
        print(f"\n=== {out.name} ===", file=sys.stderr, flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        train(TrainConfig.from_dict(cfg), resume=(out / "config.toml").is_file(), progress=False)
        log.append({"run": out.name, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                    "load_1min": os.getloadavg()[0]})
    return out


def train_grid(p: dict, out: Path) -> tuple[list[dict], list[dict]]:
    """Every run of the grid and the replicate pair; returns (runs as {name, kind, width, layers, path, ...}, log)."""
    heldout = heldout_files(out / "data", p["eval_docs"])
    runs, log = [], []
    middle = len(p["sizes"]) // 2

    def general_then_domain(width: int, layers: int, general: list[int], domain: list[int], seed: int,
                            tag: str, replicate: bool) -> None:
        model = build_model(out / "models" / f"w{width}{tag}", width, layers, p["seq_len"], seed)
        for Dp in domain if not replicate else []:
            run = train_run(run_config(model, out / "runs" / f"w{width}-D0-Dp{Dp}{tag}", DOMAIN, Dp, p, heldout, seed), log)
            runs.append(dict(name=run.name, kind="domain_only", width=width, layers=layers, D=0, Dp=Dp, path=str(run),
                             replicate=replicate))
        for D in general:
            base = train_run(run_config(model, out / "runs" / f"w{width}-D{D}{tag}", p["general"], D, p, heldout, seed), log)
            runs.append(dict(name=base.name, kind="general", width=width, layers=layers, D=D, Dp=0, path=str(base),
                             replicate=replicate))
            for Dp in domain:
                run = train_run(run_config(str(base / "final"), out / "runs" / f"w{width}-D{D}-Dp{Dp}{tag}", DOMAIN, Dp,
                                           p, heldout, seed), log)
                runs.append(dict(name=run.name, kind="domain", width=width, layers=layers, D=D, Dp=Dp, path=str(run),
                                 parent=str(base), replicate=replicate))

    for width, layers in p["sizes"]:
        general_then_domain(width, layers, p["general_tokens"], p["domain_tokens"], seed=0, tag="", replicate=False)
    width, layers = p["sizes"][middle]
    general_then_domain(width, layers, [p["general_tokens"][1]], [p["domain_tokens"][1]], seed=1, tag="-seed1",
                        replicate=True)
    return runs, log


def read_grid(runs: list[dict], general: tuple[str, ...]) -> Any:
    """The runs through the planner's own reader; checks D and D′ against the grid (the branch is followed)."""
    import numpy as np

    from igot.scaling import load_runs

    table = load_runs([r["path"] for r in runs], general=list(general), domain=list(DOMAIN), heldout=LOSS,
                      general_heldout=GENERAL_LOSS, n_params="non_embedding")
    expected_D, expected_Dp = np.array([r["D"] for r in runs], float), np.array([r["Dp"] for r in runs], float)
    if not (np.array_equal(table.D, expected_D) and np.array_equal(table.Dp, expected_Dp)):
        raise RuntimeError("load_runs read other token counts than the grid trained: "
                           f"D {table.D.tolist()} vs {expected_D.tolist()}, D' {table.Dp.tolist()} vs {expected_Dp.tolist()}")
    for r, N, loss, general_loss in zip(runs, table.N, table.loss, table.general_loss):
        r.update(N=float(N), loss=float(loss), general_loss=float(general_loss))
    return table


def run_details(runs: list[dict]) -> float:
    """Add each run's cost and total parameter count; return the largest |domain bpb| gap between a domain
    run's first evaluation and its parent's last (the same model on the same texts: it must be 0)."""
    from igot.report import read_run

    summaries = {r["path"]: read_run(r["path"]) for r in runs}
    gap = 0.0
    for r in runs:
        s = summaries[r["path"]]
        r.update(n_params=s["n_params"], flops=s["flops"], train_s=s["train_s"], wall_s=s["wall_s"],
                 bytes=s["bytes"])
        if r["kind"] == "domain":
            gap = max(gap, abs(s["heldout_bpb_before"][LOSS] - summaries[r["parent"]]["heldout_bpb_after"][LOSS]))
    return gap


def fit_laws(table: Any, grid_runs: list[dict], p: dict, out: Path) -> dict[str, Any]:
    """Every law fitted on every run where it is defined, compared on the largest size, and a plan each."""
    import numpy as np

    from igot.scaling import LAWS, compare, fit, get_law, plan

    comparisons = {holdout: compare(table, list(LAWS), holdout=holdout) for holdout in ("largest_N", "largest_compute")}
    comparisons["largest_N"].rows += [next_size_baseline(grid_runs, both)
                                      for both in sorted({not get_law(name).defined_at_zero_Dp for name in LAWS})]
    sizes = sorted(set(table.N.tolist()))
    largest = max(grid_runs, key=lambda r: r["N"] * (r["D"] + r["Dp"]))
    budget = 6 * largest["N"] * (largest["D"] + largest["Dp"])
    fits, plans, plans_at_largest = {}, {}, {}
    for name in LAWS:
        defined = get_law(name).defined(table.D, table.Dp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # kept in LawFit.warnings and printed with the summary
            result = fit(table.subset(defined), name, n_bootstrap=p["n_bootstrap"])
        result.save(out / f"fit-{name}.json")
        fits[name] = result
        plans[name] = plan(result, budget, n_domains=1, sizes=sizes)
        plans[name].plot(out / f"split-{name}.png")
        plans_at_largest[name] = plan(result, budget, n_domains=1, N=largest["N"])
    return {"comparisons": comparisons, "fits": fits, "plans": plans, "plans_at_largest": plans_at_largest,
            "budget": budget, "largest_run": largest["name"]}


def next_size_baseline(runs: list[dict], both_kinds: bool) -> dict[str, Any]:
    """The extrapolation to the largest size without a law: each of its runs predicted by the run with the same
    D and D′ at the next smaller size (a compare() row, so it prints in the same table); both_kinds: only the
    runs with D > 0 and D′ > 0, those chinchilla_split is tested on."""
    runs = [r for r in runs if not both_kinds or (r["D"] > 0 and r["Dp"] > 0)]
    sizes = sorted({r["N"] for r in runs})
    below = {(r["D"], r["Dp"]): r["loss"] for r in runs if r["N"] == sizes[-2]}
    held = [r for r in runs if r["N"] == sizes[-1]]
    rel = [below[r["D"], r["Dp"]] / r["loss"] - 1 for r in held]
    return {"law": "no law: the next smaller size's loss" + (" (D, D' > 0)" if both_kinds else ""),
            "n_train": None, "n_test": len(held),
            "mean_abs_rel_err": statistics.fmean(map(abs, rel)), "max_abs_rel_err": max(map(abs, rel)),
            "mean_rel_err": statistics.fmean(rel)}


def plot_fits(runs: list[dict], fits: dict, path: Path) -> None:
    """Held-out domain bpb against D′ (D′ = 0 drawn at the left edge), one panel per D, points per size,
    each law's full fit as lines (a dash at D′ = 0 for a law defined there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from igot.scaling.laws import get_law

    general = sorted({r["D"] for r in runs})
    domain = sorted({r["Dp"] for r in runs if r["Dp"] > 0})
    zero_at = domain[0] / 4  # where D′ = 0 is drawn on the log axis
    widths = sorted({r["width"] for r in runs})
    colors = dict(zip(widths, plt.cm.viridis(np.linspace(0, 0.85, len(widths)))))
    styles = {"chinchilla_split": ":", "transfer": "-"}
    fig, axes = plt.subplots(1, len(general), figsize=(4.2 * len(general), 4), sharey=True, squeeze=False)
    for ax, D in zip(axes[0], general):
        for width in widths:
            points = sorted((r["Dp"], r["loss"], r["N"]) for r in runs if r["D"] == D and r["width"] == width)
            if not points:
                continue
            ax.plot([max(x, zero_at) for x, _, _ in points], [y for _, y, _ in points], "o", color=colors[width],
                    label=f"width {width} (N = {points[0][2]:.3g})")
            curve = np.geomspace(domain[0] / 2, domain[-1] * 1.5, 100)
            for name, result in fits.items():
                if D == 0 and not get_law(name).defined_at_zero_D:
                    continue
                ax.plot(curve, result.predict(points[0][2], D, curve), styles.get(name, "--"), color=colors[width], lw=1)
                if get_law(name).defined_at_zero_Dp and D > 0:
                    ax.plot([zero_at], result.predict(points[0][2], D, 0.0).reshape(1), "_", ms=12, color=colors[width])
        ax.set_xscale("log")
        ax.set_xticks([zero_at, *domain], ["0", *(f"{x:,}" for x in domain)])
        ax.minorticks_off()
        ax.set(title=f"D = {D:,} general tokens" if D else "D = 0: domain only, from random weights",
               xlabel="domain tokens D' (left edge: D' = 0)")
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel("held-out domain bits per byte")
    axes[0][0].legend(fontsize=7, title=" / ".join(f"{k} {v}" for k, v in styles.items() if k in fits), title_fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def grid_tables(runs: list[dict], key: str, what: str) -> list[str]:
    """A markdown table per quantity: one row per (size, D), one column per D′."""
    domain = sorted({r["Dp"] for r in runs})
    lines = [f"| width × layers | N (non-emb.) | D | " + " | ".join(f"{what} D'={Dp:,}" for Dp in domain) + " |",
             "|---|---:|---:|" + "---:|" * len(domain)]
    for width, layers, N, D in sorted({(r["width"], r["layers"], r["N"], r["D"]) for r in runs}):
        cells = {r["Dp"]: f"{r[key]:.4f}" for r in runs if r["width"] == width and r["D"] == D}
        lines.append(f"| {width} × {layers} | {N:,.0f} | {D:,} | " + " | ".join(cells.get(Dp, "-") for Dp in domain) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--out", default=None, help="default out/scaling-<preset>")
    parser.add_argument("--device", default=None, help="override the preset's device (cpu, cuda, auto)")
    args = parser.parse_args()
    p = {"general": GENERAL, **PRESETS[args.preset], **({"device": args.device} if args.device else {})}
    out = Path(args.out or f"out/scaling-{args.preset}").resolve()  # a domain run names its parent by this path
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()

    all_runs, log = train_grid(p, out)
    table = read_grid(all_runs, p["general"])
    branch_gap = run_details(all_runs)
    grid_runs = [r for r in all_runs if not r["replicate"]]
    grid_table = table.subset([not r["replicate"] for r in all_runs])
    analysis = fit_laws(grid_table, grid_runs, p, out)
    plot_fits(grid_runs, analysis["fits"], out / "fits.png")

    pairs = [(next(r for r in grid_runs if r["width"] == x["width"] and r["D"] == x["D"] and r["Dp"] == x["Dp"]), x)
             for x in all_runs if x["replicate"]]
    noise = [{"run": a["name"], "replicate": b["name"], "loss": a["loss"], "loss_replicate": b["loss"],
              "rel_diff": b["loss"] / a["loss"] - 1} for a, b in pairs]
    wall, cpu, load1 = time.perf_counter() - t0, time.process_time() - cpu0, os.getloadavg()
    loads = [e["load_1min"] for e in log]
    box = (f"{wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU of this process ({len(log)} runs trained now, "
           f"{len(all_runs) - len(log)} reused); load average {load0[0]:.1f} at start, {load1[0]:.1f} at end"
           + (f", after each run min {min(loads):.1f} / median {statistics.median(loads):.1f} / max {max(loads):.1f}"
              if loads else "") + f" on {os.cpu_count()} cores")
    fits, plans = analysis["fits"], analysis["plans"]

    lines = [f"# Scaling grid, preset {args.preset}", "",
             f"`python benchmarks/scaling_grid.py --preset {args.preset}`: {box}.", "",
             f"Sizes (width × layers) {p['sizes']}, general D {p['general_tokens']}, domain D' {p['domain_tokens']}, "
             f"seq_len {p['seq_len']}, {p['batch_tokens']} tokens per step, lr {p['lr']} (WSD, 20% decay), "
             f"{p['eval_docs']} held-out documents per set (at most {p['eval_max_tokens']} tokens each). "
             f"{len(grid_runs)} grid runs, total training FLOPs {sum(r['flops'] for r in all_runs):.3g}.", "",
             "Held-out domain bits per byte (D' = 0: the general run's own final evaluation; D = 0: domain only "
             "from random weights):", "",
             *grid_tables(grid_runs, "loss", "domain bpb"), "",
             "Held-out general bits per byte (forgetting as D' grows):", "",
             *grid_tables(grid_runs, "general_loss", "general bpb"), "",
             f"Branching check: a domain run's first evaluation against its parent's last (same model, same texts): "
             f"largest |difference| {branch_gap:.2e} bpb.",
             "Run-to-run noise (another initialisation and data order): "
             + "; ".join(f"{n['run']} {n['loss']:.4f} vs {n['loss_replicate']:.4f} ({n['rel_diff']:+.2%})" for n in noise) + ".",
             ""]
    for holdout, comparison in analysis["comparisons"].items():
        lines += [f"## Extrapolation: igot.scaling.compare, holdout={holdout} ({comparison.holdout})", "",
                  comparison.to_markdown(), ""]
    lines += ["## Fits on all grid runs", ""]
    for name, result in fits.items():
        lines += [result.summary(), ""]
    lines += [f"## Plans: the budget of the largest grid run ({analysis['largest_run']}, C = 6·N·(D + D') = "
              f"{analysis['budget']:.3g} non-embedding FLOPs), one domain", "", "N among the grid's sizes:", ""]
    for name, result in plans.items():
        lines += [result.to_markdown(), ""]
    lines += ["N fixed at the largest size (the split of that run's own tokens):", ""]
    for name, result in analysis["plans_at_largest"].items():
        lines += [result.to_markdown(), ""]
    text = "\n".join(lines)
    report = {"preset": args.preset, "settings": p, "box": box, "wall_s": wall, "cpu_s": cpu, "load_start": load0,
              "load_end": load1, "trained_now": log, "branch_gap_bpb": branch_gap, "noise": noise, "runs": all_runs,
              "comparisons": {k: {"holdout": v.holdout, "rows": v.rows} for k, v in analysis["comparisons"].items()},
              "fits": {k: v.to_dict() for k, v in fits.items()}, "budget": analysis["budget"],
              **{key: {k: {"N": v.N, "D": v.D, "Dp": v.Dp, "share": v.share, "loss": v.loss,
                           "loss_interval": v.loss_interval, "gain_vs_general_only": v.gain_vs_general_only,
                           "gain_vs_domain_only": v.gain_vs_domain_only, "alternatives": v.alternatives,
                           "notes": v.notes} for k, v in analysis[key].items()} for key in ("plans", "plans_at_largest")}}
    for name, content in (("grid.json", json.dumps(_plain(report), indent=1)), ("tables.md", text + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, out / name)
    print(text)
    print(f"\n{out}/grid.json, tables.md, fits.png and split-*.png written")
    return 0


def _plain(value: Any) -> Any:
    """value with numpy scalars as Python numbers and inf / NaN as strings (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
