"""`igot demo`: the whole pipeline on the fetched real data (`igot data fetch`).

Biomedical domain (HPO + GO definitions) against general English (State of the Union + Moby-Dick) on
SmolLM2-135M: count the domain's n-grams (C++), choose `budget` entries by information gain (Numba),
write the extended tokenizer, grow the model (new rows from their pieces), and compare held-out token
counts and bits per byte of the base and the grown model before any training.
"""
from __future__ import annotations

import time
from pathlib import Path

DOMAIN = ("hpo", "go")
GENERAL = ("sotu", "moby_dick")


def _texts(names: tuple[str, ...], split: str) -> list[str]:
    from .data import load_corpus

    return [doc for name in names for doc in load_corpus(name, split)]


def run(out: str | Path, *, budget: int = 2000, eval_docs: int = 100, progress: bool = True) -> dict:
    """Run the demo and print its tables; the extended tokenizer and report go to `out`.

    Args:
        out: folder for the extended tokenizer (tokenizer.json, HF side files, igot_report.json).
        budget: new vocabulary entries.
        eval_docs: held-out domain documents used for the bits-per-byte comparison (CPU time grows with it).
        progress: show progress bars.
    Returns:
        A dict of the figures printed: counting, token savings, bits per byte of base and grown model.
    Raises:
        FileNotFoundError: the data is not fetched (run `igot data fetch`).
    """
    import numpy as np

    from .corpus import encode_corpus, load_tokenizer
    from .counting import count_ngrams
    from .data import smollm2
    from .vocab import extend_tokenizer

    model_dir = smollm2()
    base = load_tokenizer(model_dir)
    domain, general, heldout = _texts(DOMAIN, "train"), _texts(GENERAL, "train"), _texts(DOMAIN, "heldout")
    print(f"domain {len(domain):,} docs (HPO + GO train), general {len(general):,} docs (SOTU + Moby-Dick), "
          f"held-out domain {len(heldout):,} docs; base tokenizer SmolLM2 ({base.get_vocab_size():,} tokens)")

    start = time.perf_counter()
    corpus = encode_corpus(base, domain, progress=progress)
    encoded = time.perf_counter()
    table = count_ngrams(corpus.ids, corpus.word_starts, corpus.doc_starts, max_n=8, min_count=2)
    counted = time.perf_counter()
    print(f"\n1. count: {corpus.n_tokens:,} tokens encoded in {encoded - start:.2f} s, "
          f"{len(table):,} n-grams (2..8 tokens inside a word, count >= 2) counted in {counted - encoded:.3f} s "
          f"({corpus.n_tokens / (counted - encoded):,.0f} tokens/s); the most frequent of 3+ tokens:")
    lengths = np.diff(table.offsets)
    shown = 0
    for i in range(len(table)):
        if lengths[i] >= 3 and shown < 8:
            print(f"   {int(table.counts[i]):>7,}  {base.decode(list(table.ngram(i)))!r}")
            shown += 1

    start = time.perf_counter()
    ext = extend_tokenizer(model_dir, domain, general, budget=budget, method="igot", heldout=heldout,
                           progress=progress)
    folder = ext.save(out)
    tokens = ext.report["tokens"]
    print(f"\n2. extend: {ext.report['entries_added']:,} entries chosen (method igot) in "
          f"{time.perf_counter() - start:.1f} s, written as BPE merges to {folder}")
    print("\n| corpus | base tokens | extended tokens | saving |\n|---|---:|---:|---:|")
    for name, row in tokens.items():
        print(f"| {name} | {row['base']:,} | {row['new']:,} | {row['saving']:.2%} |")
    top = sorted(ext.new_tokens, key=lambda t: -t.score)[:12]
    print("new tokens: " + ", ".join(repr(ext.tokenizer.decode([t.id])) for t in top))

    figures = {"tokens": tokens, "entries_added": ext.report["entries_added"]}
    if eval_docs:
        figures["bpb"] = _compare_bpb(model_dir, base, ext, heldout[:eval_docs])
    return figures


def _compare_bpb(model_dir: Path, base, ext, texts: list[str]) -> dict[str, float]:
    """Bits per byte of SmolLM2 and of its grown copy (mean init) on the same held-out texts."""
    import torch
    from transformers import AutoModelForCausalLM

    from .metrics import bits_per_byte
    from .model import extend_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    bos = model.config.bos_token_id if model.config.bos_token_id is not None else 0
    start = time.perf_counter()
    before = bits_per_byte(model, base, texts, bos_id=bos, max_tokens=256)
    extend_model(model, base, ext, init="mean")
    after = bits_per_byte(model, ext.tokenizer, texts, bos_id=bos, max_tokens=256)
    print(f"\n3. grow SmolLM2-135M to {model.config.vocab_size:,} rows (FVT mean init, padding masked) and "
          f"evaluate {len(texts)} held-out domain documents ({time.perf_counter() - start:.1f} s):")
    print("\n| model | tokens | bytes/token | bits per byte |\n|---|---:|---:|---:|")
    for name, row in (("SmolLM2 base", before), ("SmolLM2 + igot (before CPT)", after)):
        print(f"| {name} | {int(row['tokens']):,} | {row['bytes_per_token']:.2f} | {row['bpb']:.4f} |")
    print("The grown model reads the same text in fewer tokens; continued pretraining (not in igot yet) "
          "is what teaches the new rows.")
    return {"base": before["bpb"], "extended": after["bpb"]}
