"""Benchmark igot synth on the real SmolLM2-135M-Instruct: generation throughput of batched, left-padded
generate (batch_size documents per call) against one document per call on the same documents, the filter
counts of the run, the first replies exactly as generated with what became of them, and the first kept
lines exactly as written; then igot.synth.Deduplicator (MinHash LSH + exact confirmation) against the
all-pairs exact-Jaccard reference on synthetic pairs (same decisions required).

    flock /tmp/igot-bench.lock .venv/bin/python benchmarks/bench_synth.py [--quick] [--docs 48] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from igot.data import load_corpus
from igot.synth import Deduplicator, Sampling, load_generator, load_template, synthesize


class Recording:
    """Wraps a generator and keeps every reply, per document, in call order."""

    def __init__(self, generator):
        self.generator, self.name, self.replies = generator, generator.name, []

    def __call__(self, conversations, n, sampling):
        out = self.generator(conversations, n, sampling)
        self.replies += out
        return out


def generation(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    docs = load_corpus("hpo", "train")[:args.docs]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    generator = Recording(load_generator(seed=sampling.seed))
    load_s = time.perf_counter() - start
    print(f"SmolLM2-135M-Instruct (float32) loaded in {load_s:.1f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(docs)} HPO train documents, {args.per_doc} replies each, "
          f"max_new_tokens {sampling.max_new_tokens}, temperature {sampling.temperature}, top_p {sampling.top_p}, "
          f"top_k {sampling.top_k}; held out: hpo:heldout (contamination guard)\n")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "docs.jsonl"
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        out = Path(args.out) if args.out else Path(tmp) / "qa.jsonl"
        if out.exists():
            sys.exit(f"--out {out} exists; pass a new file (the benchmark measures a fresh run)")
        batched = synthesize(src, out, generator=generator, heldout=["hpo:heldout"], per_doc=args.per_doc,
                             batch_size=args.batch_size, sampling=sampling, progress=False)
        first_replies = generator.replies[:3]
        single_docs = docs[:args.compare_docs]
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in single_docs), encoding="utf-8")
        single = synthesize(src, Path(tmp) / "single.jsonl", generator=generator, per_doc=args.per_doc,
                            batch_size=1, sampling=sampling, progress=False)
        kept = out.read_text(encoding="utf-8").splitlines()

    print("| documents per generate call | documents | replies | tokens generated | seconds | tokens/s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    base = single.tokens_per_s
    for label, s in ((f"1 (baseline, the first {len(single_docs)} documents)", single),
                     (f"{args.batch_size} (igot synth)", batched)):
        print(f"| {label} | {s.used} | {s.generated} | {s.tokens:,} | {s.generate_s:.1f} | "
              f"{s.tokens_per_s:.1f} | {s.tokens_per_s / base:.2f}x |")
    print(f"\nsummary of the batched run (wall {batched.wall_s:.0f} s, model load excluded):\n")
    print(batched.format())

    template = load_template("science")
    print("\nthe first documents' replies, exactly as generated (the reply prefix "
          f"{template.reply_prefix!r} is the template's), and whether a line was kept:\n")
    kept_pairs = {(json.loads(line)["question"], json.loads(line)["answer"]) for line in kept}
    for doc, replies in zip(docs, first_replies):
        print(f"document: {doc!r}")
        for reply in replies:
            pair = template.parse(reply.text) if reply.finished else None
            fate = "kept" if pair in kept_pairs else "dropped"
            print(f"  [{fate}, {reply.n_tokens} tokens, {'finished' if reply.finished else 'unfinished'}] "
                  f"{template.reply_prefix + reply.text!r}")
    print("\nthe first reply each filter dropped, exactly as generated:\n")
    for reason, reply in batched.examples.items():
        print(f"  {reason}: {reply!r}")
    print(f"\nthe first {min(args.samples, len(kept))} lines of the output, exactly as written:\n")
    for line in kept[:args.samples]:
        print(line)


def _pairs(n: int, seed: int) -> list[list[str]]:
    """n word lists like QA pairs (15-60 words): 10% exact and 30% edited (1-4 words replaced) copies of an
    earlier one."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    pairs: list[list[str]] = []
    while len(pairs) < n:
        draw = rng.random()
        if pairs and draw < 0.4:
            words = list(rng.choice(pairs))
            for _ in range(rng.randint(1, 4) if draw >= 0.1 else 0):
                words[rng.randrange(len(words))] = rng.choice(vocab)
        else:
            words = [rng.choice(vocab) for _ in range(rng.randint(15, 60))]
        pairs.append(words)
    return pairs


def all_pairs_reference(pairs: list[list[str]], threshold: float) -> list[str | None]:
    """Each pair against every kept one: exact word match, else exact 3-gram-shingle Jaccard."""
    kept: list[tuple[list[str], set]] = []
    decisions: list[str | None] = []
    for words in pairs:
        shingles = {tuple(words[i:i + 3]) for i in range(len(words) - 2)}
        if any(words == k for k, _ in kept):
            decisions.append("exact_duplicate")
        elif any(len(shingles & s) / len(shingles | s) >= threshold for _, s in kept):
            decisions.append("near_duplicate")
        else:
            decisions.append(None)
            kept.append((words, shingles))
    return decisions


def dedup(args: argparse.Namespace) -> None:
    print("\n| near-duplicate detection | pairs | near duplicates | exact duplicates | seconds | pairs/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in args.dedup_sizes:
        pairs = _pairs(n, seed=n)
        start = time.perf_counter()
        want = all_pairs_reference(pairs, 0.7)
        ref_s = time.perf_counter() - start
        start = time.perf_counter()
        index = Deduplicator(0.7)
        got = [index.check(" ".join(w[:8]), " ".join(w[8:])) for w in pairs]
        igot_s = time.perf_counter() - start
        if got != want:
            differ = sum(g != w for g, w in zip(got, want))
            sys.exit(f"Deduplicator disagrees with the all-pairs reference on {differ} of {n} pairs")
        for label, seconds in (("all-pairs exact Jaccard (baseline)", ref_s), ("igot Deduplicator", igot_s)):
            print(f"| {label} | {n:,} | {want.count('near_duplicate'):,} | {want.count('exact_duplicate'):,} | "
                  f"{seconds:.2f} | {n / seconds:,.0f} | {ref_s / seconds:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 documents, 64 new tokens, small dedup sizes")
    parser.add_argument("--docs", type=int, default=48, help="HPO train documents of the batched run")
    parser.add_argument("--compare-docs", type=int, default=8, help="of those, generated one per call (baseline)")
    parser.add_argument("--per-doc", type=int, default=2, help="replies per document")
    parser.add_argument("--batch-size", type=int, default=8, help="documents per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=Sampling().max_new_tokens)
    parser.add_argument("--samples", type=int, default=6, help="output lines printed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="keep the batched run's output here (a new .jsonl)")
    parser.add_argument("--no-generation", action="store_true", help="only the dedup table")
    args = parser.parse_args()
    args.dedup_sizes = [500, 2000] if args.quick else [2000, 8000]
    if args.quick:
        args.docs, args.compare_docs, args.max_new_tokens = 8, 2, 64
    if not args.no_generation:
        generation(args)
    dedup(args)


if __name__ == "__main__":
    main()
