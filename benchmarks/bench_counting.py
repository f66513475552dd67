"""Benchmark of igot.counting on real corpora (issue 3): encoding vs counting throughput, igot vs baselines.

Domain = HPO + GO definitions, general = State of the Union addresses, all encoded with the SmolLM2
tokenizer by igot.corpus.encode_corpus. Baselines, measured in the same run on the same arrays:
  * count_ngrams_reference (pure Python, collections.Counter over tuples) on a prefix of the domain stream;
  * a vectorised numpy counter written here (per n: windows masked by boundaries, np.unique on a void view);
    its table is checked equal to igot's before any time is reported.
Memory: igot's own accounting (peak capacity of the counting hash tables + the output arrays, per distinct
n-gram) and, from a subprocess, the growth of its peak RSS (VmHWM) during one count.

    .venv/bin/python benchmarks/bench_counting.py [--quick] [--repeat 3] [--out /tmp/igot_results/counting.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from igot import data
from igot.corpus import encode_corpus
from igot.counting import NgramTable, count_ngrams, count_ngrams_reference, count_words, count_words_reference

MAX_N = 8


def numpy_count_ngrams(ids: np.ndarray, word_starts: np.ndarray | None, doc_starts: np.ndarray | None, *,
                       max_n: int, cross_words: bool) -> NgramTable:
    """Vectorised numpy twin of count_ngrams (the baseline): same table, same order."""
    n_tokens = len(ids)
    boundary = np.zeros(n_tokens, dtype=bool)
    if doc_starts is not None:
        boundary |= doc_starts
    if word_starts is not None and not cross_words:
        boundary |= word_starts
    seen = np.cumsum(boundary, dtype=np.int64)  # boundaries at positions <= j
    big_endian = ids.astype(">u4")  # so a byte-wise (void) sort is the numeric lexicographic order
    rows, counts = [], []
    for n in range(2, max_n + 1):
        if n_tokens < n:
            break
        inside = seen[n - 1 :] == seen[: n_tokens - n + 1]  # no boundary at positions i+1 .. i+n-1
        windows = np.ascontiguousarray(sliding_window_view(big_endian, n)[np.flatnonzero(inside)])  # [M, n]
        keys, key_counts = np.unique(windows.view(np.dtype((np.void, 4 * n))).ravel(), return_counts=True)
        padded = np.full((len(keys), max_n), -1, dtype=np.int64)  # -1 sorts a prefix before longer n-grams
        padded[:, :n] = keys.view(">u4").reshape(-1, n)
        rows.append(padded)
        counts.append(key_counts.astype(np.int64))
    rows_all = np.concatenate(rows) if rows else np.zeros((0, max_n), dtype=np.int64)
    counts_all = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    order = np.lexsort([rows_all[:, j] for j in reversed(range(max_n))] + [-counts_all])
    rows_all, counts_all = rows_all[order], counts_all[order]
    present = rows_all >= 0
    offsets = np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int64)
    return NgramTable(offsets, rows_all[present].astype(np.uint32), counts_all, max_n=max_n,
                      cross_words=cross_words)


def timed(fn, repeat: int):
    """Median wall time of fn() over repeat runs, and its last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def same_table(a: NgramTable, b: NgramTable) -> bool:
    return all(np.array_equal(x, y) for x, y in ((a.offsets, b.offsets), (a.ids, b.ids), (a.counts, b.counts)))


def encode(docs: list[str], tokenizer: Path):
    """Encode docs with encode_corpus; return the corpus and the wall time."""
    start = time.perf_counter()
    corpus = encode_corpus(tokenizer, docs, progress=False)
    seconds = time.perf_counter() - start
    return corpus, seconds


# The peak RSS comes from VmHWM: a forked child inherits the parent's ru_maxrss, which would hide it.
_CHILD = """
import json, sys, numpy as np
from igot.counting import count_ngrams
def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
folder, cross_words = sys.argv[1], sys.argv[2] == "1"
ids, ws, ds = (np.load(f"{folder}/{k}.npy") for k in ("ids", "word_starts", "doc_starts"))
count_ngrams(ids[:1000], ws[:1000], ds[:1000])  # load the extension before the baseline reading
before = peak_kib()
table = count_ngrams(ids, ws, ds, max_n=8, cross_words=cross_words)
print(json.dumps({"delta_kib": peak_kib() - before, "distinct": len(table)}))
"""


