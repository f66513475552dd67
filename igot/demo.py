"""`igot demo`: the whole pipeline on the fetched real data (`igot data fetch`), training included.

Biomedical domain (HPO + GO definitions) against general English (State of the Union + Moby-Dick) on
SmolLM2-135M: count the domain's n-grams (C++), choose `budget` entries by information gain (Numba), write
the extended tokenizer, then two short `igot train` runs on the same domain bytes, one with the base
tokenizer and one with igot's (the model grown to it, new rows from their pieces), and compare tokens, time,
memory and held-out bits per byte before and after. Writes <out>/report.json and <out>/bpb.png.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

DOMAIN = ("hpo", "go")
GENERAL = ("sotu", "moby_dick")
SEPARATOR = "<|endoftext|>"  # SmolLM2's document separator in pretraining
_MARKER = ".igot-demo"  # a folder the demo made, so a second `make demo` may replace its runs


def _texts(names: tuple[str, ...], split: str) -> list[str]:
    from .data import load_corpus

    return [doc for name in names for doc in load_corpus(name, split)]


def _interleaved(names: tuple[str, ...], split: str, n_docs: int, max_chars: int) -> list[str]:
    """The first documents of each corpus in turn (so every corpus is in any prefix), cut to max_chars."""
    from .data import load_corpus

    lists = [load_corpus(name, split) for name in names]
    docs = [doc[:max_chars] for group in zip(*lists) for doc in group]
    return docs[:n_docs]


def _write_jsonl(path: Path, docs: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return str(path)


def run_config(model_dir: str, out: Path, *, tokenizer: str | None, domain_bytes: int, heldout: dict[str, str],
               seq_len: int = 256, batch_tokens: int = 1024, micro_batch_tokens: int = 1024, lr: float = 5e-4,
               domain_weight: float = 0.8, stages: list[dict[str, Any]] | None = None, eval_every: int = 0,
               eval_docs: int = 64, freeze_body_steps: int = 0, device: str = "auto") -> dict[str, Any]:
    """The `igot train` config (as a dict) of one CPT arm on the biomedical and general corpora.

    The stage consumes domain_bytes / domain_weight bytes of text, so every arm, whatever its tokenizer,
    trains on the same domain bytes (8:2 domain:general by default), to within one step: the default batch is
    small (1,024 tokens) so that a tokenizer that needs 9% fewer tokens also needs fewer steps in a short run.
    """
    model: dict[str, Any] = {"path": model_dir}
    if tokenizer is not None:
        model["tokenizer"] = tokenizer
    weights = {"domain": domain_weight, "general": round(1 - domain_weight, 6)}
    return {
        "model": model,
        "data": {"seq_len": seq_len, "separator": SEPARATOR, "eval_docs": eval_docs, "eval_max_tokens": 256,
                 "sources": {"domain": [f"{n}:train" for n in DOMAIN], "general": [f"{n}:train" for n in GENERAL]},
                 "heldout": {name: [path] for name, path in heldout.items()}},
        "train": {"out": str(out), "batch_tokens": batch_tokens, "micro_batch_tokens": micro_batch_tokens, "lr": lr,
                  "warmup_steps": 1, "schedule": "wsd", "decay_fraction": 0.3, "eval_every": eval_every,
                  "checkpoint_every": 0, "keep_checkpoints": 1, "freeze_body_steps": freeze_body_steps,
                  "device": device},
        "stage": stages or [{"bytes": int(domain_bytes / domain_weight), "weights": weights}],
    }


def heldout_files(folder: Path, n_docs: int) -> dict[str, str]:
    """Held-out domain (HPO and GO in turn) and general (SOTU and Moby-Dick in turn, 2,000 characters each)."""
    return {"domain": _write_jsonl(folder / "domain_heldout.jsonl", _interleaved(DOMAIN, "heldout", n_docs, 10**9)),
            "general": _write_jsonl(folder / "general_heldout.jsonl", _interleaved(GENERAL, "heldout", n_docs, 2000))}


def _prepare(out: Path) -> None:
    """Use out for a new demo: refuse a folder the demo did not make, clear a previous demo's files."""
    if out.exists() and any(out.iterdir()) and not (out / _MARKER).exists():
        raise FileExistsError(f"--out {out} exists and was not made by igot demo; pick another folder")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / _MARKER).touch()


