"""Encoding throughput of igot.encode_corpus against a per-document `tokenizer.encode` loop, same run.

Both sides encode the same documents with the real SmolLM2 tokenizer (add_special_tokens=False) and end
with one uint32 id array; encode_corpus also builds the word and document starts. A third row times bare
`encode_batch` (ids only, no flags, no copy into numpy) as the ceiling the Rust tokenizer sets. Wall time
shows the parallel speed-up where cores are free; CPU time (all threads) shows the work each method
does, which is what decides on a machine whose cores are all busy.
Corpora: biomedical (HPO + GO definitions) and general (State of the Union addresses), split "all",
each cut to its first --max-mb of text. The methods take turns inside each repeat, so a load change on a
shared machine hits all of them alike; the table gives the median.

Usage: python benchmarks/bench_corpus.py [--quick] [--repeats N] [--max-mb MB] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from igot import data
from igot.corpus import encode_corpus


def per_document_loop(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """The baseline: encode each document on its own, then gather the ids into one uint32 array."""
    id_lists = [tok.encode(doc, add_special_tokens=False).ids for doc in docs]
    return np.fromiter(itertools.chain.from_iterable(id_lists), np.uint32)


def bare_encode_batch(tok: Tokenizer, docs: list[str]) -> list[list[int]]:
    """The ceiling: Rust-parallel encode_batch in chunks of 1024 documents, ids as Python lists."""
    return [e.ids for i in range(0, len(docs), 1024)
            for e in tok.encode_batch(docs[i:i + 1024], add_special_tokens=False)]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process, Rust ones included
    return usage.ru_utime + usage.ru_stime


def _median_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall s, CPU s) of each function, the functions taking turns inside each repeat."""
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            wall, cpu = time.perf_counter(), _cpu_seconds()
            fn()
            times[label].append((time.perf_counter() - wall, _cpu_seconds() - cpu))
    return {label: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
            for label, t in times.items()}


def _head(docs: list[str], max_chars: int) -> list[str]:
    """The first documents of a corpus, up to max_chars characters (at least one document)."""
    total = itertools.accumulate(len(d) for d in docs)
    return docs[: max(1, sum(1 for t in total if t <= max_chars))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.5 MB per corpus, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per row (median)")
    parser.add_argument("--max-mb", type=float, default=None, help="text per corpus, in millions of chars")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    max_chars = int((args.max_mb or (0.5 if args.quick else 3.0)) * 1e6)
    tok = Tokenizer.from_file(str(data.tokenizer_path("smollm2")))
    corpora = {"biomedical (hpo+go)": data.load_corpus("hpo", "all") + data.load_corpus("go", "all"),
               "general (sotu)": data.load_corpus("sotu", "all")}
    corpora = {name: _head(docs, max_chars) for name, docs in corpora.items()}

    rows = []
    for name, docs in corpora.items():
        corpus = encode_corpus(tok, docs, progress=False)  # warm-up, and the token / byte counts
        np.testing.assert_array_equal(per_document_loop(tok, docs), corpus.ids)  # same ids on both sides
        with tempfile.TemporaryDirectory() as tmp:
            timed = {
                "per-document encode loop (baseline)": lambda: per_document_loop(tok, docs),
                "encode_corpus, in memory": lambda: encode_corpus(tok, docs, progress=False),
                "encode_corpus, out_dir (.npy shards)": lambda: encode_corpus(
                    tok, docs, out_dir=tmp, progress=False),
                "bare encode_batch (ids only, ceiling)": lambda: bare_encode_batch(tok, docs),
            }
            seconds = _median_seconds(timed, repeats)
        base_wall, base_cpu = seconds["per-document encode loop (baseline)"]
        for label, (wall, cpu) in seconds.items():
            rows.append(f"| {name} | {label} | {corpus.n_docs:,} | {corpus.n_tokens:,} | "
                        f"{corpus.n_tokens / wall / 1e6:.2f} | {corpus.n_bytes / wall / 1e6:.1f} | "
                        f"{base_wall / wall:.2f}x | {cpu * 1e9 / corpus.n_tokens:.0f} | "
                        f"{base_cpu / cpu:.2f}x |")
            print(rows[-1], file=sys.stderr, flush=True)  # progress on a slow, shared machine

    command = "python benchmarks/bench_corpus.py " + " ".join(sys.argv[1:])
    table = "\n".join([
        f"`{command.strip()}` (SmolLM2 tokenizer, {os.cpu_count()} CPU cores, "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}, median of {repeats}, "
        f"load average {os.getloadavg()[0]:.1f} at the end)",
        "",
        "| corpus | method | docs | tokens | M tokens/s | MB/s | ratio baseline / this (wall) "
        "| CPU ns / token | ratio baseline / this (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
