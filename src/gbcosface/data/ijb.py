"""IJB-B / IJB-C metadata (insightface's release layout) reader and writer, plus image loading.

Layout (docs/formats.md, "IJB-B / IJB-C"): `ROOT/loose_crop/<name>` images and
`ROOT/meta/<t>_face_tid_mid.txt` (name template media), `ROOT/meta/<t>_name_5pts_score.txt`
(name x1 y1 ... x5 y5 score) and `ROOT/meta/<t>_template_pair_label.txt` (t1 t2 label), t = ijbb | ijbc;
for 1:N identification `ROOT/meta/<t>_1N_gallery_{G1,G2 | S1,S2}.csv` and `<t>_1N_probe_mixed.csv`
(NIST's CSVs: a header, then TEMPLATE_ID,SUBJECT_ID,FILENAME,... one row per image).

Why this parser: IJB-C has 469k image lines and 15.7M pair lines. numpy's C `loadtxt` parses them in a
few seconds; when it rejects a file (or a column count is off) a line-by-line pass finds the first bad
line so that the error names `file:line`.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gbcosface.data.align import align_face
from gbcosface.data.errors import DataFormatError
from gbcosface.errors import clip

TARGETS = ("ijbb", "ijbc")
# What loadtxt accepts per field (Python's int()/float() also take '1_000' and ids past int64, which
# loadtxt refuses: the line-by-line pass must refuse the same fields to name the line).
_INT_FIELD = re.compile(r"[+-]?[0-9]+")
_FLOAT_FIELD = re.compile(r"(?i)[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?|nan|inf|infinity)")


@dataclass
class IJBMeta:
    """All IJB metadata as arrays; row i of the image arrays describes `images[i]`."""

    images: list[str]  # image names under loose_crop/, in face_tid_mid order
    templates: np.ndarray  # int64 (N,)
    medias: np.ndarray  # int64 (N,)
    landmarks: np.ndarray  # float32 (N, 5, 2), pixel (x, y) in the loose crop
    det_scores: np.ndarray  # float32 (N,)
    pair_t1: np.ndarray  # int64 (P,)
    pair_t2: np.ndarray  # int64 (P,)
    pair_label: np.ndarray  # int64 (P,), 1 = genuine, 0 = impostor


def normalize_target(target: str) -> str:
    """'ijbb' | 'ijbc' from any case ('IJBC' etc.)."""
    t = str(target).lower().replace("-", "")
    if t not in TARGETS:
        raise ValueError(f"IJB target must be one of ijbb, ijbc (any case), got {target!r}")
    return t


def meta_paths(root: str | os.PathLike, target: str) -> tuple[Path, Path, Path]:
    """(face_tid_mid, name_5pts_score, template_pair_label) paths for `target` under `root/meta`."""
    t = normalize_target(target)
    meta = Path(root) / "meta"
    return (meta / f"{t}_face_tid_mid.txt", meta / f"{t}_name_5pts_score.txt", meta / f"{t}_template_pair_label.txt")


def image_path(root: str | os.PathLike, name: str) -> Path:
    """Where image `name` lives: `root/loose_crop/name` (a name that would lead outside is refused)."""
    problem = _unsafe_name(name)
    if problem:
        raise DataFormatError(f"{Path(root) / 'loose_crop'}: image name {clip(name)} {problem}; refusing it")
    return Path(root) / "loose_crop" / name


# ---------------------------------------------------------------------------------------------------------
# parsing


def _read_text(path: Path) -> str:
    """The file's text without trailing blank lines; a blank line inside is an error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: IJB meta file not found") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 text") from None
    text = text.rstrip().replace("\r\n", "\n")
    # Empty lines are found here with a fast substring search; whitespace-only lines make the
    # numeric parse fail and are then reported by its line-by-line pass.
    if text.startswith("\n"):
        raise DataFormatError(f"{path}:1: empty line")
    pos = text.find("\n\n")
    if pos >= 0:
        raise DataFormatError(f"{path}:{text.count(chr(10), 0, pos) + 2}: empty line")
    return text


