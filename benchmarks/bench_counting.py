"""Benchmark of igot.counting: throughput by regime against the pure-Python reference, lookup, memory.

Regimes (issue 10 §3), each counted by igot with 1 thread and with all threads and, on the same tokens in
the same run, by the pure-Python reference count_ngrams_reference and by a vectorised numpy counter
written here (per n: windows masked by boundaries, np.unique on a void view); both tables are checked
equal to igot's before any time is reported:
  * real biomedical text inside words: HPO + GO definitions, SmolLM2 tokenizer, max_n = 8 (few distinct);
  * a high-cardinality stream: 4 M random ids in 0..40, 30% word starts, max_n = 6 (most n-grams distinct);
  * both again across words (the random one on its first 1 M tokens, so the reference ends in minutes).
Memory budgets: the biomedical stream across words under two budgets, against the unbounded count.
Lookup: the domain's n-grams looked up in the general corpus (SOTU) by igot (1 thread, and all threads)
and by lookup_reference, a pure-Python lookup of the same keys. Memory: igot's own accounting (peak
bytes of the counting tables and key buffers + the output arrays, per distinct n-gram) and, from a
subprocess, the growth of its peak RSS (VmHWM) during one count.

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
from igot.counting import NgramTable, count_ngrams, count_words
from igot.counting import count_ngrams_reference, count_words_reference, lookup_reference  # the baselines


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
    wall, _, result = timed_cpu(fn, repeat)
    return wall, result


def timed_cpu(fn, repeat: int):
    """Median wall and median CPU time (user + system, all threads of this process) of fn(), last result.

    On a loaded machine a one-thread run's CPU time is what it costs when it has a core to itself.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return float(np.median(walls)), float(np.median(cpus)), result


def same_table(a: NgramTable, b: NgramTable) -> bool:
    return all(np.array_equal(x, y) for x, y in ((a.offsets, b.offsets), (a.ids, b.ids), (a.counts, b.counts)))


def encode(docs: list[str], tokenizer: Path):
    """Encode docs with encode_corpus; return the corpus and the wall time."""
    start = time.perf_counter()
    corpus = encode_corpus(tokenizer, docs, progress=False)
    seconds = time.perf_counter() - start
    return corpus, seconds