def rss_delta(corpus, cross_words: bool) -> dict:
    """Peak-RSS growth (KiB, VmHWM) of a subprocess during one count_ngrams of the corpus (Linux)."""
    with tempfile.TemporaryDirectory() as folder:
        for key in ("ids", "word_starts", "doc_starts"):
            np.save(f"{folder}/{key}.npy", getattr(corpus, key))
        out = subprocess.run([sys.executable, "-c", _CHILD, folder, "1" if cross_words else "0"], check=True,
                             capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few thousand documents, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="/tmp/igot_results/counting.md")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    cores = os.cpu_count() or 1

    tokenizer = data.tokenizer_path("smollm2")
    domain_docs = data.load_corpus("hpo", "all") + data.load_corpus("go", "all")
    general_docs = data.load_corpus("sotu", "all")
    if args.quick:
        domain_docs, general_docs = domain_docs[:4000], general_docs[:20]
    domain, encode_domain_s = encode(domain_docs, tokenizer)
    general, encode_general_s = encode(general_docs, tokenizer)
    stream = (domain.ids, domain.word_starts, domain.doc_starts)
    n_dom, n_gen = len(domain.ids), len(general.ids)
    subset = (200_000 if not args.quick else 50_000), (40_000 if not args.quick else 10_000)

    rows = []  # (what, tokens, igot seconds, baseline name, baseline seconds)
    encode_rate = (n_dom + n_gen) / (encode_domain_s + encode_general_s)

    for cross_words, n_sub in ((False, subset[0]), (True, subset[1])):
        sub = tuple(a[:n_sub] for a in stream)
        mode = "across words" if cross_words else "inside words"
        ref_s, ref = timed(lambda: count_ngrams_reference(*sub, max_n=MAX_N, cross_words=cross_words), 1)
        igot_s, got = timed(lambda: count_ngrams(*sub, max_n=MAX_N, cross_words=cross_words, threads=1), repeat)
        assert same_table(got, ref), "igot and the Python reference disagree"
        rows.append((f"count_ngrams {mode}, 1 thread, first {n_sub:,} tokens", n_sub, igot_s,
                     "Python reference", ref_s))

    tables = {}
    for cross_words in (False, True):
        mode = "across words" if cross_words else "inside words"
        np_s, np_table = timed(lambda: numpy_count_ngrams(*stream, max_n=MAX_N, cross_words=cross_words), repeat)
        for threads in (1, 0):
            igot_s, got = timed(lambda: count_ngrams(*stream, max_n=MAX_N, cross_words=cross_words,
                                                     threads=threads), repeat)
            assert same_table(got, np_table), "igot and the numpy counter disagree"
            label = "1 thread" if threads == 1 else f"all {cores} threads"
            rows.append((f"count_ngrams {mode}, {label}, domain", n_dom, igot_s, "numpy (np.unique)", np_s))
            if not cross_words and threads == 0:
                count_inside_all_s = igot_s
        tables[cross_words] = got

    budget = 16 << 20
    budget_s, bounded = timed(lambda: count_ngrams(*stream, max_n=MAX_N, cross_words=True, memory_budget=budget), 1)
    assert same_table(bounded, tables[True]), "a memory budget changed the counts"
    rows.append((f"count_ngrams across words, all {cores} threads, memory_budget=16 MiB "
                 f"({bounded.passes} passes, peak tables {bounded.peak_table_bytes / 2**20:.1f} MiB)", n_dom, budget_s,
                 "igot unbounded (same run)", rows[-1][2]))

    table = tables[False]
    general_stream = (general.ids, general.word_starts, general.doc_starts)
    lookup_s, _ = timed(lambda: table.lookup(*general_stream), repeat)
    ref_lookup_s, _ = timed(lambda: count_ngrams_reference(*general_stream, max_n=MAX_N), 1)
    rows.append((f"lookup of {len(table):,} domain n-grams in general", n_gen, lookup_s,
                 "Python reference count of general", ref_lookup_s))
    words_s, words = timed(lambda: count_words(*stream), repeat)
    ref_words_s, ref_words = timed(lambda: count_words_reference(*stream), 1)
    assert same_table(words, ref_words)
    rows.append(("count_words, domain", n_dom, words_s, "Counter reference", ref_words_s))

    lines = [f"Command: `.venv/bin/python benchmarks/bench_counting.py{' --quick' if args.quick else ''}` "
             f"({cores} cores, median of {repeat}; domain {n_dom:,} tokens = HPO + GO, general {n_gen:,} tokens "
             f"= SOTU, SmolLM2 tokenizer, max_n={MAX_N})", "",
             "| measurement | tokens | igot s | igot Mtok/s | baseline | baseline s | ratio (baseline / igot) |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for what, tokens, igot_s, base, base_s in rows:
        lines.append(f"| {what} | {tokens:,} | {igot_s:.4f} | {tokens / igot_s / 1e6:.2f} | {base} | "
                     f"{base_s:.4f} | {base_s / igot_s:.1f}x |")
    count_rate = n_dom / count_inside_all_s
    lines += ["", "| stage (all cores) | tokens/s | ratio |", "|---|---:|---:|",
              f"| encode_corpus (SmolLM2, HF tokenizers), domain + general | {encode_rate:,.0f} | 1 |",
              f"| count_ngrams inside words, domain | {count_rate:,.0f} | "
              f"{count_rate / encode_rate:.0f}x encoding's rate |"]
    lines += ["", "| memory, whole domain, max_n=8 | distinct n-grams | peak hash tables B / n-gram | "
              "output arrays B / n-gram | peak RSS growth B / n-gram (subprocess, VmHWM) |", "|---|---:|---:|---:|---:|"]
    for cross_words, t in tables.items():
        out_bytes = t.offsets.nbytes + t.ids.nbytes + t.counts.nbytes
        rss = rss_delta(domain, cross_words)
        lines.append(f"| {'across' if cross_words else 'inside'} words | {len(t):,} | "
                     f"{t.peak_table_bytes / len(t):.1f} | {out_bytes / len(t):.1f} | "
                     f"{rss['delta_kib'] * 1024 / rss['distinct']:.1f} |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