def run(out: str | Path = "out/demo", *, budget: int = 2000, domain_bytes: int = 100_000, eval_docs: int = 64,
        model: str | Path | None = None, max_docs: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the demo, print its tables, and write out/report.json and out/bpb.png.

    Args:
        out: the demo's folder (tokenizer/, runs/base, runs/igot, data/, report.json, bpb.png); a previous
            demo there is replaced.
        budget: new vocabulary entries.
        domain_bytes: UTF-8 bytes of domain text each training run consumes (plus a quarter as much general
            text): both runs see the same text, in different numbers of tokens.
        eval_docs: held-out documents per set (domain and general) for bits per byte.
        model: a Hugging Face causal LM folder with SmolLM2's tokenizer (default: the fetched SmolLM2-135M).
        max_docs: choose the new entries from the first max_docs documents of each corpus list (default all).
        progress: show progress bars.
    Returns:
        The report: tokenizer figures and, for "base" and "igot", tokens, bytes, wall_s, peak_mem_bytes,
        heldout_domain_bpb, heldout_general_bpb (after training) and their values before training.
    Raises:
        FileNotFoundError: the data is not fetched (run `igot data fetch`).
        FileExistsError: out holds something the demo did not make.
    """
    import numpy as np

    from .corpus import encode_corpus, load_tokenizer
    from .counting import count_ngrams
    from .data import smollm2
    from .eval import write_result
    from .report import plot_runs, read_run
    from .train import TrainConfig, train
    from .vocab import extend_tokenizer

    out = Path(out)
    _prepare(out)
    t0 = time.perf_counter()
    model_dir = Path(model) if model is not None else smollm2()
    label = "SmolLM2-135M" if model is None else model_dir.name
    base = load_tokenizer(model_dir)
    domain, general, heldout = (_texts(names, split)[:max_docs] for names, split in
                                ((DOMAIN, "train"), (GENERAL, "train"), (DOMAIN, "heldout")))
    print(f"domain {len(domain):,} docs (HPO + GO train), general {len(general):,} docs (SOTU + Moby-Dick), "
          f"held-out domain {len(heldout):,} docs; model {label}, tokenizer {base.get_vocab_size():,} tokens")

    start = time.perf_counter()
    corpus = encode_corpus(base, domain, progress=progress)
    encoded = time.perf_counter()
    table = count_ngrams(corpus.ids, corpus.word_starts, corpus.doc_starts, max_n=8, min_count=2)
    counted = time.perf_counter()
    print(f"\n1. count: {corpus.n_tokens:,} tokens encoded in {encoded - start:.2f} s, "
          f"{len(table):,} n-grams (2..8 tokens inside a word, count >= 2) counted in {counted - encoded:.3f} s; "
          "the most frequent of 3+ tokens:")
    lengths = np.diff(table.offsets)
    for i in [i for i in range(len(table)) if lengths[i] >= 3][:8]:
        print(f"   {int(table.counts[i]):>7,}  {base.decode(list(table.ngram(i)))!r}")

    start = time.perf_counter()
    ext = extend_tokenizer(model_dir, domain, general, budget=budget, method="igot", heldout=heldout, progress=progress)
    tokenizer_dir = ext.save(out / "tokenizer")
    tokens = ext.report["tokens"]
    print(f"\n2. extend: {ext.report['entries_added']:,} entries chosen (method igot) in "
          f"{time.perf_counter() - start:.1f} s, written as BPE merges to {tokenizer_dir}")
    print("\n| corpus | base tokens | extended tokens | saving |\n|---|---:|---:|---:|")
    for name, row in tokens.items():
        print(f"| {name} | {row['base']:,} | {row['new']:,} | {row['saving']:.2%} |")
    top = sorted(ext.new_tokens, key=lambda t: -t.score)[:12]
    print("new tokens: " + ", ".join(repr(ext.tokenizer.decode([t.id])) for t in top))

    heldout_sets = heldout_files(out / "data", eval_docs)
    print(f"\n3. continued pretraining, twice on the same {domain_bytes:,} bytes of domain text (+ general text 8:2): "
          f"{label} with its own tokenizer, and grown to igot's (new rows = mean of their pieces)")
    runs = {}
    for arm, tok in (("base", None), ("igot", str(tokenizer_dir))):
        print(f"\n--- {arm} ---")
        cfg = run_config(str(model_dir), out / "runs" / arm, tokenizer=tok, domain_bytes=domain_bytes,
                         heldout=heldout_sets, eval_docs=eval_docs)
        train(TrainConfig.from_dict(cfg), progress=progress)
        runs[arm] = read_run(out / "runs" / arm)

    print("\n| run | tokens | bytes | train time | peak memory | domain bpb before -> after | general bpb before -> after |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm, r in runs.items():
        before, after = r["heldout_bpb_before"], r["heldout_bpb_after"]
        print(f"| {arm} | {r['tokens']:,} | {r['bytes']:,} | {r['train_s']:.0f} s | {r['peak_mem_bytes'] / 2**30:.2f} GiB | "
              f"{before['domain']:.4f} -> {after['domain']:.4f} | {before['general']:.4f} -> {after['general']:.4f} |")
    saving = 1 - runs["igot"]["tokens"] / runs["base"]["tokens"]
    print(f"\nigot read {runs['igot']['bytes'] / runs['base']['bytes']:.3f}x the bytes of the base run in "
          f"{saving:.1%} fewer tokens and {1 - runs['igot']['train_s'] / runs['base']['train_s']:.1%} less training time. "
          "A run this short shows the cost side; whether the grown model ends better is what longer runs "
          "(benchmarks/cpt_experiment.py) measure.")

    report = {
        "tokenizer": {"entries_added": ext.report["entries_added"], "tokens": tokens},
        **{arm: {"tokens": r["tokens"], "bytes": r["bytes"], "wall_s": r["wall_s"], "train_s": r["train_s"],
                 "peak_mem_bytes": r["peak_mem_bytes"], "heldout_domain_bpb": r["heldout_bpb_after"]["domain"],
                 "heldout_general_bpb": r["heldout_bpb_after"]["general"],
                 "heldout_domain_bpb_before": r["heldout_bpb_before"]["domain"],
                 "heldout_general_bpb_before": r["heldout_bpb_before"]["general"]} for arm, r in runs.items()},
        "total_s": time.perf_counter() - t0,
    }
    write_result(report, out / "report.json")
    plot = plot_runs([out / "runs" / a for a in runs], out / "bpb.png", heldout="domain", labels=list(runs),
                     title=f"{label}, continued pretraining on HPO + GO: base tokenizer vs igot's")
    print(f"\nwrote {out / 'report.json'} and {plot} ({report['total_s']:.0f} s in all)")
    return report
