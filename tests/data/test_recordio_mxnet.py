"""Interoperability with real mxnet 1.9.1 (its own venv): both directions, byte for byte.

The test writes a small script and runs it with the mxnet venv's interpreter; data crosses as JSON (hex).
Payloads include the RecordIO magic word at aligned and unaligned offsets, so record splitting is covered.
"""

from __future__ import annotations

import json
import struct
import subprocess

import numpy as np
import pytest

from gbcosface.data.recordio import (
    IndexedRecordReader,
    IndexedRecordWriter,
    IRHeader,
    iter_records,
    pack,
    unpack,
)

pytestmark = pytest.mark.integration

M = struct.pack("<I", 0xCED7230A)

MX_WRITE = r"""
import json, sys
import numpy as np
from mxnet import recordio
spec = json.load(open(sys.argv[1]))
w = recordio.MXIndexedRecordIO(sys.argv[2], sys.argv[3], "w")
for item in spec:
    label = item["label"]
    header = recordio.IRHeader(0, label if isinstance(label, float) else np.array(label, np.float32), item["id"], 0)
    w.write_idx(item["key"], recordio.pack(header, bytes.fromhex(item["payload"])))
w.close()
# a real image through pack_img as well (encoded by mxnet's cv2)
img = (np.arange(112 * 112 * 3) % 251).astype(np.uint8).reshape(112, 112, 3)
w = recordio.MXIndexedRecordIO(sys.argv[4], sys.argv[5], "w")
w.write_idx(0, recordio.pack_img(recordio.IRHeader(0, 3.0, 0, 0), img, quality=90, img_fmt=".jpg"))
w.close()
"""

MX_READ = r"""
import json, sys
import numpy as np
from mxnet import recordio
r = recordio.MXIndexedRecordIO(sys.argv[1], sys.argv[2], "r")
out = []
for key in r.keys:
    header, payload = recordio.unpack(r.read_idx(key))
    label = header.label.tolist() if isinstance(header.label, np.ndarray) else float(header.label)
    out.append({"key": key, "flag": header.flag, "label": label, "id": header.id, "id2": header.id2,
                "payload": payload.hex()})
r.close()
seq = recordio.MXRecordIO(sys.argv[2], "r")
count = 0
while seq.read() is not None:
    count += 1
json.dump({"records": out, "sequential_count": count}, open(sys.argv[3], "w"))
"""


def _spec():
    """Records whose payloads contain the magic word in every position class that matters."""
    rng = np.random.default_rng(7)
    bodies = [
        b"",
        b"plain bytes",
        M,  # payload offset 0 = record offset 24: aligned
        b"abcd" + M + b"tail",
        M + M + M,
        b"x" + M + b"yz",  # unaligned: not split
        b"abcd" + M,
        rng.integers(0, 256, 5000, dtype=np.uint8).tobytes() + M + b"zz",
    ]
    spec = []
    for i, body in enumerate(bodies):
        label = float(i) if i % 3 else [float(i), 0.5, -2.0]  # some multi-label records
        spec.append({"key": i * 3 + 1, "id": i, "label": label, "payload": body.hex()})
    # multi-label whose float bytes are the magic word itself (label -> aligned magic in the record)
    magic_float = struct.unpack("<f", M)[0]
    spec.append({"key": 100, "id": 100, "label": [magic_float, 1.0], "payload": (M + b"q").hex()})
    return spec


def _run(python, script, tmp_path, *args):
    path = tmp_path / "script.py"
    path.write_text(script)
    proc = subprocess.run([python, str(path), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _our_record(item):
    label = item["label"]
    header = IRHeader(0, label if isinstance(label, float) else np.array(label, np.float32), item["id"], 0)
    return pack(header, bytes.fromhex(item["payload"]))


def test_mxnet_writes_we_read_identically(tmp_path, mxnet_python):
    spec = _spec()
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    mx_idx, mx_rec = tmp_path / "mx.idx", tmp_path / "mx.rec"
    img_idx, img_rec = tmp_path / "img.idx", tmp_path / "img.rec"
    _run(mxnet_python, MX_WRITE, tmp_path, tmp_path / "spec.json", mx_idx, mx_rec, img_idx, img_rec)

    reader = IndexedRecordReader(mx_idx, mx_rec)
    assert reader.keys.tolist() == [item["key"] for item in spec]
    for item in spec:
        header, payload = unpack(reader.read(item["key"]))
        assert payload == bytes.fromhex(item["payload"])
        assert header.id == item["id"] and header.id2 == 0
        if isinstance(item["label"], float):
            assert header.flag == 0 and header.label == item["label"]
        else:
            assert header.flag == len(item["label"])
            np.testing.assert_array_equal(header.label, np.array(item["label"], np.float32))

    # Our writer produces the very same bytes as mxnet, splits included.
    ours_idx, ours_rec = tmp_path / "ours.idx", tmp_path / "ours.rec"
    with IndexedRecordWriter(ours_idx, ours_rec) as w:
        for item in spec:
            w.write(item["key"], _our_record(item))
    assert w.split_records >= 5
    assert ours_rec.read_bytes() == mx_rec.read_bytes()
    assert ours_idx.read_text() == mx_idx.read_text()

    # A JPEG packed by mxnet's pack_img decodes here.
    import cv2

    header, jpeg = unpack(IndexedRecordReader(img_idx, img_rec).read(0))
    assert header.label == 3.0
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    expected = (np.arange(112 * 112 * 3) % 251).astype(np.uint8).reshape(112, 112, 3)
    assert img.shape == (112, 112, 3) and np.abs(img.astype(int) - expected).mean() < 20


def test_we_write_mxnet_reads_identically(tmp_path, mxnet_python, make_jpeg):
    spec = _spec()
    spec.append({"key": 500, "id": 500, "label": 4.0, "payload": make_jpeg(3).hex()})
    idx, rec = tmp_path / "ours.idx", tmp_path / "ours.rec"
    with IndexedRecordWriter(idx, rec) as w:
        for item in spec:
            w.write(item["key"], _our_record(item))
    _run(mxnet_python, MX_READ, tmp_path, idx, rec, tmp_path / "out.json")
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["sequential_count"] == len(spec) == len(list(iter_records(rec)))
    got = {r["key"]: r for r in result["records"]}
    assert list(got) == [item["key"] for item in spec]
    for item in spec:
        r = got[item["key"]]
        assert r["payload"] == item["payload"], item["key"]
        assert r["id"] == item["id"] and r["id2"] == 0
        if isinstance(item["label"], float):
            assert r["flag"] == 0 and r["label"] == item["label"]
        else:
            assert r["flag"] == len(item["label"])
            np.testing.assert_array_equal(np.array(r["label"], np.float32), np.array(item["label"], np.float32))
