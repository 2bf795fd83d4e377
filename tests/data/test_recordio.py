"""RecordIO: exact bytes of headers and frames (built independently with struct), round trips, bad input."""

from __future__ import annotations

import multiprocessing
import pickle
import struct

import numpy as np
import pytest

from gbcosface.data.errors import DataFormatError
from gbcosface.data.recordio import (
    MAGIC,
    IndexedRecordReader,
    IndexedRecordWriter,
    IRHeader,
    frame,
    iter_records,
    pack,
    read_face_layout,
    read_idx,
    read_property,
    unpack,
    write_face_rec,
    write_property,
)

M = struct.pack("<I", 0xCED7230A)


def lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", (cflag << 29) | length)


# ---------------------------------------------------------------------------------------------------------
# payload header


def test_pack_scalar_label_matches_struct_layout():
    got = pack(IRHeader(7, 3.0, 42, 9), b"IMG")
    # A scalar label forces flag 0 (as mxnet.recordio.pack does).
    assert got == struct.pack("<I", 0) + struct.pack("<f", 3.0) + struct.pack("<Q", 42) + struct.pack("<Q", 9) + b"IMG"
    assert len(got) == 24 + 3


def test_pack_multi_label_stores_floats_after_header():
    got = pack(IRHeader(0, [1.5, 2.0, -3.25], 5, 6), b"xy")
    expected = struct.pack("<IfQQ", 3, 0.0, 5, 6) + struct.pack("<3f", 1.5, 2.0, -3.25) + b"xy"
    assert got == expected
    head, payload = unpack(got)
    assert head.flag == 3 and head.id == 5 and head.id2 == 6 and payload == b"xy"
    np.testing.assert_array_equal(head.label, np.array([1.5, 2.0, -3.25], np.float32))


def test_unpack_scalar_and_short_record():
    head, payload = unpack(struct.pack("<IfQQ", 0, 17.0, 1, 2) + b"data")
    assert head == IRHeader(0, 17.0, 1, 2) and payload == b"data"
    with pytest.raises(DataFormatError, match="shorter than the 24-byte"):
        unpack(b"\0" * 10, "f.rec (key 3)")
    with pytest.raises(DataFormatError, match=r"f.rec \(key 3\).*4 float32 labels"):
        unpack(struct.pack("<IfQQ", 4, 0.0, 0, 0) + b"\0" * 8, "f.rec (key 3)")


# ---------------------------------------------------------------------------------------------------------
# framing


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"abc", M + lrec(0, 3) + b"abc\0"),
        (b"", M + lrec(0, 0)),
        (b"ABCD" + M + b"EFGHIJ", M + lrec(1, 4) + b"ABCD" + M + lrec(3, 6) + b"EFGHIJ\0\0"),
        (M + M, M + lrec(1, 0) + M + lrec(2, 0) + M + lrec(3, 0)),
        (M + b"abcd" + M + b"e", M + lrec(1, 0) + M + lrec(2, 4) + b"abcd" + M + lrec(3, 1) + b"e\0\0\0"),
        # magic at unaligned offsets is left alone, exactly as dmlc-core's writer does
        (b"A" + M + b"xyz", M + lrec(0, 8) + b"A" + M + b"xyz"),
        (b"AB" + M, M + lrec(0, 6) + b"AB" + M + b"\0\0"),
        # an aligned magic ending exactly at the payload end is split too
        (b"ABCD" + M, M + lrec(1, 4) + b"ABCD" + M + lrec(3, 0)),
    ],
)
def test_frame_bytes(payload, expected):
    assert frame(payload) == expected
    from gbcosface.data.recordio import read_framed

    got, nxt = read_framed(expected, 0, "test")
    assert got == payload and nxt == len(expected)


def test_round_trip_with_magic_payloads(tmp_path):
    rng = np.random.default_rng(0)
    payloads = {}
    for key in [5, 1, 99, 7, 0, 1000]:  # non-contiguous, unsorted keys use the search path
        body = bytearray(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes())
        for pos in rng.integers(0, len(body) + 1, 3):
            body[pos:pos] = M
        payloads[key] = pack(IRHeader(0, float(key), key, 0), bytes(body))
    with IndexedRecordWriter(tmp_path / "x.idx", tmp_path / "x.rec") as w:
        for key, rec in payloads.items():
            w.write(key, rec)
    assert w.split_records > 0
    r = IndexedRecordReader(tmp_path / "x.idx", tmp_path / "x.rec")
    assert r.keys.tolist() == list(payloads)
    assert len(r) == 6 and 99 in r and 2 not in r
    for key, rec in payloads.items():
        assert r.read(key) == rec
    assert [rec for _, rec in iter_records(tmp_path / "x.rec")] == list(payloads.values())
    # idx lines are key<TAB>offset
    lines = (tmp_path / "x.idx").read_text().splitlines()
    assert lines[0] == "5\t0" and all(line.count("\t") == 1 for line in lines)
    with pytest.raises(KeyError):
        r.read(2)


