"""Hostile IJB meta files: image names that lead outside the dataset root, huge lines, ids numpy
refuses but Python's int() takes, and non-finite landmarks are refused naming the right file:line,
and without echoing megabytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gbcosface.data.errors import DataFormatError
from gbcosface.data.ijb import image_path, load_ijb_image, meta_paths, read_ijb_meta, write_ijb_meta


def _meta(root: Path, names: list[str] | None = None) -> tuple[Path, Path, Path]:
    names = names or ["a/0.jpg", "a/1.jpg", "b/0.jpg"]
    n = len(names)
    write_ijb_meta(root, "ijbc", names, np.array([1, 1, 2][:n]), np.array([10, 11, 20][:n]),
                   np.full((n, 5, 2), 50.0), np.ones(n), np.array([1]), np.array([2]), np.array([0]))
    return meta_paths(root, "ijbc")


@pytest.mark.parametrize(("name", "why"), [
    ("/etc/passwd", "is an absolute path"),
    ("../../outside.jpg", r"has an empty, '\.' or '\.\.' path segment"),
    ("a/../../x.jpg", r"'\.\.' path segment"),
])
def test_image_names_that_leave_the_dataset_root_are_refused_naming_file_and_line(tmp_path, name, why):
    tid, _, _ = _meta(tmp_path, ["a/0.jpg", name, "b/0.jpg"])
    with pytest.raises(DataFormatError, match=rf"ijbc_face_tid_mid\.txt:2: image name .* {why}"):
        read_ijb_meta(tmp_path, "ijbc")
    with pytest.raises(DataFormatError, match=why):
        image_path(tmp_path, name)


def test_loading_an_image_by_a_hostile_name_never_opens_it(tmp_path):
    (tmp_path / "secret.jpg").write_bytes(b"not for you")
    (tmp_path / "loose_crop").mkdir()
    with pytest.raises(DataFormatError, match=r"'\.\./secret\.jpg' has an empty, '\.' or '\.\.' path segment"):
        load_ijb_image(tmp_path, "../secret.jpg")


def test_a_6_mb_bad_line_is_named_but_not_echoed(tmp_path):
    tid, _, _ = _meta(tmp_path)
    lines = tid.read_text().splitlines()
    lines[1] = "a/1.jpg " + "9" * (6 * 1024 * 1024)
    tid.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as info:
        read_ijb_meta(tmp_path, "ijbc")
    message = str(info.value)
    assert "ijbc_face_tid_mid.txt:2:" in message and len(message) < 1000, message[:300]


@pytest.mark.parametrize(("bad_id", "what"), [
    ("99999999999999999999", "which does not fit in 64 bits"),
    ("1_000", "non-numeric field '1_000'"),
    ("9" * 5000, "which does not fit in 64 bits"),  # past Python's int() digit limit too
])
def test_ids_that_do_not_parse_name_the_line(tmp_path, bad_id, what):
    tid, _, _ = _meta(tmp_path)
    lines = tid.read_text().splitlines()
    lines[2] = f"b/0.jpg {bad_id} 20"
    tid.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=rf"ijbc_face_tid_mid\.txt:3: expected .*{what}"):
        read_ijb_meta(tmp_path, "ijbc")


def test_nan_landmarks_are_blamed_on_the_landmark_file_and_line(tmp_path):
    _, pts, _ = _meta(tmp_path)
    lines = pts.read_text().splitlines()
    fields = lines[1].split()
    fields[3] = "nan"
    lines[1] = " ".join(fields)
    pts.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"ijbc_name_5pts_score\.txt:2: landmarks and score of 'a/1\.jpg' must be "
                                              r"finite"):
        read_ijb_meta(tmp_path, "ijbc", pairs=False)
