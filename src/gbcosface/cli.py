"""`gbcosface <verb>`: each area of the package registers its own verbs.

Why a registry of modules: the verbs live beside the logic they drive (data, train, eval, storage,
launch, pipeline), and this file only assembles them. Errors are handled here once: the project's
error types become one line `error: ...` and an exit code per class (`gbcosface.errors`); the
traceback is shown only with `-v`. `-v` makes the project's loggers DEBUG but keeps third-party ones
(botocore logs request headers, credentials included) at WARNING, and every log line passes a
redacting formatter.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from gbcosface.errors import EXIT_UNEXPECTED, exit_code_for, one_line, redact

# Each module defines `register(subparsers)`, adding parsers with `set_defaults(func=...)`;
# func(args) returns an exit code (or None for 0).
COMMAND_MODULES = (
    "gbcosface.data.cli",
    "gbcosface.data.synth_cli",
    "gbcosface.train.cli",
    "gbcosface.eval.cli",
    "gbcosface.storage.cli",
    "gbcosface.launch.cli",
    "gbcosface.pipeline_cli",
    "gbcosface.demo",
)


def build_parser() -> argparse.ArgumentParser:
    from gbcosface import __version__

    parser = argparse.ArgumentParser(prog="gbcosface", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gbcosface {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an area not built yet
            if exc.name and exc.name.startswith("gbcosface") and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


#: Loggers of libraries kept at WARNING, with or without `-v`: their DEBUG output carries request headers
#: (botocore logs the session token and the access key id) and their INFO lines are noise on a
#: command's stderr ("Found credentials in environment variables").
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "kubernetes", "filelock", "fsspec", "asyncio")


class RedactingFormatter(logging.Formatter):
    """Formats like logging.Formatter, then removes secrets (`gbcosface.errors.redact`) from the line,
    traceback included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(verbose: bool) -> None:
    """Root at INFO (DEBUG with -v) with a redacting formatter on every root handler; libraries quiet."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    root = logging.getLogger()
    for handler in root.handlers:
        fmt = handler.formatter
        handler.setFormatter(RedactingFormatter(fmt._fmt if fmt else None, fmt.datefmt if fmt else None))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:
        return report_error(exc, args.verbose)


def report_error(exc: BaseException, verbose: bool = False) -> int:
    """Print a project error as one line (with its traceback under -v) and return its class's exit code.

    An error of no known class is a bug: its traceback is always printed.
    """
    code = exit_code_for(exc)
    if code is None or verbose:
        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    if code is None:
        return EXIT_UNEXPECTED
    if not isinstance(exc, KeyboardInterrupt):
        # Under torchrun every rank may fail alike: say which one did.
        rank = f"rank {os.environ['RANK']}: " if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else ""
        print(redact(f"error: {rank}{one_line(exc)}"), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
