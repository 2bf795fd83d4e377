"""`gbcosface eval-bin`, `gbcosface eval-ijb`, `gbcosface export`.

The eval-ijb flags follow the official GB-CosFace / insightface IJB script (--model-prefix,
--image-path, --result-dir, --batch-size, --backbone_type, --target, --job), with the processing
flags spelled out (--flip, --no-norm-score, --no-detector-score); insightface's
--use_flip_test/--use_norm_score/--use_detector_score 0|1 spellings are accepted too.
--model-prefix is a backbone file: an official backbone.pth or our model/backbone.pt (+ .json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gbcosface.data.errors import DataFormatError


def _bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1/true/false, got {text!r}")


def default_cache_dir() -> str:
    """$GBCOSFACE_CACHE_DIR, else ~/.cache/gbcosface/ijb-features: outside any published result directory."""
    base = os.environ.get("GBCOSFACE_CACHE_DIR") or str(Path.home() / ".cache" / "gbcosface")
    return str(Path(base) / "ijb-features")


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _refused(exc: BaseException) -> int:
    """One line and the exit code of the error's class (gbcosface.errors); 2 for a plain ValueError."""
    from gbcosface.errors import EXIT_USAGE, exit_code_for, one_line

    return _fail(one_line(exc)) and (exit_code_for(exc) or EXIT_USAGE)


def _errors():
    from gbcosface.models import BackboneLoadError

    return (DataFormatError, BackboneLoadError, FileNotFoundError)


# ---------------------------------------------------------------------------------------------------------


def _cmd_eval_bin(args: argparse.Namespace) -> int:
    import torch

    from gbcosface.data.bin_sets import load_bin
    from gbcosface.eval.verification import evaluate_bin
    from gbcosface.models import load_backbone

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        return _fail("--targets lists no sets")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        backbone = load_backbone(args.model_prefix, name=args.backbone_type, fp16=args.fp16).to(device)
        results = {}
        for target in targets:
            binset = load_bin(Path(args.data_dir) / f"{target}.bin")
            res = evaluate_bin(backbone, binset, batch_size=args.batch_size, device=device, flip=args.flip)
            results[target] = {**res, "pairs": int(len(binset.issame))}
            print(f"[{target}] accuracy {100 * res['accuracy']:.2f} +- {100 * res['std']:.2f} %, "
                  f"XNorm {res['xnorm']:.4f}, threshold {res['threshold']:.3f} "
                  f"({len(binset.issame):,} pairs, flip {'on' if args.flip else 'off'})")
    except _errors() as exc:
        return _refused(exc)
    if args.output:
        from gbcosface.eval.report import atomic_write_bytes

        doc = {"model": str(args.model_prefix), "flip": bool(args.flip), "fp16": bool(args.fp16), "results": results}
        atomic_write_bytes(args.output, (json.dumps(doc, indent=2) + "\n").encode())
    return 0


def _cmd_eval_ijb(args: argparse.Namespace) -> int:
    from gbcosface.eval.run_ijb import evaluate_ijb

    if not args.model_prefix and not args.features:
        return _fail("--model-prefix (or --features) is required")
    result_dir = Path(args.result_dir) / args.job if args.job else Path(args.result_dir)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    from gbcosface.eval.run_ijb import ALL_FLAG_SETS

    try:
        fpirs = [float(f) for f in args.fpirs.split(",") if f.strip()]
        ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    except ValueError:
        return _fail(f"--fpirs and --ranks take comma-separated numbers, got {args.fpirs!r} and {args.ranks!r}")
    options = {"bf16": args.bf16, "compile": args.compile, "decode": args.decode,
               "progress_bar": False if args.no_progress else None}
    if args.channels_last is not None:
        options["channels_last"] = args.channels_last
    try:
        evaluate_ijb(
            model_path=args.model_prefix, image_path=args.image_path, target=args.target,
            result_dir=str(result_dir), backbone_type=args.backbone_type, batch_size=args.batch_size,
            flip=args.flip, norm_score=args.norm_score, detector_score=args.detector_score,
            skip_missing=args.skip_missing, device=args.device, workers=args.workers, fp16=args.fp16,
            cache_dir=cache_dir, features_path=args.features, protocols=args.protocol, ranks=ranks, fpirs=fpirs,
            flag_sets=ALL_FLAG_SETS if args.flags == "all" else None, **options,
        )
    except (*_errors(), ValueError) as exc:
        return _refused(exc)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from gbcosface.eval.export import ExportParityError, export_onnx

    try:
        res = export_onnx(args.model_prefix, args.onnx, backbone_type=args.backbone_type, opset=args.opset,
                          check=not args.no_check, atol=args.atol, rtol=args.atol)
    except (*_errors(), ExportParityError) as exc:
        return _refused(exc)
    print(f"wrote {res['path']} (opset {res['opset']}, dynamic batch axis)")
    if "max_abs_diff" in res:
        print(f"onnxruntime parity on a batch of {res['check_batch']}: max abs diff {res['max_abs_diff']:.3e} "
              f"(outputs up to {res['max_abs_output']:.3g})")
    return 0


