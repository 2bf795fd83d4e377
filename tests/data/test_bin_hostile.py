"""A .bin pickle that asks for a 10^15-byte buffer is refused naming the file, before any allocation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from gbcosface.data.bin_sets import _NP_RECONSTRUCT, load_bin
from gbcosface.data.errors import DataFormatError

HUGE = 10**15


class _Call:
    """Pickles as `fn(*args)`: how a hostile file spells an allocation."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize(("payload", "message"), [
    (_Call(bytes, HUGE), r"(__)?builtins?(__)?\.bytes\(1,000,000,000,000,000\) asks for more bytes than the file holds"),
    (_Call(bytearray, HUGE), r"(__)?builtins?(__)?\.bytearray\(1,000,000,000,000,000\) asks for more bytes"),
    (_Call(_NP_RECONSTRUCT, np.ndarray, (HUGE,), b"b"), r"an array of 1,000,000,000,000,000 elements is more than"),
    (_Call(_NP_RECONSTRUCT, np.ndarray, (10**8, 10**8), b"b"), r"an array of 10,000,000,000,000,000 elements"),
])
def test_a_bin_asking_for_a_huge_buffer_is_refused_naming_the_file(tmp_path, payload, message):
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([payload, b"x"], [True]), protocol=2))
    with pytest.raises(DataFormatError, match=r"lfw\.bin: " + message):
        load_bin(path)


def test_an_ordinary_small_array_still_unpickles(tmp_path):
    from gbcosface.data.bin_sets import restricted_load

    data = pickle.dumps(([np.arange(5, dtype=np.uint8), b"ab"], [True]), protocol=2)
    images, issame = restricted_load(data, "x.bin")
    assert images[0].tolist() == [0, 1, 2, 3, 4] and images[1] == b"ab" and issame == [True]