def random_stream(n_tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, None]:
    """The high-cardinality stream of issue 10: ids uniform in 0..40, 30% of positions start a word."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 41, n_tokens).astype(np.uint32), rng.random(n_tokens) < 0.3, None


# The peak RSS comes from VmHWM: a forked child inherits the parent's ru_maxrss, which would hide it.
_CHILD = """
import json, sys, numpy as np
from igot.counting import count_ngrams
def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
folder, cross_words, max_n = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
ids, ws = np.load(f"{folder}/ids.npy"), np.load(f"{folder}/word_starts.npy")
ds = np.load(f"{folder}/doc_starts.npy") if len(sys.argv) > 4 else None
count_ngrams(ids[:1000], ws[:1000], None if ds is None else ds[:1000])  # load the extension first
before = peak_kib()
table = count_ngrams(ids, ws, ds, max_n=max_n, cross_words=cross_words)
print(json.dumps({"delta_kib": peak_kib() - before, "distinct": len(table)}))
"""


def rss_delta(stream, max_n: int, cross_words: bool) -> dict:
    """Peak-RSS growth (KiB, VmHWM) of a subprocess during one count_ngrams of the stream (Linux)."""
    with tempfile.TemporaryDirectory() as folder:
        for key, array in zip(("ids", "word_starts", "doc_starts"), stream):
            if array is not None:
                np.save(f"{folder}/{key}.npy", array)
        args = [sys.executable, "-c", _CHILD, folder, "1" if cross_words else "0", str(max_n)]
        out = subprocess.run(args + (["docs"] if stream[2] is not None else []), check=True, capture_output=True,
                             text=True).stdout
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller streams, one repeat")
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
    bio = (domain.ids, domain.word_starts, domain.doc_starts)
    rand = random_stream(400_000 if args.quick else 4_000_000)
    rand_across = tuple(None if a is None else a[: 200_000 if args.quick else 1_000_000] for a in rand)
    n_dom, n_gen = len(domain.ids), len(general.ids)

    regimes = [  # (name, stream, max_n, cross_words)
        ("biomedical text, inside words", bio, 8, False),
        ("random ids 0..40, 30% word starts, inside words", rand, 6, False),
        ("biomedical text, across words", bio, 8, True),
        ("random ids 0..40, across words", rand_across, 6, True),
    ]
    lines = [f"Command: `.venv/bin/python benchmarks/bench_counting.py{' --quick' if args.quick else ''}` "
             f"({cores} cores, igot median of {repeat}, baselines once; load average at start "
             f"{os.getloadavg()[0]:.1f}; biomedical = HPO + GO, {n_dom:,} tokens, SmolLM2 tokenizer)", "",
             "Times are wall-clock medians; \"CPU\" is user + system time of the one-thread runs (what they cost "
             "with a core to themselves); ratios compare wall with wall and CPU with CPU.", "",
             "| regime | max_n | tokens | distinct n-grams | strategy | igot 1 thread s (CPU s) | Mtok/s (CPU) "
             f"| igot all {cores} threads s | Mtok/s | Python reference s (CPU s) | reference / igot 1 thread "
             "(CPU) | numpy s | numpy / igot 1 thread |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tables = {}
    for name, stream, max_n, cross_words in regimes:
        tokens = len(stream[0])
        one_s, one_cpu, got = timed_cpu(lambda: count_ngrams(*stream, max_n=max_n, cross_words=cross_words,
                                                             threads=1), repeat)
        all_s, got_all = timed(lambda: count_ngrams(*stream, max_n=max_n, cross_words=cross_words), repeat)
        ref_s, ref_cpu, ref = timed_cpu(lambda: count_ngrams_reference(*stream, max_n=max_n,
                                                                       cross_words=cross_words), 1)
        assert same_table(got, ref) and same_table(got_all, ref), f"igot and the Python reference disagree: {name}"
        del ref
        np_s, np_table = timed(lambda: numpy_count_ngrams(*stream, max_n=max_n, cross_words=cross_words), 1)
        assert same_table(got, np_table), f"igot and the numpy counter disagree: {name}"
        del np_table
        tables[name] = (got, stream, max_n, cross_words)
        lines.append(f"| {name} | {max_n} | {tokens:,} | {len(got):,} | {got.strategy} | {one_s:.4f} "
                     f"({one_cpu:.4f}) | {tokens / one_s / 1e6:.1f} ({tokens / one_cpu / 1e6:.1f}) | {all_s:.4f} | "
                     f"{tokens / all_s / 1e6:.1f} | {ref_s:.2f} ({ref_cpu:.2f}) | {ref_s / one_s:.0f}x "
                     f"({ref_cpu / one_cpu:.0f}x) | {np_s:.3f} | {np_s / one_s:.1f}x |")
        if name == regimes[0][0]:
            count_inside_all_s = all_s

    across, _, _, _ = tables[regimes[2][0]]
    unbounded_s, _ = timed(lambda: count_ngrams(*bio, max_n=8, cross_words=True), repeat)
    lines += ["", f"Memory budget, biomedical text across words (max_n = 8, all {cores} threads; unbounded: "
              f"{unbounded_s:.3f} s, peak tables and key buffers {across.peak_table_bytes / 2**20:.1f} MiB)", "",
              "| memory_budget | strategy | passes | peak tables and key buffers MiB | s | unbounded s / s |",
              "|---:|---|---:|---:|---:|---:|"]
    for budget in ((4 << 20, 16 << 20) if args.quick else (16 << 20, 64 << 20)):
        budget_s, bounded = timed(lambda: count_ngrams(*bio, max_n=8, cross_words=True, memory_budget=budget), 1)
        assert same_table(bounded, across), "a memory budget changed the counts"
        lines.append(f"| {budget >> 20} MiB | {bounded.strategy} | {bounded.passes} | "
                     f"{bounded.peak_table_bytes / 2**20:.1f} | {budget_s:.3f} | {unbounded_s / budget_s:.2f}x |")

    table = tables[regimes[0][0]][0]
    general_stream = (general.ids, general.word_starts, general.doc_starts)
    ref_lookup_s, ref_lookup_cpu, want = timed_cpu(lambda: lookup_reference(table, *general_stream), 1)
    lookup_one_s, lookup_one_cpu, got_one = timed_cpu(lambda: table.lookup(*general_stream, threads=1), repeat)
    lookup_all_s, got_all = timed(lambda: table.lookup(*general_stream), repeat)
    assert np.array_equal(got_one, want) and np.array_equal(got_all, want), "igot and the Python lookup disagree"
    lines += ["", f"Lookup of the {len(table):,} biomedical n-grams (inside words) in the general corpus "
              f"(SOTU, {n_gen:,} tokens), the same keys for both", "",
              "| lookup | s (CPU s) | Mtok/s | Python lookup / this (CPU) |", "|---|---:|---:|---:|",
              f"| lookup_reference (pure Python, dict of the same keys) | {ref_lookup_s:.3f} ({ref_lookup_cpu:.3f}) | "
              f"{n_gen / ref_lookup_s / 1e6:.2f} | 1.0x |",
              f"| NgramTable.lookup, 1 thread | {lookup_one_s:.4f} ({lookup_one_cpu:.4f}) | "
              f"{n_gen / lookup_one_s / 1e6:.1f} | {ref_lookup_s / lookup_one_s:.0f}x "
              f"({ref_lookup_cpu / lookup_one_cpu:.0f}x) |",
              f"| NgramTable.lookup, all {cores} threads (its own row) | {lookup_all_s:.4f} | "
              f"{n_gen / lookup_all_s / 1e6:.1f} | {ref_lookup_s / lookup_all_s:.0f}x |"]

    words_s, words = timed(lambda: count_words(*bio), repeat)
    ref_words_s, ref_words = timed(lambda: count_words_reference(*bio), 1)
    assert same_table(words, ref_words)
    encode_rate = (n_dom + n_gen) / (encode_domain_s + encode_general_s)
    count_rate = n_dom / count_inside_all_s
    lines += ["", "| count_words, biomedical text | tokens | igot s | Counter reference s | ratio |",
              "|---|---:|---:|---:|---:|",
              f"| all {cores} threads | {n_dom:,} | {words_s:.4f} | {ref_words_s:.3f} | {ref_words_s / words_s:.0f}x |",
              "", "| stage (all cores) | tokens/s | ratio |", "|---|---:|---:|",
              f"| encode_corpus (SmolLM2, HF tokenizers), domain + general | {encode_rate:,.0f} | 1 |",
              f"| count_ngrams biomedical text inside words | {count_rate:,.0f} | "
              f"{count_rate / encode_rate:.0f}x encoding's rate |"]
    lines += ["", "| memory, one count | distinct n-grams | peak tables and key buffers B / n-gram | "
              "output arrays B / n-gram | peak RSS growth B / n-gram (subprocess, VmHWM) |",
              "|---|---:|---:|---:|---:|"]
    for name, (t, stream, max_n, cross_words) in tables.items():
        out_bytes = t.offsets.nbytes + t.ids.nbytes + t.counts.nbytes
        rss = rss_delta(stream, max_n, cross_words)
        lines.append(f"| {name} | {len(t):,} | {t.peak_table_bytes / len(t):.1f} | {out_bytes / len(t):.1f} | "
                     f"{rss['delta_kib'] * 1024 / rss['distinct']:.1f} |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
