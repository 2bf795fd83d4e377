"""`gbcosface synth`: write a synthetic face world (training set, .bin sets, IJB-C-like directory).

Why a verb: the demo pipeline's first step and the tests need the same seeded dataset in the real
formats; the defaults are the demo's world (see WorldSpec).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from gbcosface.data.synthetic.world import WorldSpec, generate_world

_DEFAULTS = WorldSpec()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write a seeded synthetic face world: train/ (RecordIO), val/ (.bin), IJBC/",
        description="Write OUT/train (train.rec, train.idx, property), OUT/val (lfw.bin, cfp_fp.bin, "
        "agedb_30.bin), OUT/IJBC (loose_crop/, meta/) and OUT/world.json. Same seed and flags, same bytes.")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="world seed")
    p.add_argument("--identities", type=int, default=_DEFAULTS.identities, help="training identities")
    p.add_argument("--images-per-identity", type=int, default=_DEFAULTS.images_per_identity,
                   help="training images per identity")
    p.add_argument("--eval-identities", type=int, default=_DEFAULTS.eval_identities,
                   help="IJB-C-like identities (disjoint from training)")
    p.add_argument("--templates-per-identity", type=int, default=_DEFAULTS.templates_per_identity,
                   help="IJB-C-like templates per identity")
    p.add_argument("--pairs", type=int, default=_DEFAULTS.pairs, help="pairs per .bin set (half genuine)")
    p.add_argument("--bin-identities", type=int, default=_DEFAULTS.bin_identities,
                   help="identities per .bin set (disjoint from training and from each other)")
    p.add_argument("--impostor-pairs", type=int, default=_DEFAULTS.impostor_pairs,
                   help="IJB-C-like impostor template pairs (at most)")
    p.add_argument("--difficulty", type=float, default=_DEFAULTS.difficulty,
                   help="0 (distinct faces, mild nuisance) .. 1 (look-alikes, strong nuisance)")
    p.add_argument("--crop-min", type=int, default=_DEFAULTS.crop_min, help="smallest IJB loose crop side, px")
    p.add_argument("--crop-max", type=int, default=_DEFAULTS.crop_max, help="largest IJB loose crop side, px")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="rendering processes (the output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing world in OUT")
    p.set_defaults(func=cmd_synth)


def spec_from_args(args: argparse.Namespace) -> WorldSpec:
    return WorldSpec(
        seed=args.seed, identities=args.identities, images_per_identity=args.images_per_identity,
        eval_identities=args.eval_identities, templates_per_identity=args.templates_per_identity,
        pairs=args.pairs, bin_identities=args.bin_identities, impostor_pairs=args.impostor_pairs,
        difficulty=args.difficulty, crop_min=args.crop_min, crop_max=args.crop_max,
    )


def cmd_synth(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
        spec.validate()
    except ValueError as exc:
        print(f"gbcosface synth: {exc}")
        return 2
    try:
        world = generate_world(args.out, spec, workers=max(1, args.workers), overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"gbcosface synth: {exc}")
        return 1
    print(json.dumps({"out": str(args.out), "digest": world["digest"], "counts": world["counts"]}, indent=2))
    return 0
