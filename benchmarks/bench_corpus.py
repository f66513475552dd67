"""Encoding throughput of igot.encode_corpus against a per-document `tokenizer.encode` loop, same run.

Both sides encode the same documents with the real SmolLM2 tokenizer (add_special_tokens=False) and end
with one uint32 id array; encode_corpus also builds the word and document starts. A third row times bare
`encode_batch` (ids only, no flags, no copy into numpy) as the ceiling the Rust tokenizer sets.
Corpora: biomedical (HPO + GO definitions) and general (State of the Union addresses), split "all".

Usage: python benchmarks/bench_corpus.py [--quick] [--repeats N] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import itertools
import os
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


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of each corpus, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per row (median)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    tok = Tokenizer.from_file(str(data.tokenizer_path("smollm2")))
    corpora = {"biomedical (hpo+go)": data.load_corpus("hpo", "all") + data.load_corpus("go", "all"),
               "general (sotu)": data.load_corpus("sotu", "all")}
    if args.quick:
        corpora = {name: docs[: max(len(docs) // 10, 1)] for name, docs in corpora.items()}

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
            seconds = {label: _median_seconds(fn, repeats) for label, fn in timed.items()}
        base = seconds["per-document encode loop (baseline)"]
        for label, sec in seconds.items():
            rows.append(f"| {name} | {label} | {corpus.n_docs:,} | {corpus.n_tokens:,} | "
                        f"{corpus.n_tokens / sec / 1e6:.2f} | {corpus.n_bytes / sec / 1e6:.1f} | "
                        f"{base / sec:.2f}x |")

    command = "python benchmarks/bench_corpus.py " + " ".join(sys.argv[1:])
    table = "\n".join([
        f"`{command.strip()}` (SmolLM2 tokenizer, {os.cpu_count()} CPU cores, median of {repeats})",
        "",
        "| corpus | method | docs | tokens | M tokens/s | MB/s | ratio baseline / this |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ])
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
