"""The ``custody`` command line: one parser, subcommands contributed by modules.

A subcommand module exposes ``register(subparsers) -> None``; it adds its parser
and sets ``func`` (``args -> int`` exit code) as a default. Built-in modules are
listed in ``BUILTIN_COMMANDS``; any module ``node/cli/<name>.py`` (name not
starting with ``_``) is found automatically, so a new command needs no edit
here. Keep such modules' top-level imports light: they are imported on every
invocation; import heavy things inside the handler.

Handlers raise ``ValueError`` (``PkiError`` is one) for bad input: it is printed
as ``custody: error: ...`` with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

BUILTIN_COMMANDS: tuple[str, ...] = ("node.pki.cli",)
EXIT_USAGE = 2


def _command_modules() -> list[str]:
    found = sorted(
        f"{__name__}.{m.name}"
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and not m.ispkg
    )
    return [*BUILTIN_COMMANDS, *found]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("custody-cluster")
    except PackageNotFoundError:
        return "0.1.0 (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="custody",
        description="Threshold-cryptography key custody cluster.",
    )
    parser.add_argument("--version", action="version", version=f"custody {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _command_modules():
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``custody`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"custody: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"custody: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