def test_idx_fast_and_slow_paths_agree(tmp_path):
    (tmp_path / "a.idx").write_text("".join(f"{k}\t{k * 8}\n" for k in range(50)))
    (tmp_path / "b.idx").write_text("".join(f"{k}  {k * 8}\r\n" for k in range(50)) + "\n")
    ka, oa = read_idx(tmp_path / "a.idx")
    kb, ob = read_idx(tmp_path / "b.idx")
    assert ka.tolist() == kb.tolist() == list(range(50))
    assert oa.tolist() == ob.tolist() == [k * 8 for k in range(50)]


def test_reader_reopens_after_fork(tmp_path):
    with IndexedRecordWriter(tmp_path / "x.idx", tmp_path / "x.rec") as w:
        for k in range(4):
            w.write(k, pack(IRHeader(0, float(k), k, 0), bytes([k]) * 10))
    r = IndexedRecordReader(tmp_path / "x.idx", tmp_path / "x.rec")
    assert r.read(1)  # the parent maps the file first
    parent_map = r._buf
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got, reopened = pool.apply(_read_in_child, (r, 3))
    assert got == pack(IRHeader(0, 3.0, 3, 0), b"\x03" * 10)
    assert reopened
    assert r._buf is parent_map  # the parent keeps its own map
    clone = pickle.loads(pickle.dumps(r))
    assert clone._buf is None and clone.read(2) == r.read(2)


def _read_in_child(reader, key):
    import os

    data = reader.read(key)
    return data, reader._pid == os.getpid()


# ---------------------------------------------------------------------------------------------------------
# insightface layout


def test_face_layout_round_trip(tmp_path, make_jpeg):
    samples = [(0, make_jpeg(1)), (0, make_jpeg(2)), (1, make_jpeg(3)), (2, make_jpeg(4)), (2, make_jpeg(5))]
    write_face_rec(tmp_path, iter(samples), 5, 3)
    assert read_property(tmp_path) == (3, 112, 112)
    assert (tmp_path / "property").read_text().strip() == "3,112,112"
    r = IndexedRecordReader(tmp_path / "train.idx", tmp_path / "train.rec")
    head, _ = unpack(r.read(0))
    assert head.flag == 2 and head.label.tolist() == [6.0, 9.0]
    layout = read_face_layout(r)
    assert layout.has_header and layout.num_identities == 3
    assert layout.image_keys.tolist() == [1, 2, 3, 4, 5]
    assert layout.identity_ranges.tolist() == [[1, 3], [3, 4], [4, 6]]
    for key, (label, jpeg) in enumerate(samples, 1):
        h, img = unpack(r.read(key))
        assert h.flag == 0 and h.label == label and h.id == key and img == jpeg


def test_face_layout_without_header(tmp_path):
    with IndexedRecordWriter(tmp_path / "train.idx", tmp_path / "train.rec") as w:
        for k in range(3):
            w.write(k, pack(IRHeader(0, float(k), k, 0), b"img"))
    layout = read_face_layout(IndexedRecordReader(tmp_path / "train.idx", tmp_path / "train.rec"))
    assert not layout.has_header and layout.image_keys.tolist() == [0, 1, 2] and layout.identity_ranges is None


def test_write_face_rec_checks_grouping_and_counts(tmp_path):
    with pytest.raises(ValueError, match="grouped"):
        write_face_rec(tmp_path / "a", iter([(0, b"x"), (1, b"y"), (0, b"z")]), 3, 2)
    with pytest.raises(ValueError, match="expected num_images"):
        write_face_rec(tmp_path / "b", iter([(0, b"x")]), 2, 1)
    assert not (tmp_path / "a" / "train.rec").exists() and not (tmp_path / "b" / "train.idx").exists()


# ---------------------------------------------------------------------------------------------------------
# atomicity


