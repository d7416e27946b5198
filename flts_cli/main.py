"""`flts`: the command-line entry point. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys

from flts_cli import run as run_command
from flts_cli import up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flts", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up.add_parsers(commands)

    preprocess = commands.add_parser(
        "preprocess", help="run the preprocess job once (settings from the environment)"
    )
    preprocess.set_defaults(func=_run_preprocess)

    run_command.add_parser(commands)
    return parser


def _run_preprocess(_args: argparse.Namespace) -> int:
    from preprocess_container.__main__ import main as preprocess_main

    return preprocess_main()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
