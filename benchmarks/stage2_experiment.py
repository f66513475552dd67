"""Llama-3-SynE's stage II in miniature: continued pretraining of SmolLM2-135M with and without synthetic QA,
at equal tokens, judged on held-out domain bits per byte, general bits per byte (forgetting) and the
ontology benchmark of igot.eval.

    flock /tmp/igot-bench.lock .venv/bin/python benchmarks/stage2_experiment.py --preset cpu  # ~40 min, loaded box
    .venv/bin/python benchmarks/stage2_experiment.py --preset smoke   # minutes: every part runs

1. synth: the cached SmolLM2-135M-Instruct turns the first HPO and GO *train* definitions (in turn) into
   question-answer pairs (igot.synth.synthesize, science template, 2 replies per document, default sampling),
   with all of hpo:heldout and go:heldout as the contamination guard.
2. train: two `igot train` runs of SmolLM2-135M from the same weights, seed, step count and tokens, separator
   <|endoftext|>; they differ only in the mixture of their one stage:
     synthetic  {domain 0.7, general 0.1, synthetic 0.2}   (Llama-3-SynE's 1 : 7 : 2 shape)
     control    {domain 0.9, general 0.1}                  (the synthetic share given back to its source text)
   The control keeps the general share at exactly 0.1, so both runs see the same general tokens (forgetting
   compares like for like) and the only change is whether 20% of the tokens are QA written from domain
   definitions or the definitions themselves. The domain stream is seeded by the source's name, so both runs
   read the domain documents in the same order (the control simply reads further).
3. evaluate: the base model and both runs on the same texts, one document and one question at a time so the
   differences get paired standard errors: held-out bits per byte per document (igot.metrics.bits_per_byte on
   HPO + GO held-out definitions, and on SOTU + Moby-Dick held-out text cut to 2,000 characters) and the
   ontology multiple choice per question (igot.eval.ontology_benchmark on ontology_questions(n, seed=0), what
   `igot eval --bench ontology --questions n --bos '<|endoftext|>'` scores in batches).

torch runs with one thread by default (--threads): on the shared 2-core box at load 6, 16 ontology questions
took 18-35 s with 1 thread and 66-96 s with 2 (back to back), the trap bench_synth.py measured for generation.
Writes <out>/report.json and <out>/table.md; a second call reuses the QA file, finished runs and evaluations.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from cpt_experiment import run_arm

from igot.demo import DOMAIN, SEPARATOR, heldout_files, run_config
from igot.eval import write_result

PRESETS = {
    # sizes for the loaded 2-core box (load 6): generation ~34 tokens/s, training ~45 tokens/s, one forward
    # token ~1/130 s; the QA file holds more text than the synthetic share reads, so nothing repeats
    "cpu": dict(docs=96, per_doc=2, max_new_tokens=256, tokens=32_768, seq_len=256, batch_tokens=1024, lr=5e-4,
                domain_docs=256, general_docs=24, max_tokens=256, questions=100),
    "smoke": dict(docs=8, per_doc=2, max_new_tokens=128, tokens=2048, seq_len=128, batch_tokens=1024, lr=5e-4,
                  domain_docs=16, general_docs=4, max_tokens=128, questions=8),
}
ARMS = {"control": {"domain": 0.9, "general": 0.1}, "synthetic": {"domain": 0.7, "general": 0.1, "synthetic": 0.2}}
HELDOUT = [f"{name}:heldout" for name in DOMAIN]


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def synthesize_qa(out: Path, p: dict) -> dict:
    """The QA source: igot synth over the first HPO and GO train documents in turn (resumes a cut run)."""
    from igot.data import load_corpus
    from igot.synth import Sampling, synthesize

    docs = [doc for pair in zip(*(load_corpus(name, "train") for name in DOMAIN)) for doc in pair][:p["docs"]]
    sources = out / "data" / "synth_sources.jsonl"
    if not sources.is_file():
        sources.parent.mkdir(parents=True, exist_ok=True)
        tmp = sources.with_name(f".{sources.name}.tmp")
        tmp.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        os.replace(tmp, sources)
    qa, summary_file = out / "qa.jsonl", out / "synth.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    load_before = _load()
    summary = synthesize(sources, qa, heldout=HELDOUT, per_doc=p["per_doc"], batch_size=8,
                         sampling=Sampling(max_new_tokens=p["max_new_tokens"]), progress=False)
    pairs = [json.loads(line) for line in qa.read_text(encoding="utf-8").splitlines()]
    result = {"summary": summary.format(), "kept": len(pairs), "replies": summary.generated,
              "tokens_generated": summary.tokens, "generate_s": summary.generate_s,
              "tokens_per_s": summary.tokens_per_s, "wall_s": summary.wall_s, "dropped": summary.dropped,
              "documents": len(docs), "resumed_with_pairs": summary.existing_pairs, "load": [load_before, _load()],
              "samples": [{"question": r["question"], "answer": r["answer"]} for r in pairs[:4]]}
    write_result(result, summary_file)
    return result


def train_arm(name: str, out: Path, p: dict, model_dir: str, qa: Path) -> dict:
    """One igot train run (reused when finished), summarised with its tokens per source and the box's load."""
    summary_file = out / f"train_{name}.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    cfg = run_config(model_dir, out / "runs" / name, tokenizer=None, domain_bytes=0, heldout={}, seq_len=p["seq_len"],
                     batch_tokens=p["batch_tokens"], micro_batch_tokens=p["batch_tokens"], lr=p["lr"], eval_docs=0,
                     stages=[{"tokens": p["tokens"], "weights": ARMS[name]}])
    if "synthetic" in ARMS[name]:
        cfg["data"]["sources"]["synthetic"] = [str(qa)]
    load_before = _load()
    summary = run_arm(name, out, cfg)
    metrics = (out / "runs" / name / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    steps = [r for r in map(json.loads, metrics) if r.get("event") is None]
    summary["tokens_by_source"] = steps[-1]["tokens_by_source"]
    summary["load"] = [load_before, _load()]
    write_result(summary, summary_file)
    return summary


def score(model_dir: Path | str, texts: dict[str, list[str]], questions: list[dict], p: dict, cache: Path) -> dict:
    """Per-document bits and bytes of each held-out set and per-question hits (None: not scorable), cached."""
    weights = Path(model_dir) / "config.json"  # a retrained run is scored again
    key = {"docs": {k: len(v) for k, v in texts.items()}, "max_tokens": p["max_tokens"], "questions": len(questions),
           "model": str(model_dir), "mtime_ns": weights.stat().st_mtime_ns}
    if cache.is_file() and (cached := json.loads(cache.read_text()))["key"] == key:
        return cached
    import torch
    from transformers import AutoModelForCausalLM

    from igot.corpus import load_tokenizer
    from igot.eval import ontology_benchmark
    from igot.metrics import bits_per_byte

    start, load_before = time.perf_counter(), _load()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = load_tokenizer(model_dir)
    bos_id = tok.token_to_id(SEPARATOR)
    docs = {}
    for name, group in texts.items():
        docs[name] = []
        for text in group:
            r = bits_per_byte(model, tok, [text], bos_id=bos_id, max_tokens=p["max_tokens"])
            docs[name].append([r["nll_nats"] / math.log(2), r["bytes"]])
    bpb_s = time.perf_counter() - start
    hits: list[int | None] = []
    for question in questions:
        try:
            hits.append(int(ontology_benchmark(model, tok, [question], bos_id=bos_id)["accuracy"]))
        except ValueError:  # the tokenizer merges across "name:" and the choice: skipped, as igot eval does
            hits.append(None)
    result = {"key": key, "docs": docs, "hits": hits, "bpb_s": bpb_s, "ontology_s": time.perf_counter() - start - bpb_s,
              "load": [load_before, _load()]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_result(result, cache)
    return result


def _ratio(docs: list[list[float]]) -> tuple[float, list[float]]:
    """Sum of bits / sum of bytes, and each document's linearised contribution to its error (delta method)."""
    bits, nbytes = sum(b for b, _ in docs), sum(y for _, y in docs)
    value = bits / nbytes
    return value, [(b - value * y) / nbytes for b, y in docs]


def bpb(docs: list[list[float]], minus: list[list[float]] | None = None) -> tuple[float, float]:
    """Bits per byte of [bits, bytes] per document and its standard error over documents; with `minus` (the
    same documents under another model), the difference of the two and its paired standard error."""
    value, z = _ratio(docs)
    if minus is not None:
        other, z_other = _ratio(minus)
        value, z = value - other, [a - b for a, b in zip(z, z_other)]
    n = len(z)
    return value, math.sqrt(n / (n - 1) * sum(v * v for v in z)) if n > 1 else float("nan")


def accuracy(hits: list[int | None], minus: list[int | None] | None = None) -> tuple[float, float, int]:
    """Mean hit rate and its standard error over questions; with `minus`, the paired difference."""
    pairs = [(a, b) for a, b in zip(hits, minus or [0] * len(hits)) if a is not None and b is not None]
    values = [a - b for a, b in pairs]
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan"), n


def tables(preset: str, p: dict, synth: dict, runs: dict, scores: dict, texts: dict, questions: list,
           load_start: str) -> list[str]:
    """The markdown report: the command, the QA source, the results with paired differences, the times."""
    import torch

    labels = {"base": "SmolLM2-135M before training", "control": "control {domain 0.9, general 0.1}",
              "synthetic": "synthetic {domain 0.7, general 0.1, synthetic 0.2}"}
    resumed = (f" (this call; {synth['resumed_with_pairs']:,} pairs came from an interrupted earlier one)"
               if synth["resumed_with_pairs"] else "")
    lines = [f"`flock /tmp/igot-bench.lock .venv/bin/python benchmarks/stage2_experiment.py --preset {preset}` "
             f"(torch threads {torch.get_num_threads()}; load average {load_start} at the start, {_load()} at the "
             "end)\n",
             f"QA source: {synth['kept']:,} pairs kept of {synth['replies']:,} replies from {synth['documents']:,} "
             f"HPO + GO train documents, {synth['tokens_generated']:,} tokens generated at "
             f"{synth['tokens_per_s']:.1f} tokens/s{resumed}\n",
             "| model | tokens (domain / general / synthetic) | train time | domain bpb | general bpb | ontology |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, s in scores.items():
        run, tokens, took = runs.get(name), "0", "-"
        if run:
            split = " / ".join(f"{run['tokens_by_source'].get(k, 0):,}" for k in ("domain", "general", "synthetic"))
            tokens, took = f"{run['tokens']:,} ({split})", f"{run['train_s']:.0f} s"
        (d, d_se), (g, g_se) = bpb(s["docs"]["domain"]), bpb(s["docs"]["general"])
        acc, acc_se, n = accuracy(s["hits"])
        lines.append(f"| {labels[name]} | {tokens} | {took} | {d:.4f} ± {d_se:.4f} | {g:.4f} ± {g_se:.4f} | "
                     f"{acc:.1%} ± {acc_se:.1%} (n={n}) |")
    for a, b in (("synthetic", "control"), ("control", "base"), ("synthetic", "base")):
        (d, d_se), (g, g_se) = (bpb(scores[a]["docs"][k], scores[b]["docs"][k]) for k in ("domain", "general"))
        acc, acc_se, n = accuracy(scores[a]["hits"], scores[b]["hits"])
        lines.append(f"| {a} − {b} (paired) | | | {d:+.4f} ± {d_se:.4f} | {g:+.4f} ± {g_se:.4f} | "
                     f"{acc:+.1%} ± {acc_se:.1%} |")
    lines.append(f"\nHeld-out: {len(texts['domain'])} HPO + GO definitions, {len(texts['general'])} SOTU + Moby-Dick "
                 f"passages (2,000 characters, first {p['max_tokens']} tokens); ontology: {len(questions)} questions "
                 "(seed 0). ± is one standard error over documents / questions; differences are paired.\n")
    # each part's time and load as recorded when it ran (a resumed call reuses them)
    parts = [("synth (model load included)", f"{synth['wall_s']:.0f}", synth["load"])]
    parts += [(f"train {name} (wall)", f"{run['wall_s']:.0f}", run["load"]) for name, run in runs.items()]
    parts += [(f"evaluate {name}: bpb / ontology", f"{s['bpb_s']:.0f} / {s['ontology_s']:.0f}", s["load"])
              for name, s in scores.items()]
    lines.append("| part | seconds | load average before / after |\n|---|---:|---|")
    lines += [f"| {part} | {took} | {' / '.join(load)} |" for part, took, load in parts]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", default=None, help="default out/stage2-<preset>")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    p = PRESETS[args.preset]
    out = Path(args.out or f"out/stage2-{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    t0, load_start = time.perf_counter(), _load()

    import torch

    from igot.data import smollm2
    from igot.eval import evaluate, ontology_questions
    from igot.train.data import heldout_texts

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = str(smollm2())
    synth = synthesize_qa(out, p)
    print(synth["summary"], file=sys.stderr, flush=True)
    if not synth["kept"]:
        raise SystemExit(f"no QA pair was kept ({out / 'qa.jsonl'}); the synthetic run needs at least one")

    runs = {}
    for name in ARMS:
        runs[name] = train_arm(name, out, p, model_dir, out / "qa.jsonl")
    if len({(r["steps"], r["tokens"]) for r in runs.values()}) != 1:
        raise SystemExit(f"the runs differ in steps or tokens: {[(r['steps'], r['tokens']) for r in runs.values()]}")

    files = heldout_files(out / "data", max(p["domain_docs"], p["general_docs"]))
    texts = {"domain": heldout_texts([files["domain"]], p["domain_docs"]),
             "general": heldout_texts([files["general"]], p["general_docs"])}
    questions = ontology_questions(n_questions=p["questions"], seed=0)
    models = {"base": model_dir, **{name: out / "runs" / name / "final" for name in ARMS}}
    scores = {}
    for name, folder in models.items():
        print(f"\n=== evaluate {name} ===", file=sys.stderr, flush=True)
        scores[name] = score(folder, texts, questions, p, out / "eval" / f"{name}.json")
    if args.preset == "smoke":  # the per-question scoring must score like igot eval's batched one, per corpus
        batched = evaluate(model_dir, n_questions=p["questions"], bos=SEPARATOR)["by_corpus"]
        mine = {c: accuracy([h for h, q in zip(scores["base"]["hits"], questions) if q["corpus"] == c])[0]
                for c in batched}
        if any(abs(batched[c]["accuracy"] - mine[c]) > 1e-12 for c in batched):
            raise SystemExit(f"per-question accuracy by corpus {mine} != igot eval's {batched}")

    lines = tables(args.preset, p, synth, runs, scores, texts, questions, load_start)
    report = {"preset": args.preset, "settings": p, "arms": ARMS, "synth": synth, "runs": runs,
              "scores": {k: {kk: v for kk, v in s.items() if kk != "key"} for k, s in scores.items()},
              "total_s": time.perf_counter() - t0, "load": [load_start, _load()]}
    write_result(report, out / "report.json")
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"\n{out}/report.json and table.md written ({report['total_s'] / 60:.0f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
