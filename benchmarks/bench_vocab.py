"""Extended tokenizer evidence (issue 4): igot vs frequency vs bpe vs Hugging Face add_tokens, one run.

    .venv/bin/python benchmarks/bench_vocab.py [--quick] [--out /tmp/igot_results/vocab.md]

SmolLM2 tokenizer; domain = HPO + GO definitions (train split), general = State of the Union + Moby-Dick
(train split). For each method the selection is made once at the largest budget and its first B entries
are written for each smaller budget B (the greedy selections are budget-independent prefixes; checked
below for the smallest budget). Reported on the held-out splits: domain and general token saving
(1 - new / base tokens), vocabulary growth, and encode throughput (bytes/s of single-threaded encode_batch on the
held-out text, median of repeats, base and extended interleaved; ratio = extended / base, G4 asks >= 0.90).
Then the code domain (CPython stdlib, general = Python docs) at one budget, and every real tokenizer type
(byte-level BPE: SmolLM2, GPT-2; SentencePiece BPE: Mistral; WordPiece: BERT-base-uncased) extended by igot
at one budget with verify=True, i.e. G2/G3 checked on every train, held-out and general document.

    .venv/bin/python benchmarks/bench_vocab.py --only model-types   # just that last table
    .venv/bin/python benchmarks/bench_vocab.py --only speed         # extend_tokenizer vs one encode pass

The speed table (issue 10) times `extend_tokenizer(budget=2000, verify=True)` against one `encode_batch`
pass of a freshly loaded base over the same documents (domain train + general train + domain held-out;
SmolLM2 on the biomedical and code corpora, Mistral and BERT on the biomedical ones),
interleaved in one process (the order alternates per repeat), after one small warm-up call that loads the
Numba selection kernels; medians of the repeats. Wall time is the goal's measure; CPU time (all threads of
the process) is printed too, as the shared 2-core box makes wall time noisy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer

from igot import data
from igot.vocab import apply_selection, extend_tokenizer

METHODS = ("igot", "frequency", "bpe", "added_tokens")
BASELINES = ("frequency", "bpe", "added_tokens")


def token_count(tok: Tokenizer, texts: list[str]) -> int:
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def throughput(base: Tokenizer, new: Tokenizer, texts: list[str], repeats: int) -> tuple[float, float]:
    """Median single-threaded encode_batch bytes/s of base and new, measured interleaved.

    Fresh copies of both, warmed alike: a tokenizer's word cache keeps the first words it saw
    (extend_tokenizer's verification fills the new one with train words). Single-threaded: on the shared
    2-core box parallel encode_batch times were bimodal, and an unchanged copy of the base measured 1.40x
    itself; single-threaded, copies agree to 1-2% (the "unchanged copy" row of the model-types table).
    """
    base, new = Tokenizer.from_str(base.to_str()), Tokenizer.from_str(new.to_str())
    n_bytes = sum(len(t.encode()) for t in texts)
    times: dict[str, list[float]] = {"base": [], "new": []}
    parallel = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by tokenizers at every call
    try:
        base.encode_batch(texts, add_special_tokens=False)
        new.encode_batch(texts, add_special_tokens=False)
        for repeat in range(repeats):
            pair = (("base", base), ("new", new))
            for name, tok in pair if repeat % 2 == 0 else pair[::-1]:  # alternate who runs first
                start = time.perf_counter()
                tok.encode_batch(texts, add_special_tokens=False)
                times[name].append(time.perf_counter() - start)
    finally:
        if parallel is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallel
    return n_bytes / statistics.median(times["base"]), n_bytes / statistics.median(times["new"])


def corpora(domain_names: tuple[str, ...], general_names: tuple[str, ...], quick: bool
            ) -> tuple[list[str], list[str], list[str], list[str]]:
    """(domain train, general train, domain held-out, general held-out) documents; --quick keeps a quarter."""
    def docs(names: tuple[str, ...], split: str) -> list[str]:
        out = []
        for name in names:
            corpus = data.load_corpus(name, split)
            out += corpus[: max(1, len(corpus) // 4)] if quick else corpus
        return out

    return (docs(domain_names, "train"), docs(general_names, "train"), docs(domain_names, "heldout"),
            docs(general_names, "heldout"))


def evaluate(domain: str, general_names: tuple[str, ...], domain_names: tuple[str, ...], budgets: list[int],
             repeats: int, quick: bool, rows: list[dict], on_row) -> None:
    base_path = data.tokenizer_path("smollm2")
    base = Tokenizer.from_file(str(base_path))
    train, general, held_domain, held_general = corpora(domain_names, general_names, quick)
    speed_text = held_domain + held_general
    base_counts = {"domain": token_count(base, held_domain), "general": token_count(base, held_general)}
    print(f"[{domain}] train {len(train):,} docs, general {len(general):,} docs; held-out base tokens: "
          f"domain {base_counts['domain']:,}, general {base_counts['general']:,}", file=sys.stderr)
    for method in METHODS:
        largest = max(budgets)
        start = time.perf_counter()
        full = extend_tokenizer(base_path, train, general, budget=largest, method=method, progress=False,
                                verify=False)
        seconds = time.perf_counter() - start
        for budget in sorted(budgets):
            if budget == largest or method == "added_tokens":
                ext = full if budget == largest else extend_tokenizer(
                    base_path, train, general, budget=budget, method=method, progress=False, verify=False)
            else:
                ext = apply_selection(base_path, full.selection, budget=budget)
                if budget == min(budgets):  # the prefix shortcut equals a fresh run at this budget
                    fresh = extend_tokenizer(base_path, train, general, budget=budget, method=method,
                                             progress=False, verify=False)
                    same = [t.token for t in fresh.new_tokens] == [t.token for t in ext.new_tokens]
                    print(f"[{domain}] {method}: budget-{budget} prefix of the budget-{largest} selection "
                          f"{'equals' if same else 'DIFFERS from'} a fresh budget-{budget} run", file=sys.stderr)
            new_counts = {"domain": token_count(ext.tokenizer, held_domain),
                          "general": token_count(ext.tokenizer, held_general)}
            base_bps, new_bps = throughput(base, ext.tokenizer, speed_text, repeats)
            rows.append({
                "domain": domain, "method": method, "budget": budget, "entries": len(ext.new_tokens),
                "domain_tokens": new_counts["domain"], "general_tokens": new_counts["general"],
                "domain_saving": 1 - new_counts["domain"] / base_counts["domain"],
                "general_saving": 1 - new_counts["general"] / base_counts["general"],
                "vocab": ext.tokenizer.get_vocab_size(with_added_tokens=True),
                "base_vocab": base.get_vocab_size(with_added_tokens=True),
                "base_mbps": base_bps / 1e6, "new_mbps": new_bps / 1e6, "speed_ratio": new_bps / base_bps,
                "tokens_per_s": new_counts["domain"] / (sum(len(t.encode()) for t in held_domain) / new_bps),
                "extend_s": seconds if budget == largest else float("nan"),
            })
            r = rows[-1]
            print(f"[{domain}] {method:>12} B={budget:>5}: +{r['entries']} entries, domain {r['domain_saving']:.2%}, "
                  f"general {r['general_saving']:.2%}, speed x{r['speed_ratio']:.3f}", file=sys.stderr)
            on_row()


def model_types(budget: int, repeats: int, quick: bool, rows: list[dict], on_row) -> None:
    """igot on every real tokenizer type, HPO+GO vs SOTU+Moby-Dick, with extend_tokenizer's own G2/G3 check."""
    train, general, held_domain, held_general = corpora(("hpo", "go"), ("sotu", "moby_dick"), quick)
    control = Tokenizer.from_file(str(data.tokenizer_path("smollm2")))
    base_bps, copy_bps = throughput(control, control, held_domain + held_general, repeats)
    rows.append({"tokenizer": "smollm2, unchanged copy (noise floor)", "model_type": "BPE", "entries": 0,
                 "domain_saving": 0.0, "general_saving": 0.0, "speed_ratio": copy_bps / base_bps,
                 "base_mbps": base_bps / 1e6, "extend_s": 0.0, "write_s": 0.0, "verified": True, "dropped": 0})
    on_row()
    for name in data.TOKENIZERS:
        base_path = data.tokenizer_path(name)
        base = Tokenizer.from_file(str(base_path))
        start = time.perf_counter()
        ext = extend_tokenizer(base_path, train, general, budget=budget, heldout=held_domain, progress=False)
        seconds = time.perf_counter() - start
        base_bps, new_bps = throughput(base, ext.tokenizer, held_domain + held_general, repeats)
        general_base, general_new = token_count(base, held_general), token_count(ext.tokenizer, held_general)
        report = ext.report
        rows.append({"tokenizer": name, "model_type": report["model_type"], "entries": report["entries_added"],
                     "domain_saving": report["tokens"]["heldout"]["saving"],
                     "general_saving": 1 - general_new / general_base, "speed_ratio": new_bps / base_bps,
                     "base_mbps": base_bps / 1e6, "extend_s": seconds, "write_s": report["timings_s"]["write"],
                     "verified": report["verified"], "dropped": report["dropped_by_verification"]})
        r = rows[-1]
        print(f"[model types] {name:>8} ({r['model_type']}): +{r['entries']} entries, held-out domain "
              f"{r['domain_saving']:.2%}, general {r['general_saving']:.2%}, speed x{r['speed_ratio']:.3f}",
              file=sys.stderr)
        on_row()


SPEED_CASES = (  # (tokenizer, corpora label, domain corpora, general corpora)
    ("smollm2", "biomedical (HPO+GO vs sotu+moby_dick)", ("hpo", "go"), ("sotu", "moby_dick")),
    ("smollm2", "code (pystdlib vs pydoc)", ("pystdlib",), ("pydoc",)),
    ("mistral", "biomedical (HPO+GO vs sotu+moby_dick)", ("hpo", "go"), ("sotu", "moby_dick")),
    ("bert", "biomedical (HPO+GO vs sotu+moby_dick)", ("hpo", "go"), ("sotu", "moby_dick")),
)


def extend_speed(repeats: int, quick: bool, rows: list[dict], on_row) -> None:
    """extend_tokenizer wall time / one encode_batch pass over the same documents, per tokenizer and corpora."""
    warm = corpora(("hpo",), ("moby_dick",), True)
    extend_tokenizer(data.tokenizer_path("smollm2"), warm[0][:500], warm[1][:2], budget=50,
                     progress=False)  # loads the Numba kernels
    for tokenizer, label, domain_names, general_names in SPEED_CASES:
        base_path = data.tokenizer_path(tokenizer)
        train, general, held_domain, _ = corpora(domain_names, general_names, quick)
        everything = train + general + held_domain
        times: dict[str, list[tuple[float, float]]] = {"encode": [], "extend": []}
        reports = []

        def encode() -> None:
            Tokenizer.from_file(str(base_path)).encode_batch(everything, add_special_tokens=False)

        def extend() -> None:
            reports.append(extend_tokenizer(base_path, train, general, budget=2000, heldout=held_domain,
                                            progress=False).report)

        for repeat in range(repeats):
            pair = (("encode", encode), ("extend", extend))
            for name, run in pair if repeat % 2 == 0 else pair[::-1]:
                wall, cpu = time.perf_counter(), time.process_time()
                run()
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
        phases = {k: statistics.median(r["timings_s"][k] for r in reports) for k in reports[0]["timings_s"]}
        ratios = [e[0] / b[0] for e, b in zip(times["extend"], times["encode"])]
        last = reports[-1]
        rows.append({"corpus": label, "tokenizer": tokenizer, "docs": len(everything),
                     "tokens": sum(v["base"] for v in last["tokens"].values()),
                     "encode_s": wall["encode"], "extend_s": wall["extend"],
                     "ratio": wall["extend"] / wall["encode"],
                     "ratio_range": (min(ratios), max(ratios)), "cpu_ratio": cpu["extend"] / cpu["encode"],
                     "phases": phases, "checked": last["checked"], "entries": last["entries_added"],
                     "verified": last["verified"] and not last["dropped_by_verification"]})
        r = rows[-1]
        print(f"[speed] {tokenizer}, {label}: encode_batch {r['encode_s']:.2f} s, extend_tokenizer {r['extend_s']:.2f} s, "
              f"ratio {r['ratio']:.2f} (CPU {r['cpu_ratio']:.2f}), phases {phases}", file=sys.stderr)
        on_row()


def speed_table(rows: list[dict]) -> str:
    header = ["corpora (budget 2,000)", "tokenizer", "documents", "base tokens", "one encode_batch pass s",
              "extend_tokenizer s", "ratio extend / encode (wall)", "per-repeat range", "ratio (CPU time)",
              "encode+count / select / write / verify s", "distinct words / whole documents checked",
              "G2/G3 verified"]
    return markdown(header, "llrrrrrrrrrl", [
        [r["corpus"], r["tokenizer"], f"{r['docs']:,}", f"{r['tokens']:,}", f"{r['encode_s']:.2f}", f"{r['extend_s']:.2f}",
         f"{r['ratio']:.2f}", f"{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}", f"{r['cpu_ratio']:.2f}",
         " / ".join(f"{r['phases'].get(k, 0.0):.2f}" for k in ("encode_count", "select", "write", "verify")),
         f"{r['checked']['distinct_words']:,} / {r['checked']['whole_documents']:,}",
         "yes" if r["verified"] else "NO"]
        for r in rows])


def markdown(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A markdown table from header names, one alignment letter per column ("l" or "r") and rows of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def model_types_table(rows: list[dict]) -> str:
    header = ["tokenizer", "model type", "entries", "held-out domain saving", "held-out general saving",
              "throughput ratio (new/base)", "encode MB/s (base)", "G2/G3 verified on all corpora",
              "extend s (of which writing)"]
    return markdown(header, "llrrrrrlr", [
        [r["tokenizer"], r["model_type"], f"{r['entries']:,}", f"{r['domain_saving']:.2%}",
         f"{r['general_saving']:.2%}", f"{r['speed_ratio']:.3f}", f"{r['base_mbps']:.2f}",
         "yes" if r["verified"] and not r["dropped"] else "NO", f"{r['extend_s']:.1f} ({r['write_s']:.1f})"]
        for r in rows])


def main_table(rows: list[dict]) -> str:
    header = ["domain", "method", "budget", "entries", "held-out domain saving", "held-out general saving",
              "vocab", "encode MB/s (base)", "throughput ratio (new/base)", "extend s"]
    return markdown(header, "llrrrrrrrr", [
        [r["domain"], r["method"], f"{r['budget']:,}", f"{r['entries']:,}", f"{r['domain_saving']:.2%}",
         f"{r['general_saving']:.2%}", f"{r['base_vocab']:,} → {r['vocab']:,}",
         f"{r['new_mbps']:.2f} ({r['base_mbps']:.2f})", f"{r['speed_ratio']:.3f}",
         "— (prefix)" if r["extend_s"] != r["extend_s"] else f"{r['extend_s']:.1f}"]
        for r in rows])


def versus_table(rows: list[dict]) -> str:
    """igot against the best baseline per (domain, budget): ratio = baseline held-out tokens / igot's."""
    header = ["domain", "budget", "igot domain saving", "best baseline", "its saving",
              "ratio (baseline / igot held-out domain tokens)", "igot general saving", "baseline general saving"]
    cells = []
    for key in sorted({(r["domain"], r["budget"]) for r in rows}):
        group = {r["method"]: r for r in rows if (r["domain"], r["budget"]) == key}
        if "igot" not in group or not any(m in group for m in BASELINES):
            continue
        igot = group["igot"]
        best = min((group[m] for m in BASELINES if m in group), key=lambda r: r["domain_tokens"])
        cells.append([key[0], f"{key[1]:,}", f"{igot['domain_saving']:.2%}", best["method"],
                      f"{best['domain_saving']:.2%}", f"{best['domain_tokens'] / igot['domain_tokens']:.4f}",
                      f"{igot['general_saving']:.2%}", f"{best['general_saving']:.2%}"])
    return markdown(header, "lrrlrrrr", cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of each corpus, budgets 500/2000")
    parser.add_argument("--repeats", type=int, default=7, help="throughput repeats (median)")
    parser.add_argument("--out", default="/tmp/igot_results/vocab.md", help="markdown results file")
    parser.add_argument("--only", choices=("methods", "model-types", "speed"), default=None, help="run one part")
    parser.add_argument("--speed-repeats", type=int, default=3, help="repeats of the speed table (median)")
    args = parser.parse_args()
    budgets = [500, 2000] if args.quick else [500, 2000, 8000]
    command = "python benchmarks/bench_vocab.py" + (" --quick" if args.quick else "") + \
        (f" --only {args.only}" if args.only else "")
    start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    type_rows: list[dict] = []
    speed_rows: list[dict] = []

    def write(final: bool) -> None:  # after every row, so a killed run still leaves its measured rows
        status = f"{time.perf_counter() - start:.0f} s" + ("" if final else ", partial")
        parts = [main_table(rows), versus_table(rows)] if rows else []
        parts += [model_types_table(type_rows)] if type_rows else []
        parts += [speed_table(speed_rows)] if speed_rows else []
        text = f"`{command}` ({status})\n\n" + "\n\n".join(parts) + "\n"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(out)
        if final:
            print(text)

    if args.only in (None, "methods"):
        evaluate("biomedical (HPO+GO vs sotu+moby_dick)", ("sotu", "moby_dick"), ("hpo", "go"), budgets,
                 args.repeats, args.quick, rows, lambda: write(False))
        evaluate("code (pystdlib vs pydoc)", ("pydoc",), ("pystdlib",), [2000], args.repeats, args.quick, rows,
                 lambda: write(False))
    if args.only in (None, "model-types"):
        model_types(2000, args.repeats, args.quick, type_rows, lambda: write(False))
    if args.only in (None, "speed"):
        extend_speed(args.speed_repeats, args.quick, speed_rows, lambda: write(False))
    write(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
