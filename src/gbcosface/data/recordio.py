"""MXNet RecordIO (.rec/.idx) reader and writer in pure Python/numpy, byte-compatible with mxnet.

Why not mxnet: mxnet 1.9 imports only beside numpy<1.24, which the training stack cannot use. The format
(docs/formats.md, "RecordIO") is small: records framed by a magic word and a length word, split where the magic
word occurs inside the payload at a 4-byte aligned offset (exactly where dmlc-core's writer splits), plus
a text index of `key<TAB>offset` lines. Reads are memory-mapped so that DataLoader workers share the page
cache instead of copying the file; the map is reopened after a fork (a child must not reuse the
parent's file position or map bookkeeping).

The insightface training layout on top of RecordIO (header record 0, identity records) is handled by
`read_face_layout` and `write_face_rec`.
"""

from __future__ import annotations

import mmap
import numbers
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gbcosface.data.errors import DataFormatError
from gbcosface.errors import clip

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrec
_LEN_BITS = 29
_LEN_MASK = (1 << _LEN_BITS) - 1
MAX_RECORD_BYTES = (1 << _LEN_BITS) - 1  # dmlc refuses records of 2^29 bytes or more

_INT64_MAX = (1 << 63) - 1
#: Header and identity labels are float32: integers above 2^24 are not exact there (write_face_rec refuses them).
MAX_LABEL_KEY = 1 << 24
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes
IR_SIZE = _IR.size


class IRHeader(NamedTuple):
    """The image record header of mxnet.recordio: `label` is a float, or a float32 array when flag > 0."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


# ---------------------------------------------------------------------------------------------------------
# Payload: IRHeader + optional float32 labels + encoded image


def pack(header: IRHeader | tuple, payload: bytes) -> bytes:
    """Pack a header and a payload like mxnet.recordio.pack.

    A scalar label is stored in the header (flag forced to 0); an array label is stored as `flag` float32
    values after the header, whose own label field is then 0.
    """
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        head = _IR.pack(0, float(header.label), int(header.id), int(header.id2))
        return head + bytes(payload)
    labels = np.asarray(header.label, dtype="<f4").ravel()
    head = _IR.pack(int(labels.size), 0.0, int(header.id), int(header.id2))
    return head + labels.tobytes() + bytes(payload)


def unpack(record: bytes | memoryview, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a packed record into its IRHeader and payload (the inverse of `pack`).

    `where` names the record (file and key) in error messages.
    """
    if len(record) < IR_SIZE:
        raise DataFormatError(f"{where}: record of {len(record)} bytes is shorter than the {IR_SIZE}-byte IRHeader")
    flag, label, id_, id2 = _IR.unpack_from(record, 0)
    if flag > 0:
        end = IR_SIZE + 4 * flag
        if len(record) < end:
            raise DataFormatError(f"{where}: IRHeader says {flag} float32 labels but the record has {len(record)} bytes")
        labels = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
        return IRHeader(flag, labels, id_, id2), bytes(record[end:])
    return IRHeader(flag, label, id_, id2), bytes(record[IR_SIZE:])


def header_label(header: IRHeader) -> float:
    """The class label of an image record: the scalar label, or the first of several labels."""
    if header.flag > 0:
        return float(np.asarray(header.label).reshape(-1)[0])
    return float(header.label)


# ---------------------------------------------------------------------------------------------------------
# Framing


def _aligned_magic_positions(payload: bytes) -> list[int]:
    """Offsets of the magic word inside `payload` at multiples of 4, where dmlc-core's writer looks."""
    hits = []
    start = 0
    while True:
        pos = payload.find(MAGIC_BYTES, start)
        if pos < 0:
            return hits
        if pos % 4 == 0:
            hits.append(pos)
            start = pos + 4
        else:
            start = pos + 1


def frame(payload: bytes) -> bytes:
    """Frame one record for a .rec file (see `frame_counted`)."""
    return frame_counted(payload)[0]