def _parse_numeric(path: Path, text: str, ncols: int, dtype, what: str, line_offset: int = 0) -> np.ndarray:
    """Parse lines of `ncols` whitespace-separated numbers into an (n, ncols) array.

    `line_offset` is the number of leading fields already removed (for messages).
    """
    if not text:
        return np.zeros((0, ncols), dtype=dtype)
    nrows = text.count("\n") + 1
    try:
        arr = np.loadtxt(io.StringIO(text), dtype=dtype, comments=None, ndmin=2)
    except ValueError:
        arr = None
    if arr is not None and arr.shape == (nrows, ncols):
        return arr
    integer = np.issubdtype(dtype, np.integer)
    field_re = _INT_FIELD if integer else _FLOAT_FIELD
    for i, row in enumerate(text.split("\n")):
        fields = row.split()
        if len(fields) != ncols:
            raise DataFormatError(
                f"{path}:{i + 1}: expected {what} ({ncols + line_offset} fields), got {len(fields) + line_offset}: "
                f"{clip(row)}"
            )
        for f in fields:
            if not field_re.fullmatch(f):
                raise DataFormatError(f"{path}:{i + 1}: expected {what}, got non-numeric field {clip(f, 40)} in "
                                      f"{clip(row)}")
            if integer and (len(f) > 20 or not -(1 << 63) <= int(f) < 1 << 63):
                raise DataFormatError(f"{path}:{i + 1}: expected {what}, got {clip(f, 40)}, which does not fit in "
                                      f"64 bits, in {clip(row)}")
    raise DataFormatError(f"{path}: could not parse as {what}")  # pragma: no cover - loadtxt and the check disagree


def _parse_named(path: Path, ncols: int, dtype, what: str) -> tuple[list[str], np.ndarray]:
    """Lines of `name n1 ... n_ncols`: (names, (n, ncols) array)."""
    text = _read_text(path)
    names, rows = [], []
    for line in text.split("\n") if text else []:
        parts = line.split(None, 1)
        names.append(parts[0])
        rows.append(parts[1] if len(parts) == 2 else "")
    return names, _parse_numeric(path, "\n".join(rows), ncols, dtype, what, line_offset=1)


def read_ijb_meta(root: str | os.PathLike, target: str, pairs: bool = True) -> IJBMeta:
    """Read and cross-check the three meta files of `target` under `root` (without the pair file if not `pairs`)."""
    tid_path, pts_path, pair_path = meta_paths(root, target)
    images, tm = _parse_named(tid_path, 2, np.int64, "'name template_id media_id'")
    pts_names, pts = _parse_named(pts_path, 11, np.float64, "'name x1 y1 ... x5 y5 score'")
    if len(pts_names) != len(images):
        raise DataFormatError(f"{pts_path}: {len(pts_names)} lines but {tid_path} has {len(images)} (they must match)")
    if pts_names != images:
        i = next(i for i, (a, b) in enumerate(zip(images, pts_names, strict=True)) if a != b)
        raise DataFormatError(
            f"{pts_path}:{i + 1}: image {clip(pts_names[i])} but {tid_path}:{i + 1} has {clip(images[i])}")
    for i, name in enumerate(images):
        problem = _unsafe_name(name)
        if problem:
            raise DataFormatError(f"{tid_path}:{i + 1}: image name {clip(name)} {problem}; refusing it")
    bad = np.flatnonzero(~np.isfinite(pts).all(axis=1))
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(f"{pts_path}:{i + 1}: landmarks and score of {clip(images[i])} must be finite numbers, "
                              f"got {pts[i].tolist()}")
    if not pairs:
        return IJBMeta(images=images, templates=tm[:, 0].copy(), medias=tm[:, 1].copy(),
                       landmarks=pts[:, :10].astype(np.float32).reshape(-1, 5, 2),
                       det_scores=pts[:, 10].astype(np.float32), pair_t1=np.zeros(0, np.int64),
                       pair_t2=np.zeros(0, np.int64), pair_label=np.zeros(0, np.int64))
    pairs = _parse_numeric(pair_path, _read_text(pair_path), 3, np.int64, "'template1 template2 label'")
    bad = np.nonzero((pairs[:, 2] != 0) & (pairs[:, 2] != 1))[0]
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(f"{pair_path}:{i + 1}: label must be 0 or 1, got {int(pairs[i, 2])}")
    for col in (0, 1):
        missing = np.nonzero(~_member(pairs[:, col], tm[:, 0]))[0]
        if missing.size:
            i = int(missing[0])
            raise DataFormatError(f"{pair_path}:{i + 1}: template {int(pairs[i, col])} has no image in {tid_path}")
    return IJBMeta(
        images=images,
        templates=tm[:, 0].copy(),
        medias=tm[:, 1].copy(),
        landmarks=pts[:, :10].astype(np.float32).reshape(-1, 5, 2),
        det_scores=pts[:, 10].astype(np.float32),
        pair_t1=pairs[:, 0].copy(),
        pair_t2=pairs[:, 1].copy(),
        pair_label=pairs[:, 2].copy(),
    )


