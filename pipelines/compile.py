"""Compile the pipeline to KFP IR YAML: `python -m pipelines.compile OUT.yaml`."""

from __future__ import annotations

import sys

from kfp import compiler

from pipelines.train_eval import gbcosface_train_eval


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else "build/gbcosface_train_eval.yaml"
    compiler.Compiler().compile(gbcosface_train_eval, package_path=out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
