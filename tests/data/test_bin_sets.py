"""The .bin verification format and its restricted unpickler (a hostile pickle must not run)."""

from __future__ import annotations

import os
import pickle
import struct

import cv2
import numpy as np
import pytest
import torch

from gbcosface.data.bin_sets import load_bin, restricted_load, write_bin
from gbcosface.data.errors import DataFormatError


def _rgb(jpeg: bytes) -> torch.Tensor:
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return torch.from_numpy(bgr[:, :, ::-1].transpose(2, 0, 1).copy())


def test_round_trip(tmp_path, make_jpeg):
    jpegs = [make_jpeg(i) for i in range(6)]
    write_bin(tmp_path / "lfw.bin", jpegs, [True, False, True])
    assert [p.name for p in tmp_path.iterdir()] == ["lfw.bin"]
    bs = load_bin(tmp_path / "lfw.bin")
    assert bs.images.shape == (6, 3, 112, 112) and bs.images.dtype == torch.uint8
    assert bs.issame.dtype == bool and bs.issame.tolist() == [True, False, True] and bs.name == "lfw"
    for i, jpeg in enumerate(jpegs):
        assert torch.equal(bs.images[i], _rgb(jpeg))
    # plain pickle of the same content: the file is an ordinary (bins, issame) pickle
    with open(tmp_path / "lfw.bin", "rb") as fh:
        bins, issame = pickle.load(fh)
    assert bins == jpegs and issame == [True, False, True]


def test_resizes_other_sizes(tmp_path, make_jpeg):
    write_bin(tmp_path / "a.bin", [make_jpeg(0, size=120), make_jpeg(1, size=120)], [True])
    bs = load_bin(tmp_path / "a.bin", image_size=112)
    assert bs.images.shape == (2, 3, 112, 112)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil(marker), b"x"], [True]), protocol=2))
    with pytest.raises(DataFormatError, match=r"evil\.bin: refusing to load global (posix|os)\.system"):
        load_bin(path)
    assert not marker.exists()
    # sanity: an unrestricted unpickler would have run it
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "payload, global_name",
    [
        (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
        (b"csubprocess\nPopen\n(S'true'\ntR.", "subprocess.Popen"),
        (b"cnumpy\nload\n(S'x'\ntR.", "numpy.load"),
    ],
)
def test_other_globals_refused(tmp_path, payload, global_name):
    with pytest.raises(DataFormatError, match=rf"f\.bin: refusing to load global {global_name}"):
        restricted_load(payload, str(tmp_path / "f.bin"))


def test_python2_style_pickle_with_str_images(tmp_path, make_jpeg):
    """A protocol-2 pickle as Python 2 wrote it: images as `str` (SHORT_BINSTRING / BINSTRING)."""
    jpegs = [make_jpeg(0), make_jpeg(1)]

    def py2_str(b: bytes) -> bytes:
        return b"T" + struct.pack("<i", len(b)) + b if len(b) > 255 else b"U" + bytes([len(b)]) + b

    data = b"\x80\x02]q\x00(" + b"".join(py2_str(j) for j in jpegs) + b"e]q\x01(\x88e\x86q\x02."
    (tmp_path / "py2.bin").write_bytes(data)
    bs = load_bin(tmp_path / "py2.bin")
    assert bs.issame.tolist() == [True]
    assert torch.equal(bs.images[1], _rgb(jpegs[1]))


@pytest.mark.parametrize("protocol, numpy1_names", [(2, False), (4, False), (2, True)])
def test_numpy_array_content(tmp_path, make_jpeg, protocol, numpy1_names):
    jpegs = [np.frombuffer(make_jpeg(i), np.uint8).copy() for i in range(4)]
    data = pickle.dumps((jpegs, np.array([False, True])), protocol=protocol)
    if numpy1_names:  # how numpy 1.x names its reconstructor
        assert b"cnumpy._core.multiarray\n" in data  # protocol 2: GLOBAL opcode with text names
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "np.bin").write_bytes(data)
    bs = load_bin(tmp_path / "np.bin")
    assert bs.issame.tolist() == [False, True]
    assert torch.equal(bs.images[3], _rgb(jpegs[3].tobytes()))


def test_object_arrays_refused(tmp_path):
    data = pickle.dumps(([np.array([b"a", None], dtype=object)] * 2, [True]), protocol=2)
    with pytest.raises(DataFormatError, match=r"o\.bin: .*not a plain numeric dtype"):
        restricted_load(data, str(tmp_path / "o.bin"))


def test_codecs_encode_only_latin1(tmp_path):
    ok = restricted_load(pickle.dumps(b"\x00\xff", protocol=2), "x.bin")
    assert ok == b"\x00\xff"
    bad = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DataFormatError, match="x.bin: .*encoding 'rot13' is not allowed"):
        restricted_load(bad, "x.bin")


def test_undecodable_image_and_bad_shapes(tmp_path, make_jpeg):
    write_bin(tmp_path / "bad.bin", [make_jpeg(0), b"garbage", make_jpeg(1), make_jpeg(2)], [True, False])
    with pytest.raises(DataFormatError, match=r"bad\.bin: image 1 \(pair 0\) could not be decoded"):
        load_bin(tmp_path / "bad.bin")
    (tmp_path / "count.bin").write_bytes(pickle.dumps(([make_jpeg(0)] * 3, [True])))
    with pytest.raises(DataFormatError, match=r"count\.bin: 3 images for 1 pairs"):
        load_bin(tmp_path / "count.bin")
    (tmp_path / "trunc.bin").write_bytes(pickle.dumps(([make_jpeg(0)] * 2, [True]))[:-30])
    with pytest.raises(DataFormatError, match=r"trunc\.bin: not a valid \.bin pickle"):
        load_bin(tmp_path / "trunc.bin")
    with pytest.raises(DataFormatError, match=r"missing\.bin: \.bin file not found"):
        load_bin(tmp_path / "missing.bin")
    with pytest.raises(ValueError):
        write_bin(tmp_path / "x.bin", [b"a"], [True])
