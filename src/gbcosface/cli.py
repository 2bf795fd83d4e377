"""`gbcosface <verb>`: each area of the package registers its own verbs.

Why a registry of modules: the verbs live beside the logic they drive (data, train, eval, storage,
launch, pipeline), and this file only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
