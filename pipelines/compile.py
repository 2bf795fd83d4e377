"""Compile the pipeline to KFP IR YAML: `python -m pipelines.compile [OUT.yaml] [--kfp-backend X.Y]`.

The IR is built for one KFP backend version (default: the oldest supported) and checked against its
rules (gbcosface.pipeline_backends, gbcosface.pipeline_rules); `gbcosface pipeline compile` does the same.
"""

from __future__ import annotations

import argparse
import sys

from gbcosface.pipeline_backends import DEFAULT, compile_pipeline
from pipelines.train_eval import CompileOptions, build_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile")
    parser.add_argument("output", nargs="?", default="build/gbcosface_train_eval.yaml")
    parser.add_argument("--kfp-backend", default=DEFAULT, metavar="X.Y")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(compile_pipeline(build_pipeline(CompileOptions(backend=args.kfp_backend)), args.output, args.kfp_backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