# ---------------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval-bin", help="10-fold verification accuracy on .bin sets (LFW, CFP-FP, AgeDB-30)")
    p.add_argument("--model-prefix", "--model_prefix", required=True, help="backbone file (.pth/.pt)")
    p.add_argument("--data-dir", "--data_dir", required=True, help="directory holding <target>.bin")
    p.add_argument("--targets", default="lfw,cfp_fp,agedb_30", help="comma-separated set names")
    p.add_argument("--flip", action="store_true", default=False,
                   help="flip test: embedding = f(img) + f(flip(img)) (off by default, as evaluate_bin)")
    p.add_argument("--backbone_type", "--backbone-type", "--network", default=None,
                   help="backbone name when the file has no .json sidecar (e.g. iresnet100)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=128)
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when present)")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("--fp16", action="store_true",
                   help="run the trunk in half precision (default float32, whatever the backbone's sidecar says)")
    p.set_defaults(func=_cmd_eval_bin)

    p = subparsers.add_parser("eval-ijb", help="IJB-B / IJB-C 1:1 verification and 1:N identification, report")
    p.add_argument("--model-prefix", "--model_prefix", default=None,
                   help="backbone file (.pth/.pt, or an exported .onnx run with onnxruntime)")
    p.add_argument("--image-path", "--image_path", required=True, help="IJB root holding loose_crop/ and meta/")
    p.add_argument("--result-dir", "--result_dir", default=".", help="where scores, metrics and report go")
    p.add_argument("--batch-size", "--batch_size", type=int, default=128)
    p.add_argument("--backbone_type", "--backbone-type", "--network", default=None,
                   help="backbone name when the file has no .json sidecar (e.g. iresnet100)")
    p.add_argument("--target", default="IJBC", help="IJBB or IJBC")
    p.add_argument("--job", default=None, help="write into RESULT_DIR/JOB (as the official script)")
    p.add_argument("--flip", dest="flip", action="store_true", default=False, help="flip test (F1): f + f_flip")
    p.add_argument("--use_flip_test", "--use-flip-test", dest="flip", type=_bool, metavar="0|1")
    p.add_argument("--no-norm-score", dest="norm_score", action="store_false", default=True,
                   help="L2-normalise each image feature before aggregation (norm score off)")
    p.add_argument("--use_norm_score", "--use-norm-score", dest="norm_score", type=_bool, metavar="0|1")
    p.add_argument("--no-detector-score", dest="detector_score", action="store_false", default=True,
                   help="do not weight image features by the detector score")
    p.add_argument("--use_detector_score", "--use-detector-score", dest="detector_score", type=_bool, metavar="0|1")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out missing/unreadable images (zero features, not counted) instead of failing")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when present)")
    p.add_argument("--workers", type=int, default=None, help="image loading processes (default: min(32, cores))")
    p.add_argument("--fp16", action="store_true", help="half-precision inference on CUDA (default float32, whatever the backbone's sidecar says)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache (default: $GBCOSFACE_CACHE_DIR or ~/.cache/gbcosface, + /ijb-features)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    p.add_argument("--features", default=None, help="use this (N, D) .npy of image features instead of a model")
    p.add_argument("--protocol", default="11", choices=["11", "1N", "both"],
                   help="11: 1:1 verification (default); 1N: 1:N identification (galleries, mixed probes); both")
    p.add_argument("--ranks", default="1,5,10,20", help="1:N CMC ranks (comma-separated)")
    p.add_argument("--fpirs", default="0.01,0.1", help="1:N FPIRs for TPIR@FPIR (comma-separated)")
    p.add_argument("--flags", default=None, choices=["all"],
                   help="all: also the 1:1 table of the 8 norm/detector/flip combinations (N/D/F), one extraction")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast inference (any device)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="channels_last memory format (default: on for CUDA)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (worth it on CUDA)")
    p.add_argument("--decode", default="cv2", choices=["cv2", "device"],
                   help="cv2: decode and align in loader workers (official); device: JPEG decode + batched warp "
                        "on --device (nvJPEG on CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when not a terminal)")
    p.set_defaults(func=_cmd_eval_ijb)

    p = subparsers.add_parser("export", help="export a backbone to ONNX (dynamic batch) with a parity check")
    p.add_argument("--model-prefix", "--model_prefix", required=True, help="backbone file (.pth/.pt)")
    p.add_argument("--onnx", required=True, help="output .onnx path")
    p.add_argument("--backbone_type", "--backbone-type", "--network", default=None)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--atol", type=float, default=1e-3, help="parity tolerance (absolute and relative)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.set_defaults(func=_cmd_export)
