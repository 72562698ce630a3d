"""Entry point of the ``nncd`` command.

Every subcommand lives in its own module ``nncd_ray.cli.<name>`` exposing
``register(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``. Library errors
(:class:`nncd_ray.errors.NNCDError`) become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from nncd_ray import __version__
from nncd_ray.errors import NNCDError

# subcommand name -> module; the order is the order of ``nncd --help``
SUBCOMMANDS: tuple[str, ...] = (
    "score",
    "matrix",
    "status",
    "knn",
    "study",
    "compress",
    "decompress",
    "train",
    "submit",
    "serve",
    "classify",
)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nncd",
        description="Neural Normalized Compression Distance matrices with language models on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"nncd_ray {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module_name = f"nncd_ray.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # a subcommand whose module does not exist (yet) is left out; a module that exists but
            # fails to import (a missing dependency, a bug) still raises
            if exc.name == module_name:
                continue
            raise
        sub = module.register(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args._run(args)
    except NNCDError as exc:
        print(f"nncd {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"nncd {args.command}: interrupted; computed tiles are kept", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
