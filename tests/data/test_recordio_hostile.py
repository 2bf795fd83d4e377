"""Hostile RecordIO sets: header or identity records with inf/NaN/huge labels or inverted ranges, and
.idx offsets that overflow, are refused naming the file and key (line); `data inspect` and `train`
say so in one line (the CLI in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gbcosface.data.errors import DataFormatError
from gbcosface.data.recordio import (
    IndexedRecordReader,
    IndexedRecordWriter,
    IRHeader,
    pack,
    read_face_layout,
    write_property,
)

INF, NAN = float("inf"), float("nan")


def _face_set(d: Path, header: list[float], ranges: list[tuple[float, float]], image: bytes = b"img") -> Path:
    """Four images (keys 1-4), two identities (keys 5-6), header record 0; labels as given."""
    d.mkdir(parents=True, exist_ok=True)
    with IndexedRecordWriter(d / "train.idx", d / "train.rec") as w:
        w.write(0, pack(IRHeader(2, np.array(header, np.float32), 0, 0), b""))
        for k in range(1, 5):
            w.write(k, pack(IRHeader(0, float(k > 2), k, 0), image))
        for j, (a, b) in enumerate(ranges):
            w.write(5 + j, pack(IRHeader(2, np.array([a, b], np.float32), 5 + j, 0), b""))
    write_property(d, len(ranges), 112, 112)
    return d


HOSTILE = {
    "header inf": ([INF, 7], [(1, 3), (3, 5)], r"\(key 0\): header record labels must be \(N\+1, N\+1\+C\) integers"),
    "header nan": ([NAN, 7], [(1, 3), (3, 5)], r"\(key 0\): header record labels must be"),
    "header huge": ([1e30, 1e30], [(1, 3), (3, 5)], r"\(key 0\): header record labels must be"),
    "identity inf": ([5, 7], [(1, INF), (3, 5)], r"\(key 5\): identity record range \[1\.0, inf\]"),
    "identity nan": ([5, 7], [(NAN, 3), (3, 5)], r"\(key 5\): identity record range \[nan, 3\.0\]"),
    "identity huge": ([5, 7], [(1, 3e30), (3, 5)], r"\(key 5\): identity record range"),
    "identity inverted": ([5, 7], [(1, 3), (5, 1)], r"\(key 6\): identity record range \[5\.0, 1\.0\] is not a \[start, end\)"),
    "identity past the images": ([5, 7], [(1, 3), (3, 9)], r"\(key 6\): identity record range .* within 1\.\.5"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_and_identity_records_are_refused_naming_the_key(tmp_path, case):
    header, ranges, message = HOSTILE[case]
    d = _face_set(tmp_path / "set", header, ranges)
    with pytest.raises(DataFormatError, match=r"train\.rec " + message):
        read_face_layout(IndexedRecordReader(d / "train.idx", d / "train.rec"))


@pytest.mark.parametrize(("offset", "message"), [
    ("9223372036854775805", r"train\.idx: key 2 \(line 3\) has offset 9223372036854775805 beyond the end"),
    ("92233720368547758070", r"train\.idx:3: key or offset does not fit in 64 bits"),
])
def test_idx_offsets_that_overflow_are_refused_up_front(tmp_path, offset, message):
    d = _face_set(tmp_path / "set", [5, 7], [(1, 3), (3, 5)])
    lines = (d / "train.idx").read_text().splitlines()
    lines[2] = f"2\t{offset}"
    (d / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=message):
        IndexedRecordReader(d / "train.idx", d / "train.rec")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gbcosface", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_data_inspect_of_an_inverted_identity_range_is_one_line_not_negative_counts(tmp_path):
    d = _face_set(tmp_path / "set", [5, 7], [(1, 3), (5, 1)])
    proc = _cli("data", "inspect", str(d), "--json", cwd=tmp_path)
    assert proc.returncode == 4, proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"error: {d / 'train.rec'} (key 6): identity record range [5.0, 1.0] is not a [start, end) of image keys "
        "within 1..5"]


def test_train_on_a_bad_rec_is_one_line_naming_the_record(tmp_path):
    d = _face_set(tmp_path / "set", [INF, 7], [(1, 3), (3, 5)])
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {name: iresnet18, embedding_size: 32, width: 8, layers: [1, 1, 1, 1], stem_stride: 2}\n"
        f"data: {{train_dir: '{d}', val_dir: '', val_targets: [], batch_size: 2, num_workers: 0}}\n"
        f"run: {{output: '{tmp_path / 'out'}', amp: none, metrics_port: 0}}\n"
        "head: {num_classes: 2}\n"
    )
    proc = _cli("train", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {d / 'train.rec'} (key 0): header record labels must be (N+1, N+1+C) integers, "
                      "got [inf, 7.0]"], proc.stderr
    assert "Traceback" not in proc.stderr
