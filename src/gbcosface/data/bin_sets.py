"""Verification sets in insightface's .bin format (LFW, CFP-FP, AgeDB-30, ...), read safely.

Why a restricted unpickler: a .bin file is a pickle of (2P encoded JPEGs, P booleans), and an ordinary
unpickler runs whatever callable the file names. These files are downloaded from third parties, so only
the few globals needed to rebuild bytes, lists and numpy arrays of plain dtypes are admitted; anything
else is refused before it can run, with an error naming the file and the global.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from gbcosface.data.errors import DataFormatError

_PLAIN_DTYPE_KINDS = set("biufc")  # bool, ints, unsigned, floats, complex; no objects, no records


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something outside the admitted plain-data globals."""


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    """Python 3 pickles bytes (protocol < 3) as `_codecs.encode(str, 'latin1')`; allow only that."""
    if encoding not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1", errors)


def _plain_dtype(*args, **kwargs):
    dtype = np.dtype(*args, **kwargs)
    if dtype.kind not in _PLAIN_DTYPE_KINDS or dtype.hasobject or dtype.fields is not None:
        raise UnsafePickleError(f"numpy dtype {dtype!r} is not a plain numeric dtype")
    return dtype


def _reconstruct():
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return core.multiarray._reconstruct, core.multiarray.scalar


_NP_RECONSTRUCT, _NP_SCALAR = _reconstruct()

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _codecs_encode,
}
for _mod in ("builtins", "__builtin__"):
    for _name, _obj in (("bytes", bytes), ("bytearray", bytearray), ("set", set), ("frozenset", frozenset)):
        _ALLOWED[(_mod, _name)] = _obj


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals in `_ALLOWED`; the file name goes into every refusal.

    Allocations are bounded too: `bytes(10**15)`, `bytearray(n)` or an ndarray of shape (10**15,) take a
    few bytes to ask for, so a size argument larger than `max_bytes` (the file's size: real data is
    always in the file) is refused before anything is allocated.
    """

    def __init__(self, file, path: str = "<pickle>", max_bytes: int | None = None, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path
        self._max_bytes = max_bytes

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key not in _ALLOWED:
            raise UnsafePickleError(f"{self._path}: refusing to load global {module}.{name} (not a plain data type)")
        obj = _ALLOWED[key]
        if self._max_bytes is None:
            return obj
        if obj is _NP_RECONSTRUCT:
            return self._bounded_reconstruct
        if obj in (bytes, bytearray):
            return lambda *args, _cls=obj: _cls(*self._bounded_args(args, f"{module}.{name}"))
        return obj

    def _bounded_args(self, args: tuple, what: str) -> tuple:
        if args and isinstance(args[0], int) and args[0] > self._max_bytes:
            raise UnsafePickleError(
                f"{self._path}: {what}({args[0]:,}) asks for more bytes than the file holds ({self._max_bytes:,})")
        return args

    def _bounded_reconstruct(self, cls, shape, dtype_code):
        try:
            count = 1
            for n in shape if isinstance(shape, tuple | list) else (shape,):
                count *= int(n)
        except (TypeError, ValueError):
            raise UnsafePickleError(f"{self._path}: an array with shape {shape!r}") from None
        if count > self._max_bytes:
            raise UnsafePickleError(
                f"{self._path}: an array of {count:,} elements is more than the file holds ({self._max_bytes:,} bytes)")
        return _NP_RECONSTRUCT(cls, shape, dtype_code)


def restricted_load(data: bytes, path: str = "<pickle>"):
    """Unpickle `data` with `RestrictedUnpickler`; `encoding='bytes'` keeps Python 2 str as bytes."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), path=path, max_bytes=len(data), encoding="bytes").load()
    except MemoryError:
        raise DataFormatError(f"{path}: asks for more memory than this machine has; not a valid .bin pickle") from None
    except UnsafePickleError as exc:
        msg = str(exc)
        raise DataFormatError(msg if msg.startswith(path) else f"{path}: {msg}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, struct.error) as exc:
        raise DataFormatError(f"{path}: not a valid .bin pickle ({type(exc).__name__}: {exc})") from None


@dataclass
class BinSet:
    """Decoded verification pairs: images[2i], images[2i+1] form pair i; issame[i] says same person."""

    images: torch.Tensor  # uint8 (2P, 3, H, W), RGB
    issame: np.ndarray  # bool (P,)
    name: str = ""


def _as_buffer(item, path: str, i: int) -> np.ndarray:
    if isinstance(item, bytes | bytearray):
        return np.frombuffer(item, dtype=np.uint8)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.reshape(-1)
    raise DataFormatError(f"{path}: image {i} is a {type(item).__name__}, expected encoded image bytes")


def load_bin(path: str | os.PathLike, image_size: int = 112) -> BinSet:
    """Load a .bin verification set: decode every image to RGB uint8 (resized if not image_size)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: .bin file not found") from None
    obj = restricted_load(data, str(path))
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise DataFormatError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    bins, issame = obj
    issame = np.asarray(list(issame) if not isinstance(issame, np.ndarray) else issame)
    if issame.ndim != 1 or issame.dtype.kind not in "bui":
        raise DataFormatError(f"{path}: issame must be a flat list of booleans, got dtype {issame.dtype}")
    if issame.dtype.kind != "b" and not np.isin(issame, (0, 1)).all():
        raise DataFormatError(f"{path}: issame must hold only 0/1 or booleans")
    if len(bins) != 2 * len(issame):
        raise DataFormatError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected twice as many)")
    images = torch.empty((len(bins), 3, image_size, image_size), dtype=torch.uint8)
    for i, item in enumerate(bins):
        img = cv2.imdecode(_as_buffer(item, str(path), i), cv2.IMREAD_COLOR)
        if img is None:
            raise DataFormatError(f"{path}: image {i} (pair {i // 2}) could not be decoded")
        if img.shape[:2] != (image_size, image_size):
            img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
        images[i] = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))
    return BinSet(images=images, issame=issame.astype(bool), name=path.stem)


def write_bin(path: str | os.PathLike, jpeg_buffers: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a .bin set (pickle of (list of bytes, list of bool)) atomically."""
    path = Path(path)
    bins = [bytes(b) for b in jpeg_buffers]
    flags = [bool(x) for x in issame]
    if len(bins) != 2 * len(flags):
        raise ValueError(f"{len(bins)} images for {len(flags)} pairs (expected twice as many)")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            pickle.dump((bins, flags), fh, protocol=4)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
