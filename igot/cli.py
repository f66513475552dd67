"""The `igot` command line: each subcommand parses its flags and calls the public Python API."""
from __future__ import annotations

import argparse
import sys


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="fetch the real model, tokenizers and corpora into the cache")
    p.add_argument("action", choices=["fetch"])
    p.set_defaults(func=_cmd_data)


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import fetch

    fetch()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the `igot` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="igot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_data,):
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