def test_writer_is_atomic(tmp_path):
    idx, rec = tmp_path / "x.idx", tmp_path / "x.rec"
    with IndexedRecordWriter(idx, rec) as w:
        w.write(0, b"old")
    before = (idx.read_bytes(), rec.read_bytes())
    with pytest.raises(RuntimeError):
        with IndexedRecordWriter(idx, rec) as w:
            w.write(0, b"new record")
            raise RuntimeError("boom")
    assert (idx.read_bytes(), rec.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.idx", "x.rec"]


# ---------------------------------------------------------------------------------------------------------
# bad input


def _simple_set(tmp_path, n=3):
    with IndexedRecordWriter(tmp_path / "x.idx", tmp_path / "x.rec") as w:
        for k in range(n):
            w.write(k, pack(IRHeader(0, float(k), k, 0), b"payload-%d" % k))
    return tmp_path / "x.idx", tmp_path / "x.rec"


def test_wrong_magic_names_file_and_key(tmp_path):
    idx, rec = _simple_set(tmp_path)
    offset = IndexedRecordReader(idx, rec).offset(1)
    data = bytearray(rec.read_bytes())
    data[offset] ^= 0xFF
    rec.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=r"x\.rec \(key 1\): wrong magic"):
        IndexedRecordReader(idx, rec).read(1)


def test_truncated_record_names_file_and_key(tmp_path):
    idx, rec = _simple_set(tmp_path)
    rec.write_bytes(rec.read_bytes()[:-6])
    with pytest.raises(DataFormatError, match=r"x\.rec \(key 2\): truncated record"):
        IndexedRecordReader(idx, rec).read(2)


def test_idx_offset_beyond_file(tmp_path):
    idx, rec = _simple_set(tmp_path)
    idx.write_text(idx.read_text() + "3\t999999\n")
    with pytest.raises(DataFormatError, match=r"x\.idx: key 3 \(line 4\) has offset 999999 beyond the end"):
        IndexedRecordReader(idx, rec)


@pytest.mark.parametrize(
    "text, message",
    [
        ("0\t0\n1\tabc\n", r"x\.idx:2: key and offset must be integers"),
        ("0\t0\n1\n", r"x\.idx:2: expected 'key<TAB>offset'"),
        ("0\t0\n0\t8\n", r"x\.idx: duplicate key 0 on lines \[1, 2\]"),
        ("0\t-8\n", r"x\.idx:1: negative offset"),
    ],
)
def test_malformed_idx(tmp_path, text, message):
    idx, rec = _simple_set(tmp_path)
    idx.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        IndexedRecordReader(idx, rec)


def test_header_disagreeing_with_index(tmp_path, make_jpeg):
    write_face_rec(tmp_path, iter([(0, make_jpeg(1)), (1, make_jpeg(2))]), 2, 2)
    idx = tmp_path / "train.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # drop image key 2
    r = IndexedRecordReader(idx, tmp_path / "train.rec")
    with pytest.raises(DataFormatError, match=r"train\.rec \(key 0\): header says image records .* no key 2"):
        read_face_layout(r)
    # extra keys beyond what the header announces are also a disagreement
    idx.write_text("\n".join(lines) + f"\n9\t{lines[1].split()[1]}\n")
    with pytest.raises(DataFormatError, match="header disagrees with the index"):
        read_face_layout(IndexedRecordReader(idx, tmp_path / "train.rec"))


def test_property_missing_and_malformed(tmp_path):
    with pytest.raises(DataFormatError, match=r"property: property file not found"):
        read_property(tmp_path)
    (tmp_path / "property").write_text("10,112\n")
    with pytest.raises(DataFormatError, match=r"property:1: expected 'num_classes,height,width'"):
        read_property(tmp_path)
    write_property(tmp_path, 10, 112, 96)
    assert read_property(tmp_path) == (10, 112, 96)


def test_missing_files(tmp_path):
    with pytest.raises(DataFormatError, match=r"nope\.idx: index file not found"):
        IndexedRecordReader(tmp_path / "nope.idx", tmp_path / "nope.rec")
    (tmp_path / "a.idx").write_text("0\t0\n")
    with pytest.raises(DataFormatError, match=r"a\.rec: record file not found"):
        IndexedRecordReader(tmp_path / "a.idx", tmp_path / "a.rec")


def test_magic_constant():
    assert MAGIC == 0xCED7230A
