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


def build_parser() -> argparse.ArgumentParser:
    """Return the `igot` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="igot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_data, _add_encode):
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