def frame_counted(payload: bytes) -> tuple[bytes, int]:
    """Frame one record for a .rec file, splitting it where the magic word occurs (aligned) in it.

    Parts are: cflag 0 (whole record), or 1 (first), 2 (middle), 3 (last); the magic word itself is not
    stored (readers re-insert it); only the end of the record is zero-padded to 4 bytes, since all split
    points are 4-byte aligned.
    """
    payload = bytes(payload)
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"RecordIO records must be under 2^29 bytes, got {len(payload)}")
    hits = _aligned_magic_positions(payload)
    out = bytearray()
    begin = 0
    for pos in hits:
        cflag = 1 if begin == 0 else 2
        out += _FRAME.pack(MAGIC, (cflag << _LEN_BITS) | (pos - begin))
        out += payload[begin:pos]
        begin = pos + 4
    cflag = 3 if hits else 0
    out += _FRAME.pack(MAGIC, (cflag << _LEN_BITS) | (len(payload) - begin))
    out += payload[begin:]
    out += b"\0" * (-len(payload) % 4)
    return bytes(out), len(hits)


def read_framed(buf: bytes | mmap.mmap | memoryview, offset: int, where: str) -> tuple[bytes, int]:
    """Read the record that starts at `offset` in `buf`; return (payload, offset of the next record).

    Split parts are rejoined with the magic word between them. `where` names file and key for errors.
    """
    size = len(buf)
    parts = []
    pos = offset
    first = True
    while True:
        if pos + 8 > size:
            raise DataFormatError(f"{where}: truncated record: frame header at byte {pos} runs past end of file ({size} bytes)")
        magic, lrec = _FRAME.unpack_from(buf, pos)
        if magic != MAGIC:
            raise DataFormatError(f"{where}: wrong magic 0x{magic:08x} at byte {pos} (expected 0x{MAGIC:08x})")
        cflag, length = lrec >> _LEN_BITS, lrec & _LEN_MASK
        if cflag > 3 or (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)):
            raise DataFormatError(f"{where}: invalid continuation flag {cflag} at byte {pos}")
        start = pos + 8
        end = start + length
        padded = start + ((length + 3) & ~3)
        if padded > size:
            raise DataFormatError(
                f"{where}: truncated record: {length} payload bytes at byte {start} run past end of file ({size} bytes)"
            )
        parts.append(buf[start:end])
        pos = padded
        first = False
        if cflag in (0, 3):
            break
    if len(parts) == 1:
        return bytes(parts[0]), pos
    return MAGIC_BYTES.join(bytes(p) for p in parts), pos


def iter_records(rec_path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, payload) for every record of a .rec file in file order (no index needed)."""
    rec_path = Path(rec_path)
    with open(rec_path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos = 0
            while pos < len(buf):
                payload, nxt = read_framed(buf, pos, f"{rec_path} (record at byte {pos})")
                yield pos, payload
                pos = nxt


# ---------------------------------------------------------------------------------------------------------
# Index


def _parse_idx_slow(text: str, idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    keys, offsets = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataFormatError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {clip(line, 80)}")
        try:
            key, off = int(fields[0]), int(fields[1])
        except ValueError:
            raise DataFormatError(f"{idx_path}:{lineno}: key and offset must be integers, got {clip(line, 80)}") from None
        if off < 0:
            raise DataFormatError(f"{idx_path}:{lineno}: negative offset {off}")
        if not (-_INT64_MAX <= key < _INT64_MAX and off < _INT64_MAX):
            raise DataFormatError(f"{idx_path}:{lineno}: key or offset does not fit in 64 bits, got {clip(line, 80)}")
        keys.append(key)
        offsets.append(off)
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def read_idx(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse a .idx file into (keys, offsets) int64 arrays in file order.

    Fast path: one vectorised numpy parse when every line is `int<TAB>int` (mxnet's own output, millions
    of lines); anything else goes through a line-by-line parse that names the first bad line.
    """
    idx_path = Path(idx_path)
    try:
        data = idx_path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{idx_path}: index file not found") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{idx_path}: index is not ASCII text (byte {exc.start})") from None
    nlines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    simple = "\r" not in text and " " not in text and "\n\n" not in text and not text.startswith("\n")
    if nlines and simple and text.count("\t") == nlines:
        try:
            flat = np.fromstring(text, dtype=np.int64, sep=" ")
        except ValueError:
            flat = None
        if flat is not None and flat.size == 2 * nlines:
            pairs = flat.reshape(nlines, 2)
            # np.fromstring saturates out-of-range numbers at the int64 limits: those go to the slow path.
            if (pairs[:, 1] >= 0).all() and not (np.abs(pairs) >= _INT64_MAX).any():
                return pairs[:, 0].copy(), pairs[:, 1].copy()
    return _parse_idx_slow(text, idx_path)


