"""`gbcosface data pack` and `gbcosface data inspect`: build and look into RecordIO training sets.

Why here: packing an image folder is how a user brings their own faces into the insightface format the
trainer reads, and `inspect` is the first thing to run on a downloaded MS1MV2-style directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from gbcosface.data.errors import DataFormatError
from gbcosface.data.recordio import (
    IndexedRecordReader,
    header_label,
    read_face_layout,
    read_property,
    unpack,
    write_face_rec,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
JPEG_SUFFIXES = {".jpg", ".jpeg"}


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="RecordIO training sets: pack an image folder, inspect a set")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("pack", help="pack SRC/<identity>/<image> into OUT/train.rec, train.idx, property")
    p.add_argument("--src", required=True, type=Path, help="folder with one subfolder per identity")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--image-size", type=int, default=112, help="required image height and width")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for images that are not JPEG")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("inspect", help="counts, identities and images per identity of a training set")
    p.add_argument("dir", type=Path, help="directory with train.rec, train.idx, property")
    p.add_argument("--sample-out", type=Path, help="write a PNG grid of sample images here")
    p.add_argument("--samples", type=int, default=64, help="how many images in the grid")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_inspect)


# ---------------------------------------------------------------------------------------------------------
# pack


def list_image_folder(src: Path) -> list[tuple[str, list[Path]]]:
    """(identity name, sorted image paths) for each non-empty subfolder, sorted by name."""
    if not src.is_dir():
        raise DataFormatError(f"{src}: not a directory")
    identities = []
    for sub in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            identities.append((sub.name, files))
        else:
            log.warning("%s: no images, skipped", sub)
    if not identities:
        raise DataFormatError(f"{src}: no identity subfolder with images")
    return identities


def _encoded(path: Path, size: int, quality: int) -> bytes:
    data = path.read_bytes()
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DataFormatError(f"{path}: image could not be decoded")
    if img.shape[:2] != (size, size):
        raise DataFormatError(f"{path}: image is {img.shape[0]}x{img.shape[1]}, expected {size}x{size} (aligned faces)")
    if path.suffix.lower() in JPEG_SUFFIXES:
        return data  # keep the original bytes: no second lossy encoding
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataFormatError(f"{path}: could not be encoded as JPEG")
    return buf.tobytes()


def pack_folder(src: Path, out: Path, image_size: int = 112, quality: int = 95) -> dict:
    """Pack an identity-per-subfolder image folder; returns {"images", "identities"}."""
    identities = list_image_folder(src)
    n = sum(len(files) for _, files in identities)

    def samples():
        for label, (_, files) in enumerate(identities):
            for path in files:
                yield label, _encoded(path, image_size, quality)

    write_face_rec(out, samples(), num_images=n, num_classes=len(identities), image_size=(image_size, image_size))
    return {"images": n, "identities": len(identities)}


def cmd_pack(args: argparse.Namespace) -> int:
    result = pack_folder(args.src, args.out, args.image_size, args.quality)  # errors: gbcosface.cli
    print(f"packed {result['images']} images of {result['identities']} identities into {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# inspect


def summarize(train_dir: Path) -> dict:
    """Counts and images-per-identity statistics of a training set directory."""
    num_classes, h, w = read_property(train_dir)
    reader = IndexedRecordReader(train_dir / "train.idx", train_dir / "train.rec")
    layout = read_face_layout(reader)
    if layout.has_header:
        per_id = (layout.identity_ranges[:, 1] - layout.identity_ranges[:, 0]).astype(np.int64)
    else:
        labels = np.empty(layout.image_keys.size, dtype=np.int64)
        for i, key in enumerate(layout.image_keys.tolist()):
            where = f"{reader.rec_path} (key {key})"
            head, _ = unpack(reader.read(key), where)
            label = header_label(head)
            if not np.isfinite(label) or label != round(label) or not 0 <= label < num_classes:
                raise DataFormatError(f"{where}: label {label} is not a class id in [0, {num_classes})")
            labels[i] = int(label)
        per_id = np.bincount(labels, minlength=num_classes) if labels.size and labels.min() >= 0 else labels
    summary = {
        "dir": str(train_dir),
        "images": int(layout.image_keys.size),
        "identities_property": num_classes,
        "identities_header": layout.num_identities,
        "identities_with_images": int((per_id > 0).sum()),
        "has_header": layout.has_header,
        "image_size": [h, w],
        "rec_bytes": reader.rec_path.stat().st_size,
        "images_per_identity": {
            "min": int(per_id.min()),
            "median": float(np.median(per_id)),
            "mean": round(float(per_id.mean()), 3),
            "max": int(per_id.max()),
        },
    }
    reader.close()
    return summary


def write_sample_grid(train_dir: Path, out_png: Path, count: int = 64, per_row: int = 8) -> int:
    """Tile `count` evenly spaced images into a PNG (atomic); returns how many were drawn."""
    from gbcosface.data.train_set import RecordFaceDataset

    ds = RecordFaceDataset(train_dir, decoder="cv2")
    count = max(1, min(count, len(ds)))
    picks = np.linspace(0, len(ds) - 1, count).round().astype(int)
    rows = (count + per_row - 1) // per_row
    cols = min(per_row, count)
    grid = np.zeros((rows * ds.height, cols * ds.width, 3), dtype=np.uint8)
    for j, i in enumerate(picks.tolist()):
        img, _ = ds.load(i)
        r, c = divmod(j, per_row)
        grid[r * ds.height : (r + 1) * ds.height, c * ds.width : (c + 1) * ds.width] = img.permute(1, 2, 0).numpy()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    tmp = out_png.with_name(f"{out_png.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, out_png)
    return count


def cmd_inspect(args: argparse.Namespace) -> int:
    summary = summarize(args.dir)  # a DataFormatError reaches gbcosface.cli: one line, its exit code
    if args.sample_out:
        summary["sample_grid"] = {"path": str(args.sample_out), "images": write_sample_grid(args.dir, args.sample_out, args.samples)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    s = summary
    print(f"directory:       {s['dir']}")
    print(f"images:          {s['images']}")
    print(f"identities:      {s['identities_property']} (property), {s['identities_header']} (header), "
          f"{s['identities_with_images']} with images")
    print(f"header record:   {'yes' if s['has_header'] else 'no (every key is an image)'}")
    print(f"image size:      {s['image_size'][0]}x{s['image_size'][1]}")
    st = s["images_per_identity"]
    print(f"images/identity: min {st['min']}  median {st['median']}  mean {st['mean']}  max {st['max']}")
    if "sample_grid" in s:
        print(f"sample grid:     {s['sample_grid']['path']} ({s['sample_grid']['images']} images)")
    return 0
