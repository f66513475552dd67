"""Benchmark igot.scoring on the real biomedical corpus (SmolLM2 tokenizer).

1. Numba vs the pure-Python oracle (igot/_scoring_reference.py), same algorithm and same picks (the full
   corpus, 500 entries; --quick: 1500 documents, 200 entries).
2. Selection time on the full corpus (HPO + GO train) per method, with the number of candidates, and on a
   synthetic table sized past 1M candidates (real corpora here have < 100k distinct pairs).
3. Held-out token saving (HPO + GO held-out) of igot / ig_only / frequency / bpe at 500 / 2000 / 8000.
4. IGOT_τ: the saving curve of igot on a split held out from the train documents (every 10th), where τ is
   chosen ("auto" = the knee, and fixed τ values), and what each cut saves on the real held-out split.

Usage: .venv/bin/python benchmarks/bench_scoring.py [--quick] [--reference-only] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from types import SimpleNamespace

from igot import _scoring_reference as ref
from igot import data, scoring
from igot.corpus import encode_corpus
from igot.counting import count_words

BUDGETS = (500, 2000, 8000)
METHODS = ("igot", "ig_only", "frequency", "bpe")


def word_table(tokenizer, docs):
    enc = encode_corpus(tokenizer, docs, progress=False)
    return count_words(np.asarray(enc.ids), np.asarray(enc.word_starts), np.asarray(enc.doc_starts))


def words_of(table) -> list[list[int]]:
    return [table.ids[table.offsets[i]:table.offsets[i + 1]].tolist() for i in range(len(table.counts))]


def median_time(fn, repeats: int):
    """(median wall seconds, median CPU seconds of this process, last result)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def synthetic_table(n_words: int, seed: int = 0) -> SimpleNamespace:
    """Words of 2..8 ids drawn from a Zipf-like law over the SmolLM2 id range (top id about 1.7%)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, 9, n_words)
    p = 1.0 / (np.arange(49152) + 10.0) ** 1.1
    ids = rng.choice(49152, int(lens.sum()), p=p / p.sum()).astype(np.uint32)
    offsets = np.zeros(n_words + 1, np.int64)
    offsets[1:] = np.cumsum(lens)
    return SimpleNamespace(offsets=offsets, ids=ids, counts=np.sort(rng.zipf(2.0, n_words))[::-1].astype(np.int64))


def tau_section(tok, train: list[str], general, heldout, n_base: int, top: int) -> list[str]:
    """IGOT_τ on the biomedical corpus: the curve it reads and the cut it makes, as markdown lines."""
    fit = word_table(tok, [d for i, d in enumerate(train) if i % 10])
    split = word_table(tok, train[::10])
    sel = scoring.select_tokens(fit, top, n_base=n_base, general=general, heldout=split)
    lines = ["IGOT_τ (method igot; selection on 90% of the train documents, τ read on the other 10%, every 10th;",
             "saving reported on that split and on the real held-out split; marginal = split saving per entry",
             "over the last 50 entries, in points per 1,000 entries; τ is saving per entry as a fraction, so",
             "τ = 1e-5 is 1 point per 1,000 entries)", "",
             "| entries | split saving % | held-out saving % | marginal (pts / 1k entries) |", "|---:|---:|---:|---:|"]
    full = sel.curve
    for n in sorted({100, 250, 500, 1000, 2000, 4000, 6000, top}):
        if n <= len(sel):
            cut = scoring.select_tokens(fit, n, n_base=n_base, general=general)
            marginal = (full[n - 1] - full[max(n - 51, 0)]) / min(50, n - 1) * 1000 * 100
            lines.append(f"| {n:,} | {100 * full[n - 1]:.3f} | {100 * scoring.token_saving(heldout, cut):.3f} | "
                         f"{marginal:.3f} |")
    lines += ["", "| τ | entries kept | split saving % | held-out saving % |", "|---|---:|---:|---:|"]
    for tau in ("auto", 2e-5, 1e-5, 5e-6):
        cut = scoring.select_tokens(fit, top, n_base=n_base, general=general, heldout=split, tau=tau)
        lines.append(f"| {tau if tau == 'auto' else f'{tau:g}'} (τ = {cut.tau:.2e}) | {len(cut):,} | "
                     f"{100 * cut.curve[-1]:.3f} | {100 * scoring.token_saving(heldout, cut):.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller subset, budgets up to 2000, 1 repeat")
    parser.add_argument("--reference-only", action="store_true", help="only part 1 (Numba against Python)")
    parser.add_argument("--out", default=None, help="also write the tables (markdown) here")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    budgets = BUDGETS[:2] if args.quick else BUDGETS
    command = ("benchmarks/bench_scoring.py" + (" --quick" if args.quick else "")
               + (" --reference-only" if args.reference_only else ""))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(data.tokenizer_path("smollm2")))
    n_base = tok.get_vocab_size()
    train = data.load_corpus("hpo", "train") + data.load_corpus("go", "train")
    domain = word_table(tok, train)
    heldout = word_table(tok, data.load_corpus("hpo", "heldout") + data.load_corpus("go", "heldout"))
    general = word_table(tok, data.load_corpus("sotu", "all") + data.load_corpus("moby_dick", "all"))
    scoring.select_tokens(domain, 10, n_base=n_base, heldout=heldout)  # compile / load the kernel cache
    scoring.select_tokens(domain, 10, n_base=n_base, method="frequency", heldout=heldout)
    lines = [f"Command: `.venv/bin/python {command}`", ""]

    # 1. Numba vs pure Python, same algorithm (a merge updates the pairs of the words it touches), same picks
    subset = word_table(tok, train[:1500]) if args.quick else domain
    sub_general = word_table(tok, data.load_corpus("sotu", "all")[:40]) if args.quick else general
    budget = 200 if args.quick else 500
    _, t_numba, sel = median_time(lambda: scoring.select_tokens(subset, budget, n_base=n_base, general=sub_general), repeats)
    _, t_py, out = median_time(lambda: ref.select_pairs(
        words_of(subset), subset.counts.astype(float), subset.counts, words_of(sub_general), sub_general.counts,
        None, None, n_base, budget, scoring._kernels().PHI_IGOT, None, 0.5, 2.0, None), repeats)
    same = [tuple(m) for m in sel.merges.tolist()] == [tuple(int(x) for x in m) for m in out["merges"]]
    lines += [
        f"Numba vs pure Python (method igot, budget {budget}, {len(subset.counts)} words, "
        f"{sel.n_candidates} candidate pairs; same picks: {same}; median of {repeats}; machine load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", "",
        "| version | CPU time (s) | ratio (python / numba) |", "|---|---|---|",
        f"| pure Python (igot/_scoring_reference.py) | {t_py:.3f} | 1.0 |",
        f"| Numba (igot.scoring) | {t_numba:.4f} | {t_py / t_numba:.1f}x |", "",
    ]
    if not same:
        raise SystemExit("Numba and Python picks differ: " + "\n".join(lines))
    if args.reference_only:
        print("\n".join(lines))
        return

    # 2. + 3. full corpus: selection time and held-out saving
    top = max(budgets)
    rows, savings = [], {}
    for method in METHODS:
        wall, cpu, sel = median_time(lambda: scoring.select_tokens(
            domain, top, n_base=n_base, method=method, general=general, heldout=heldout), repeats)
        rows.append(f"| {method} | {sel.n_candidates:,} | {top} | {cpu:.2f} | {wall:.2f} |")
        savings[method] = [100 * sel.curve[min(b, len(sel)) - 1] for b in budgets]
    big = synthetic_table(150_000 if args.quick else 600_000)
    for method in ("igot", "frequency"):
        wall, cpu, sel = median_time(lambda: scoring.select_tokens(big, top, n_base=n_base, method=method, max_n=4), 1)
        rows.append(f"| {method} (synthetic, {big.ids.size:,} symbols, max_n=4) | {sel.n_candidates:,} | {top} "
                    f"| {cpu:.2f} | {wall:.2f} |")
    n_tokens = int(np.sum(np.diff(domain.offsets) * domain.counts))
    lines += [
        f"Selection on the full corpus (HPO + GO train: {n_tokens:,} tokens, {len(domain.counts):,} distinct "
        f"pre-tokens; general SOTU + Moby-Dick), median of {repeats}; machine load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall time includes waiting for a core)", "",
        "| method | candidates | entries | CPU time (s) | wall time (s) |", "|---|---|---|---|---|", *rows, "",
        "Held-out token saving, % (HPO + GO held-out split; 1 - tokens_new / tokens_base via apply_merges)", "",
        "| budget | " + " | ".join(METHODS) + " | best baseline / igot |",
        "|---" * (len(METHODS) + 2) + "|",
    ]
    for i, b in enumerate(budgets):
        best = max(savings["frequency"][i], savings["bpe"][i])
        lines.append(f"| {b} | " + " | ".join(f"{savings[m][i]:.3f}" for m in METHODS)
                     + f" | {best / savings['igot'][i]:.4f} |")
    lines += ["", *tau_section(tok, train, general, heldout, n_base, top)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
