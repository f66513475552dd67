"""The `igot` command line: each subcommand parses its flags and calls the public Python API."""
from __future__ import annotations

import argparse
import sys


def _add_data(sub: argparse._SubParsersAction) -> None:
    from .data import ITEMS

    p = sub.add_parser("data", help="fetch the real model, tokenizers and corpora into the cache",
                       description="fetch: download what is missing or damaged ($IGOT_CACHE, default "
                       "~/.cache/igot); status: show each item's state without fetching.")
    p.add_argument("action", choices=["fetch", "status"])
    p.add_argument("--only", action="append", choices=list(ITEMS), metavar="NAME",
                   help=f"fetch only this item (repeatable): {', '.join(ITEMS)}")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verify", action="store_true", help="re-hash cached files (sha256) instead of checking sizes")
    p.set_defaults(func=_cmd_data)


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import cache_dir, fetch, status

    if args.action == "status":
        for name, state in status().items():
            print(f"{name:10s} {state}")
        print(f"cache: {cache_dir()}")
        return 0
    fetch(args.only, progress=not args.quiet, verify=args.verify)
    return 0


def _add_encode(sub: argparse._SubParsersAction) -> None:
    from typing import get_args

    from .corpus import DocMode, Errors

    p = sub.add_parser("encode", help="encode text / jsonl files into token ids + word and document starts")
    p.add_argument("sources", nargs="+", help="files, folders (recursive) or glob patterns")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json or a Hugging Face folder")
    p.add_argument("--out", required=True, help="output folder (.npy shards + manifest.json)")
    p.add_argument("--doc-mode", choices=get_args(DocMode), default="file", help="how .txt files split")
    p.add_argument("--text-field", default="text", help="the text key of .jsonl records")
    p.add_argument("--errors", choices=get_args(Errors), default="strict", help="invalid UTF-8 handling")
    p.add_argument("--batch-size", type=int, default=1024, help="documents per encode_batch call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_encode)


def _cmd_encode(args: argparse.Namespace) -> int:
    from .corpus import ReadStats, encode_corpus, read_documents

    stats = ReadStats()
    docs = read_documents(args.sources, doc_mode=args.doc_mode, text_field=args.text_field,
                          errors=args.errors, stats=stats)
    corpus = encode_corpus(args.tokenizer, docs, out_dir=args.out, batch_size=args.batch_size,
                           progress=not args.no_progress)
    print(f"{args.out}: {corpus.n_docs:,} documents from {stats.n_files:,} files, {corpus.n_tokens:,} tokens, "
          f"{corpus.n_bytes:,} bytes ({corpus.n_bytes / corpus.n_tokens:.2f} bytes/token), "
          f"{stats.n_replaced:,} invalid UTF-8 sequences replaced")
    return 0


def _add_extend(sub: argparse._SubParsersAction) -> None:
    from typing import get_args

    from .corpus import DocMode
    from .vocab import METHODS

    p = sub.add_parser("extend", help="extend a tokenizer with domain entries written as real merges")
    p.add_argument("--base", required=True, help="Hugging Face tokenizer folder or tokenizer.json")
    for name, help_text in (("domain", "domain"), ("general", "general-text"),
                            ("heldout", "held-out domain (reported, used by tau)")):
        group = p.add_mutually_exclusive_group(required=name == "domain")
        group.add_argument(f"--{name}", nargs="+", default=None, help=f"{help_text} files, folders or globs")
        group.add_argument(f"--{name}-table", default=None, metavar="TABLE.igc",
                           help=f"or: a word table of the {name} text (igot count --words [--cluster ...])")
    p.add_argument("--budget", type=int, default=2000, help="the most new vocabulary entries")
    p.add_argument("--method", choices=METHODS, default="igot", help="how entries are chosen")
    p.add_argument("--tau", default=None, help="IGOT_tau stopping threshold: a float or 'auto'")
    p.add_argument("--doc-mode", choices=get_args(DocMode), default="file", help="how .txt files split")
    p.add_argument("--out", required=True, help="output folder (tokenizer.json + HF side files)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_extend)


def _cmd_extend(args: argparse.Namespace) -> int:
    from .counting import WordTable
    from .vocab import extend_tokenizer

    domain, general, heldout = (WordTable.load(table) if table else texts for texts, table in (
        (args.domain, args.domain_table), (args.general, args.general_table), (args.heldout, args.heldout_table)))
    tau = args.tau
    if tau is not None and tau != "auto":
        try:
            tau = float(tau)
        except ValueError:
            raise ValueError(f"--tau {tau!r} must be a number or 'auto'") from None
    ext = extend_tokenizer(args.base, domain, general, budget=args.budget, method=args.method,
                           tau=tau, heldout=heldout, doc_mode=args.doc_mode,
                           progress=not args.no_progress)
    out = ext.save(args.out)
    report = ext.report
    print(f"{out}: {report['entries_added']:,} entries added ({report['method']}, budget {report['budget']:,}, "
          f"{report['model_type']}), vocabulary {report['vocab_size_base']:,} -> {report['vocab_size_new']:,}")
    print("\n| corpus | base tokens | new tokens | saving |\n|---|---:|---:|---:|")
    for name, row in report["tokens"].items():
        print(f"| {name} | {row['base']:,} | {row['new']:,} | {row['saving']:.2%} |")
    print("\ntop new tokens: " + ", ".join(repr(ext.tokenizer.decode([t.id])) for t in
                                          sorted(ext.new_tokens, key=lambda t: -t.score)[:15]))
    return 0


def _add_count(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("count", help="count the n-grams of a corpus (C++, exact) and save the table (.igc)")
    p.add_argument("sources", nargs="+", help="files, folders (recursive) or glob patterns")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json or a Hugging Face folder")
    p.add_argument("--out", required=True, help="output table file (.igc, NgramTable.load reads it)")
    p.add_argument("--max-n", type=int, default=8, help="longest n-gram counted")
    p.add_argument("--min-count", type=int, default=2, help="keep n-grams seen at least this often")
    p.add_argument("--threads", type=int, default=0, help="counting threads, 0 = all cores")
    p.add_argument("--cross-words", action="store_true", help="also count n-grams across pre-token boundaries")
    p.add_argument("--memory-budget", type=_byte_size, default=None,
                   help="bytes for the counting hash tables, e.g. 4G (default: unlimited); exact either way")
    p.add_argument("--doc-mode", choices=["file", "blank_line", "line"], default="file",
                   help="how .txt files split into documents")
    p.add_argument("--top", type=int, default=20, help="how many of the most frequent n-grams to print")
    p.add_argument("--words", action="store_true",
                   help="count distinct pre-tokens instead (a word table, for igot extend --domain-table)")
    p.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="encode and count on a Dask cluster: a scheduler address, or local:N for N local worker "
                        "processes (pip install 'igot[cluster]'); same table as without it")
    p.add_argument("--shard-size", type=_byte_size, default=None,
                   help="--cluster: cut files larger than this between documents (default 64M)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_count)


def _byte_size(text: str) -> int:
    """Parse a byte count with an optional K/M/G suffix (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 500M, 4G, 1000000)") from None


def _cmd_count(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from .corpus import encode_corpus, load_tokenizer, read_documents
    from .counting import count_ngrams, count_words

    tokenizer = load_tokenizer(args.tokenizer)
    start = time.perf_counter()
    if args.cluster:
        from . import cluster

        options = {"cluster": args.cluster, "doc_mode": args.doc_mode, "progress": not args.no_progress}
        if args.shard_size is not None:
            options["shard_bytes"] = args.shard_size
        try:
            table = (cluster.count_words(args.sources, tokenizer, **options) if args.words else
                     cluster.count_ngrams(args.sources, tokenizer, max_n=args.max_n, min_count=args.min_count,
                                          cross_words=args.cross_words, memory_budget=args.memory_budget,
                                          **options))
        except cluster.ShardError as exc:
            print(f"igot: error: {exc}", file=sys.stderr)
            return 1
        source = f"on the cluster {args.cluster} in {time.perf_counter() - start:.2f} s"
    else:
        corpus = encode_corpus(tokenizer, read_documents(args.sources, doc_mode=args.doc_mode),
                               progress=not args.no_progress)
        encoded = time.perf_counter()
        table = (count_words(corpus.ids, corpus.word_starts, corpus.doc_starts, threads=args.threads) if args.words
                 else count_ngrams(corpus.ids, corpus.word_starts, corpus.doc_starts, max_n=args.max_n,
                                   min_count=args.min_count, threads=args.threads, cross_words=args.cross_words,
                                   memory_budget=args.memory_budget))
        encode_s, count_s = encoded - start, time.perf_counter() - encoded
        source = (f"from {corpus.n_docs:,} documents, {corpus.n_tokens:,} tokens; encode {encode_s:.2f} s "
                  f"({corpus.n_tokens / encode_s:,.0f} tokens/s), count {count_s:.3f} s "
                  f"({corpus.n_tokens / count_s:,.0f} tokens/s)")
    table.save(args.out)

    if args.words:
        print(f"{args.out}: {len(table):,} distinct pre-tokens, {int(table.counts.sum()):,} occurrences {source}")
    else:
        print(f"{args.out}: {len(table):,} distinct n-grams (2 <= n <= {args.max_n}, count >= {args.min_count}, "
              f"{'across' if args.cross_words else 'inside'} words) {source}")
        lengths = table.lengths
        print("n:        " + " ".join(f"{n:>9}" for n in range(2, args.max_n + 1)))
        print("distinct: " + " ".join(f"{int(np.sum(lengths == n)):>9,}" for n in range(2, args.max_n + 1)))
    print(f"top {min(args.top, len(table))}:")
    for i in range(min(args.top, len(table))):
        entry = table.ngram(i) if not args.words else table.word(i)
        print(f"{int(table.counts[i]):>10,}  {tokenizer.decode(list(entry))!r:40s} {list(entry)}")
    return 0


def _add_extend_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extend-model", help="grow a causal LM to an extended tokenizer, new rows from their pieces")
    p.add_argument("--model", required=True, help="Hugging Face causal LM folder (config.json + safetensors)")
    p.add_argument("--base", default=None, help="the model's tokenizer (default: the tokenizer.json in --model)")
    p.add_argument("--new", required=True, help="the extended tokenizer folder or tokenizer.json (igot extend --out)")
    p.add_argument("--init", choices=["mean", "weighted", "hf"], default="mean", help="new-row initialisation")
    p.add_argument("--pad-to-multiple-of", type=int, default=64, help="round the vocabulary rows up to this")
    p.add_argument("--out", required=True, help="new folder: the grown model plus the new tokenizer's files")
    p.set_defaults(func=_cmd_extend_model)


def _cmd_extend_model(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    import time
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from ._files import replace_folder
    from .model import extend_model

    out, new = Path(args.out).resolve(), Path(args.new)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty; remove it or pick another folder")
    model = AutoModelForCausalLM.from_pretrained(args.model)
    n_old = model.get_input_embeddings().weight.shape[0]
    start = time.perf_counter()
    extend_model(model, args.base or args.model, new, init=args.init, pad_to_multiple_of=args.pad_to_multiple_of)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        for file in (new.iterdir() if new.is_dir() else [new]):  # the tokenizer files, beside the model's
            if file.is_file() and not (staging / file.name).exists():
                shutil.copy2(file, staging / file.name)
        replace_folder(staging, out)  # an existing out is empty (checked above)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    n_real = int(model.igot_vocab_mask.sum())
    print(f"{out}: vocabulary rows {n_old:,} -> {model.config.vocab_size:,} ({n_real:,} tokens, "
          f"{model.config.vocab_size - n_real} padding rows masked), init={args.init}, {seconds:.2f} s")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the fetched biomedical data and SmolLM2-135M, training included")
    p.add_argument("--out", default="out/demo", help="the demo's folder (a previous demo there is replaced)")
    p.add_argument("--budget", type=int, default=2000, help="new vocabulary entries")
    p.add_argument("--domain-bytes", type=int, default=100_000, help="bytes of domain text each training run reads")
    p.add_argument("--eval-docs", type=int, default=64, help="held-out documents per set for bits per byte")
    p.add_argument("--model", default=None, help="a causal LM folder with SmolLM2's tokenizer (default SmolLM2-135M)")
    p.add_argument("--max-docs", type=int, default=None, help="choose entries from the first N documents of each set")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(args.out, budget=args.budget, domain_bytes=args.domain_bytes, eval_docs=args.eval_docs, model=args.model,
        max_docs=args.max_docs, progress=not args.no_progress)
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    from .scaling.laws import LAWS

    p = sub.add_parser("plan", help="fit a scaling law L(N, D, D') to runs and split a compute budget with it")
    actions = p.add_subparsers(dest="action", required=True)
    f = actions.add_parser("fit", help="fit a law to runs: CSV (N, D, Dp, loss) or igot train run folders")
    f.add_argument("runs", nargs="+", help="CSV files, igot train run folders or their metrics.jsonl")
    f.add_argument("--law", choices=list(LAWS), default="chinchilla_split", help="the functional form")
    f.add_argument("--out", required=True, help="the fit, as JSON (read by `igot plan split --fit`)")
    f.add_argument("--general", type=_names, help="igot train runs: comma-separated general source names")
    f.add_argument("--domain", type=_names, help="igot train runs: comma-separated domain source names")
    f.add_argument("--heldout", help="igot train runs: the held-out set whose bits per byte is the loss")
    f.add_argument("--n-params", choices=["total", "non_embedding"], default="total", help="which size is N")
    f.add_argument("--points", choices=["final", "evals"], default="final", help="last eval line or every one")
    f.add_argument("--bootstrap", type=int, default=100, help="bootstrap refits for the intervals (0 = none)")
    f.add_argument("--seed", type=int, default=0, help="seeds the bootstrap")
    s = actions.add_parser("split", help="the best N, D and D' for a compute budget under a fitted law")
    s.add_argument("--fit", required=True, help="a fit written by `igot plan fit --out`")
    s.add_argument("--compute", type=float, required=True, help="FLOPs, C = 6*N*(D + domains*D')")
    s.add_argument("--domains", type=int, default=1, help="domains sharing one general base")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--size", type=float, help="a fixed model size N (parameters)")
    size.add_argument("--sizes", type=float, nargs="+", help="candidate model sizes; the best is chosen")
    s.add_argument("--plot", help="write a PNG of iso-loss curves over (D, D') with the budget and the plan")
    p.set_defaults(func=_cmd_plan)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _cmd_plan(args: argparse.Namespace) -> int:
    import warnings

    from .scaling import LawFit, fit, plan

    if args.action == "fit":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the summary prints them
            result = fit(args.runs, args.law, n_bootstrap=args.bootstrap, seed=args.seed, general=args.general,
                         domain=args.domain, heldout=args.heldout, n_params=args.n_params, points=args.points)
        print(result.summary())
        print(f"\n{result.save(args.out)}")
        return 0
    result = plan(LawFit.load(args.fit), args.compute, n_domains=args.domains, N=args.size, sizes=args.sizes)
    print(result.to_markdown())
    if args.plot:
        print(f"\n{result.plot(args.plot)}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="continued pretraining from a TOML config (patch stages, mixtures, resume)",
                       description="Runs the stages of a TOML config; the same under torchrun for DDP / FSDP2. "
                       "See igot.train.config for every key.")
    p.add_argument("--config", required=True, help="the run's TOML file")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out from its newest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set train.lr=1e-4 --set stage.0.tokens=1e6")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    train(TrainConfig.from_toml(args.config, overrides=args.set), resume=args.resume, progress=not args.no_progress)
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    import dataclasses
    from typing import get_args

    from .corpus import DocMode
    from .synth import BACKENDS, TEMPLATES, Filters, Sampling

    p = sub.add_parser("synth", help="generate synthetic domain QA pairs with an instruct model (a training source)",
                       description="Appends filtered question/answer lines (question, answer, text, source, model, "
                       "template) to --out; rerun the same command to resume.")
    p.add_argument("--domain", nargs="+", required=True,
                   help="source documents: corpora as name:split (hpo:train), files, folders or globs")
    p.add_argument("--out", required=True, help="output .jsonl (appended to; resumes)")
    p.add_argument("--model", default=None, help="HF chat model folder (default: the cached SmolLM2-135M-Instruct)")
    p.add_argument("--heldout", nargs="+", default=None,
                   help="held-out documents (same forms): contamination guard, never used as sources")
    p.add_argument("--template", default="science", help=f"{' or '.join(TEMPLATES)}, or a TOML template file")
    p.add_argument("--per-doc", type=int, default=2, help="replies sampled per document")
    p.add_argument("--max-docs", type=int, default=None, help="the most documents to cover (earlier runs included)")
    p.add_argument("--batch-size", type=int, default=8, help="documents per generation call")
    p.add_argument("--max-doc-chars", type=int, default=2000, help="cut longer documents before prompting")
    p.add_argument("--doc-mode", choices=get_args(DocMode), default="file", help="how .txt source files split")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: vLLM on a GPU when installed")
    p.add_argument("--device", default=None, help="transformers backend device (default cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--chat-template", default=None, help="Jinja chat template file, for a model without one")
    for cls in (Sampling, Filters):
        for f in dataclasses.fields(cls):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                           help=f"{f.metadata['help']} (default {f.default})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    import dataclasses

    from .synth import Filters, Sampling, load_generator, synthesize

    sampling, filters = (cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
                         for cls in (Sampling, Filters))
    generator = load_generator(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                               chat_template=args.chat_template, seed=sampling.seed)
    summary = synthesize(args.domain, args.out, generator=generator, template=args.template,
                         heldout=args.heldout or (), per_doc=args.per_doc, max_docs=args.max_docs,
                         batch_size=args.batch_size, sampling=sampling, filters=filters,
                         max_doc_chars=args.max_doc_chars, doc_mode=args.doc_mode, progress=not args.no_progress)
    print(summary.format())
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: ontology multiple choice or held-out bits per byte",
                       description="ontology: held-out HPO/GO term names with four candidate definitions, scored by "
                       "per-byte log-likelihood (chance 25%%); bpb: bits per byte on held-out sets.")
    p.add_argument("--model", required=True, help="Hugging Face model folder (e.g. an igot train run's final/)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or tokenizer.json (default: the model's)")
    p.add_argument("--bench", choices=["ontology", "bpb"], default="ontology")
    p.add_argument("--questions", type=int, default=500, help="ontology: questions (0 = every held-out term)")
    p.add_argument("--seed", type=int, default=0, help="ontology: sample, distractors and choice order")
    p.add_argument("--bos", default=None, help="token before each text (default: the tokenizer's eos token)")
    p.add_argument("--calibrated", action="store_true",
                   help="ontology: also score by how much the name raises each choice's likelihood (2x the cost)")
    p.add_argument("--heldout", nargs="+", default=["hpo:heldout", "go:heldout"], help="bpb: corpora or files")
    p.add_argument("--eval-docs", type=int, default=200, help="bpb: the first documents of each held-out set")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .eval import evaluate, write_result

    result = evaluate(args.model, tokenizer=args.tokenizer, bench=args.bench, n_questions=args.questions or None,
                      seed=args.seed, bos=args.bos, heldout=args.heldout, eval_docs=args.eval_docs, device=args.device,
                      calibrated=args.calibrated)
    if args.bench == "ontology":
        print(f"{args.model}: ontology accuracy {result['accuracy']:.1%} +- {result['stderr']:.1%} over "
              f"{result['n']} questions (chance {result['chance']:.0%}; {result['skipped']} skipped); "
              + ", ".join(f"{c} {v['accuracy']:.1%} (n={v['n']})" for c, v in result["by_corpus"].items())
              + (f"; calibrated {result['calibrated_accuracy']:.1%} +- {result['calibrated_stderr']:.1%}"
                 if "calibrated_accuracy" in result else ""))
    else:
        print(json.dumps(result["bpb"], indent=1))
    if args.out:
        write_result(result, args.out)
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot held-out bits per byte of igot train runs against bytes, FLOPs and time")
    p.add_argument("runs", nargs="+", help="igot train run folders (train.out)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--heldout", default=None, help="the held-out set to draw (default: the first one)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from .report import plot_runs

    if args.labels is not None and len(args.labels) != len(args.runs):
        raise ValueError(f"--labels has {len(args.labels)} names for {len(args.runs)} runs")
    print(plot_runs(args.runs, args.out, heldout=args.heldout, labels=args.labels))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the `igot` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="igot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_data, _add_encode, _add_extend, _add_count, _add_extend_model, _add_train, _add_eval, _add_plot, _add_demo, _add_plan,
                _add_synth):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on argv (default sys.argv[1:]) and return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"igot: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