def _unsafe_name(name: str) -> str | None:
    """Why an image name from a meta file cannot be opened under `ROOT/loose_crop/`, or None.

    The meta files come with a downloaded dataset: a name such as `/etc/passwd` or `../../x` must not
    make the evaluator open a file outside the dataset root.
    """
    if name.startswith("/") or "\\" in name or "\x00" in name or re.match(r"[A-Za-z]:", name):
        return "is an absolute path (names are relative to loose_crop/)"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' path segment (it would lead outside loose_crop/)"
    return None


def _member(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """values in known; a lookup table when ids are small non-negative ints (IJB's are), else isin."""
    if known.size and values.size and known.min() >= 0 and known.max() < 1 << 26:
        table = np.zeros(int(known.max()) + 1, dtype=bool)
        table[known] = True
        inside = (values >= 0) & (values < table.size)
        return inside & table[np.where(inside, values, 0)]
    return np.isin(values, known)


# ---------------------------------------------------------------------------------------------------------
# 1:N identification protocol files

GALLERIES_1N = {"ijbb": ("S1", "S2"), "ijbc": ("G1", "G2")}
ID_HEADER = ("TEMPLATE_ID", "SUBJECT_ID")


@dataclass
class IJB1NSet:
    """One 1:N protocol file: its templates (sorted, unique) and their subject ids."""

    path: Path
    templates: np.ndarray  # int64 (T,)
    subjects: np.ndarray  # int64 (T,)
    lines: np.ndarray  # int64 (T,): 1-based line of each template's first row (for messages)


@dataclass
class IJB1NMeta:
    """The galleries (e.g. G1, G2 of IJB-C; S1, S2 of IJB-B) and the mixed probe set of a target."""

    galleries: dict[str, IJB1NSet]
    probes: IJB1NSet


def meta_paths_1n(root: str | os.PathLike, target: str) -> dict[str, Path]:
    """{gallery name or 'probe': path} of the 1:N files, e.g. `meta/ijbc_1N_gallery_G1.csv`."""
    t = normalize_target(target)
    meta = Path(root) / "meta"
    paths = {g: meta / f"{t}_1N_gallery_{g}.csv" for g in GALLERIES_1N[t]}
    paths["probe"] = meta / f"{t}_1N_probe_mixed.csv"
    return paths


def read_ijb_1n_set(path: str | os.PathLike) -> IJB1NSet:
    """Read a 1:N protocol CSV: a header (TEMPLATE_ID,SUBJECT_ID,...), then one row per image of a template.

    Only the first two columns are used (the NIST files go on with FILENAME, SIGHTING_ID and the face box).
    A template's rows must all name the same subject.
    """
    path = Path(path)
    text = _read_text(path)
    if not text:
        raise DataFormatError(f"{path}:1: empty file (expected a header TEMPLATE_ID,SUBJECT_ID,...)")
    head, _, body = text.partition("\n")
    cols = [c.strip().strip('"').upper() for c in head.split(",")]
    if tuple(cols[:2]) != ID_HEADER:
        raise DataFormatError(f"{path}:1: expected a header starting TEMPLATE_ID,SUBJECT_ID, got {head[:80]!r}")
    rows = [line.split(",", 2)[:2] for line in body.split("\n")] if body else []
    try:
        arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
    except ValueError:
        for i, r in enumerate(rows):
            try:
                if len(r) != 2:
                    raise ValueError
                int(r[0]), int(r[1])
            except ValueError:
                raise DataFormatError(f"{path}:{i + 2}: expected integer TEMPLATE_ID,SUBJECT_ID,..., "
                                      f"got {body.split(chr(10))[i][:80]!r}") from None
        raise  # pragma: no cover - numpy and the line check disagree
    templates, first, inverse = np.unique(arr[:, 0], return_index=True, return_inverse=True)
    subjects = arr[first, 1]
    clash = np.flatnonzero(arr[:, 1] != subjects[inverse])
    if clash.size:
        i = int(clash[0])
        raise DataFormatError(f"{path}:{i + 2}: template {arr[i, 0]} has subject {arr[i, 1]}, but line "
                              f"{first[inverse[i]] + 2} gives it subject {subjects[inverse[i]]}")
    return IJB1NSet(path=path, templates=templates, subjects=subjects, lines=first + 2)


def read_ijb_1n_meta(root: str | os.PathLike, target: str, known_templates: np.ndarray | None = None) -> IJB1NMeta:
    """Read and cross-check the 1:N files of `target` (galleries and mixed probes) under `root/meta`.

    Each gallery must hold one template per subject; with `known_templates` (the face_tid_mid templates),
    every template must have images.
    """
    paths = meta_paths_1n(root, target)
    sets = {name: read_ijb_1n_set(p) for name, p in paths.items()}
    for name, s in sets.items():
        if name != "probe":
            order = np.argsort(s.subjects, kind="stable")
            dup = np.flatnonzero(s.subjects[order][1:] == s.subjects[order][:-1])
            if dup.size:
                a, b = order[dup[0]], order[dup[0] + 1]
                raise DataFormatError(f"{s.path}:{max(s.lines[a], s.lines[b])}: subject {s.subjects[b]} has a "
                                      f"second gallery template ({s.templates[b]}; line {min(s.lines[a], s.lines[b])} "
                                      f"has {s.templates[a]}): a gallery holds one template per subject")
        if known_templates is not None:
            unknown = np.flatnonzero(~_member(s.templates, np.asarray(known_templates)))
            if unknown.size:
                i = int(unknown[np.argmin(s.lines[unknown])])
                tid = paths["probe"].parent / f"{normalize_target(target)}_face_tid_mid.txt"
                raise DataFormatError(f"{s.path}:{s.lines[i]}: template {s.templates[i]} has no image in {tid}")
    probes = sets.pop("probe")
    return IJB1NMeta(galleries=sets, probes=probes)


def write_ijb_1n_meta(root: str | os.PathLike, target: str, galleries: dict[str, tuple[np.ndarray, np.ndarray]],
                      probes: tuple[np.ndarray, np.ndarray], filenames: dict[int, list[str]] | None = None) -> None:
    """Write the 1:N CSVs of `target` (each atomically) in the NIST layout, one row per image of a template.

    `galleries` maps the target's gallery names to (templates, subjects); `filenames` (template -> image
    names) fills the FILENAME column; without it each template gets one row with an empty one.
    """
    t = normalize_target(target)
    paths = meta_paths_1n(root, t)
    if set(galleries) != set(GALLERIES_1N[t]):
        raise ValueError(f"{t} galleries are {GALLERIES_1N[t]}, got {sorted(galleries)}")
    paths["probe"].parent.mkdir(parents=True, exist_ok=True)
    for name, (templates, subjects) in [*galleries.items(), ("probe", probes)]:
        lines = ["TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT"]
        for tmpl, subj in zip(np.asarray(templates).tolist(), np.asarray(subjects).tolist(), strict=True):
            for fname in (filenames or {}).get(tmpl, [""]):
                lines.append(f"{tmpl},{subj},{fname},,,,,")
        _atomic_write_text(paths[name], "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------
# writing


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _float32_text(values: np.ndarray) -> list[str]:
    # str() of a numpy float32 is its shortest round-tripping decimal form.
    return [str(v) for v in np.asarray(values, dtype=np.float32).ravel()]


def write_ijb_meta(
    root: str | os.PathLike,
    target: str,
    images: list[str],
    templates: np.ndarray,
    medias: np.ndarray,
    landmarks: np.ndarray,
    det_scores: np.ndarray,
    pair_t1: np.ndarray,
    pair_t2: np.ndarray,
    pair_label: np.ndarray,
) -> None:
    """Write the three meta files of `target` under `root/meta` (each atomically).

    Landmarks and scores are written in their shortest float32 form, so they read back bit-exactly.
    """
    n = len(images)
    templates, medias = np.asarray(templates, np.int64), np.asarray(medias, np.int64)
    landmarks = np.asarray(landmarks, np.float32).reshape(n, 10)
    det_scores = np.asarray(det_scores, np.float32)
    t1, t2, lab = (np.asarray(a, np.int64) for a in (pair_t1, pair_t2, pair_label))
    if templates.shape != (n,) or medias.shape != (n,) or det_scores.shape != (n,):
        raise ValueError(f"templates, medias and det_scores must have one entry per image ({n})")
    if not (t1.shape == t2.shape == lab.shape and t1.ndim == 1):
        raise ValueError("pair_t1, pair_t2 and pair_label must be equally long 1-D arrays")
    for name in images:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"image name {name!r} must be non-empty without whitespace")
    tid_path, pts_path, pair_path = meta_paths(root, target)
    tid_path.parent.mkdir(parents=True, exist_ok=True)
    tid = "".join(f"{name} {t} {m}\n" for name, t, m in zip(images, templates.tolist(), medias.tolist(), strict=True))
    lm_text = _float32_text(landmarks)
    sc_text = _float32_text(det_scores)
    pts = "".join(
        f"{name} {' '.join(lm_text[10 * i : 10 * i + 10])} {sc_text[i]}\n" for i, name in enumerate(images)
    )
    pairs = "".join(f"{a} {b} {c}\n" for a, b, c in zip(t1.tolist(), t2.tolist(), lab.tolist(), strict=True))
    _atomic_write_text(tid_path, tid)
    _atomic_write_text(pts_path, pts)
    _atomic_write_text(pair_path, pairs)


# ---------------------------------------------------------------------------------------------------------
# images


def load_ijb_image(root: str | os.PathLike, name: str) -> np.ndarray:
    """Decode `root/loose_crop/name` to BGR uint8; a missing or undecodable file names its path."""
    path = image_path(root, name)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: IJB image {name!r} not found") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise DataFormatError(f"{path}: IJB image {name!r} could not be decoded")
    return img


def load_aligned(root: str | os.PathLike, meta: IJBMeta, index: int, size: int = 112) -> np.ndarray:
    """Image `index` of `meta`, aligned with its 5 landmarks: RGB uint8 (size, size, 3)."""
    img = load_ijb_image(root, meta.images[index])
    return align_face(img, meta.landmarks[index], size=size)