def write_idx_text(keys: Iterable, offsets: Iterable[int]) -> str:
    """Index text as mxnet writes it: `key<TAB>offset` per line."""
    return "".join(f"{k}\t{o}\n" for k, o in zip(keys, offsets, strict=True))


# ---------------------------------------------------------------------------------------------------------
# Indexed reader / writer


class IndexedRecordReader:
    """Random access to records by key through the .idx file; memory-mapped, fork-safe, picklable.

    `keys` is an int64 numpy array in index order (a Python list of millions of ints would cost GBs
    when copied into every DataLoader worker).
    """

    def __init__(self, idx_path: str | os.PathLike, rec_path: str | os.PathLike):
        self.idx_path = Path(idx_path)
        self.rec_path = Path(rec_path)
        self.keys, self._offsets = read_idx(self.idx_path)
        try:
            self._size = self.rec_path.stat().st_size
        except FileNotFoundError:
            raise DataFormatError(f"{self.rec_path}: record file not found") from None
        self._build_lookup()
        # `offsets > size - 8`, not `offsets + 8 > size`: an offset near 2^63 must not wrap around.
        bad = np.nonzero(self._offsets > self._size - 8)[0]
        if bad.size:
            i = int(bad[0])
            raise DataFormatError(
                f"{self.idx_path}: key {int(self.keys[i])} (line {i + 1}) has offset {int(self._offsets[i])} "
                f"beyond the end of {self.rec_path} ({self._size} bytes)"
            )
        self._pid = -1
        self._fh = None
        self._buf: mmap.mmap | None = None

    def _build_lookup(self) -> None:
        keys = self.keys
        n = keys.size
        # Contiguous keys (the usual 0..N or 1..N) need no search structure at all.
        if n and int(keys[-1]) - int(keys[0]) == n - 1 and (n == 1 or bool((np.diff(keys) == 1).all())):
            self._first = int(keys[0])
            self._order = None
            self._sorted = None
            return
        self._first = None
        order = np.argsort(keys, kind="stable")
        skeys = keys[order]
        dup = np.nonzero(np.diff(skeys) == 0)[0]
        if dup.size:
            key = int(skeys[dup[0]])
            lines = (np.nonzero(keys == key)[0] + 1).tolist()
            raise DataFormatError(f"{self.idx_path}: duplicate key {key} on lines {lines}")
        self._order = order
        self._sorted = skeys

    def position(self, key: int) -> int:
        """Index (line) position of `key`, or -1 when absent."""
        key = int(key)
        if self._first is not None:
            i = key - self._first
            return i if 0 <= i < self.keys.size else -1
        i = int(np.searchsorted(self._sorted, key))
        if i < self._sorted.size and int(self._sorted[i]) == key:
            return int(self._order[i])
        return -1

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Vectorised membership test of many keys."""
        keys = np.asarray(keys, dtype=np.int64)
        if self._first is not None:
            return (keys >= self._first) & (keys < self._first + self.keys.size)
        if self._sorted.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        i = np.clip(np.searchsorted(self._sorted, keys), 0, self._sorted.size - 1)
        return self._sorted[i] == keys

    def __contains__(self, key: int) -> bool:
        return self.position(key) >= 0

    def __len__(self) -> int:
        return int(self.keys.size)

    def _buffer(self) -> mmap.mmap:
        pid = os.getpid()
        if self._buf is None or self._pid != pid:
            # After a fork the child opens its own map (the parent's handle state is not shared safely).
            self._fh = open(self.rec_path, "rb")  # noqa: SIM115 - held open for the map's lifetime
            self._buf = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._pid = pid
        return self._buf

    def offset(self, key: int) -> int:
        i = self.position(key)
        if i < 0:
            raise KeyError(f"{self.idx_path}: no key {key}")
        return int(self._offsets[i])

    def read(self, key: int) -> bytes:
        """The record stored under `key` (the packed payload, split parts rejoined)."""
        off = self.offset(key)
        payload, _ = read_framed(self._buffer(), off, f"{self.rec_path} (key {int(key)})")
        return payload

    def read_at(self, position: int) -> bytes:
        """The record of the `position`-th index line."""
        key = int(self.keys[position])
        payload, _ = read_framed(self._buffer(), int(self._offsets[position]), f"{self.rec_path} (key {key})")
        return payload

    def close(self) -> None:
        if self._buf is not None and self._pid == os.getpid():
            self._buf.close()
            self._fh.close()
        self._buf = None
        self._fh = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_buf=None, _fh=None, _pid=-1)
        return state

    def __enter__(self) -> IndexedRecordReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class IndexedRecordWriter:
    """Write records with an index; both files appear atomically on close (tmp files + os.replace).

    On an exception inside `with`, the temporary files are removed and nothing at the target paths
    changes.
    """

    def __init__(self, idx_path: str | os.PathLike, rec_path: str | os.PathLike):
        self.idx_path = Path(idx_path)
        self.rec_path = Path(rec_path)
        suffix = f".tmp-{os.getpid()}"
        self._idx_tmp = self.idx_path.with_name(self.idx_path.name + suffix)
        self._rec_tmp = self.rec_path.with_name(self.rec_path.name + suffix)
        self._rec = open(self._rec_tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._keys: list = []
        self._offsets: list[int] = []
        self._seen: set = set()
        self._pos = 0
        self.split_records = 0  # records that contained the magic word and were split

    def write(self, key: int | str, record: bytes) -> None:
        """Append `record` (usually `pack(header, image)`) under `key`."""
        if self._rec is None:
            raise ValueError("writer is closed")
        if key in self._seen:
            raise ValueError(f"{self.idx_path}: key {key} written twice")
        framed, splits = frame_counted(record)
        self.split_records += bool(splits)
        self._seen.add(key)
        self._keys.append(key)
        self._offsets.append(self._pos)
        self._rec.write(framed)
        self._pos += len(framed)

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        """Finish both files and move them into place."""
        if self._rec is None:
            return
        self._rec.flush()
        os.fsync(self._rec.fileno())
        self._rec.close()
        self._rec = None
        with open(self._idx_tmp, "w", encoding="ascii") as fh:
            fh.write(write_idx_text(self._keys, self._offsets))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(self._rec_tmp, self.rec_path)
        os.replace(self._idx_tmp, self.idx_path)

    def abort(self) -> None:
        """Drop what was written; the target paths are untouched."""
        if self._rec is not None:
            self._rec.close()
            self._rec = None
        for tmp in (self._rec_tmp, self._idx_tmp):
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> IndexedRecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------------------------------------
# property file


def read_property(directory: str | os.PathLike) -> tuple[int, int, int]:
    """(num_classes, height, width) from `directory/property` ("C,H,W")."""
    path = Path(directory) / "property"
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: property file not found (expected 'num_classes,height,width')") from None
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}:1: property file is not ASCII text") from None
    fields = [f.strip() for f in text.split(",")]
    try:
        values = [int(f) for f in fields]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) <= 0:
        raise DataFormatError(f"{path}:1: expected 'num_classes,height,width' with positive integers, got {text!r}")
    return values[0], values[1], values[2]


def write_property(directory: str | os.PathLike, num_classes: int, h: int, w: int) -> None:
    """Write `directory/property` atomically."""
    path = Path(directory) / "property"
    tmp = path.with_name(f"property.tmp-{os.getpid()}")
    tmp.write_text(f"{int(num_classes)},{int(h)},{int(w)}\n", encoding="ascii")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# insightface training-set layout


@dataclass(frozen=True)
class FaceLayout:
    """Which index keys are images, and the identity ranges when the header record provides them."""

    image_keys: np.ndarray  # int64, in index order
    has_header: bool
    num_identities: int | None  # from the header (None without a header)
    identity_ranges: np.ndarray | None  # (C, 2) int64 [start, end) image keys per identity


def read_face_layout(reader: IndexedRecordReader) -> FaceLayout:
    """Interpret record 0 as insightface's header when its flag > 0, else treat every key as an image.

    Checks that the header agrees with the index: every image key 1..N and identity key N+1..N+C must
    exist.
    """
    where = f"{reader.rec_path} (key 0)"
    if 0 not in reader:
        return FaceLayout(reader.keys.copy(), False, None, None)
    head, _ = unpack(reader.read(0), where)
    if head.flag == 0:
        return FaceLayout(reader.keys.copy(), False, None, None)
    labels = np.asarray(head.label, dtype=np.float64).ravel()
    if labels.size < 2 or not _whole(labels[:2]):
        raise DataFormatError(
            f"{where}: header record labels must be (N+1, N+1+C) integers, got {labels[:2].tolist()}")
    first_id, end_id = int(labels[0]), int(labels[1])
    if first_id < 1 or end_id < first_id:
        raise DataFormatError(f"{where}: header record labels ({first_id}, {end_id}) are not a valid (N+1, N+1+C)")

    image_keys = np.arange(1, first_id, dtype=np.int64)
    id_keys = np.arange(first_id, end_id, dtype=np.int64)
    for kind, keys in (("image", image_keys), ("identity", id_keys)):
        present = reader.contains(keys)
        if not present.all():
            missing = int(keys[np.argmin(present)])
            raise DataFormatError(
                f"{where}: header says {kind} records span keys {int(keys[0])}..{int(keys[-1])} "
                f"but {reader.idx_path} has no key {missing} (header disagrees with the index)"
            )
    extra = reader.keys.size - 1 - image_keys.size - id_keys.size
    if extra != 0:
        raise DataFormatError(
            f"{where}: header says {image_keys.size} images and {id_keys.size} identities, but "
            f"{reader.idx_path} has {reader.keys.size} keys (header disagrees with the index)"
        )
    ranges = np.zeros((id_keys.size, 2), dtype=np.int64)
    for i, key in enumerate(id_keys.tolist()):
        h, _ = unpack(reader.read(key), f"{reader.rec_path} (key {key})")
        lab = np.asarray(h.label, dtype=np.float64).ravel()
        if h.flag < 2 or lab.size < 2:
            raise DataFormatError(f"{reader.rec_path} (key {key}): identity record must carry (start, end) labels")
        if not _whole(lab[:2]) or not 1 <= lab[0] <= lab[1] <= first_id:
            raise DataFormatError(
                f"{reader.rec_path} (key {key}): identity record range {lab[:2].tolist()} is not a [start, end) of "
                f"image keys within 1..{first_id}"
            )
        ranges[i] = (int(lab[0]), int(lab[1]))
    return FaceLayout(image_keys, True, int(id_keys.size), ranges)


def _whole(values: np.ndarray) -> bool:
    """Finite integers that a float32 label holds exactly (no inf, NaN, 1e30 or 2.5)."""
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values))
                and np.all(np.abs(values) <= MAX_LABEL_KEY))


def write_face_rec(
    out_dir: str | os.PathLike,
    samples: Iterable[tuple[int, bytes]],
    num_images: int,
    num_classes: int,
    image_size: tuple[int, int] = (112, 112),
    prefix: str = "train",
) -> Path:
    """Write an insightface-style training set: `<prefix>.rec/.idx` with header record and `property`.

    `samples` yields (label, encoded image) grouped by label in order 0..C-1 (every class non-empty), so
    that each identity is one contiguous key range. Counts are needed up front because record 0 comes
    first in the file, as in insightface's files. Everything appears atomically; on error nothing does.
    """
    out = Path(out_dir)
    n, c = int(num_images), int(num_classes)
    if n + 1 + c > 1 << 24:
        # Header labels are float32 (the format's choice): above 2^24 they can no longer be exact.
        raise ValueError(f"N+1+C = {n + 1 + c} exceeds 2^24, which float32 header labels cannot hold exactly")
    out.mkdir(parents=True, exist_ok=True)
    ranges: list[tuple[int, int]] = []
    with IndexedRecordWriter(out / f"{prefix}.idx", out / f"{prefix}.rec") as writer:
        writer.write(0, pack(IRHeader(2, np.array([n + 1, n + 1 + c], np.float32), 0, 0), b""))
        key = 0
        current = -1
        start = 0
        for label, image in samples:
            key += 1
            if key > n:
                raise ValueError(f"more than num_images={n} samples")
            label = int(label)
            if label == current + 1:
                if current >= 0:
                    ranges.append((start, key))
                start = key
                current = label
            elif label != current:
                raise ValueError(f"sample {key}: labels must be grouped in order 0..C-1, got {label} after {current}")
            writer.write(key, pack(IRHeader(0, float(label), key, 0), image))
        if key != n:
            raise ValueError(f"got {key} samples, expected num_images={n}")
        if current >= 0:
            ranges.append((start, n + 1))
        if len(ranges) != c:
            raise ValueError(f"got {len(ranges)} classes, expected num_classes={c}")
        for i, (start, end) in enumerate(ranges):
            writer.write(n + 1 + i, pack(IRHeader(2, np.array([start, end], np.float32), n + 1 + i, 0), b""))
    write_property(out, c, image_size[0], image_size[1])
    return out
