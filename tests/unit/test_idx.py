"""IDX reading and writing: round trips, and every kind of damaged file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from deepgrid.data.idx import read_idx, write_idx
from deepgrid.errors import DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a.idx{suffix}", array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    back[0, 0, 0] = 1  # the result is an ordinary writable array


def test_gz_written_only_for_gz_suffix(tmp_path):
    write_idx(tmp_path / "raw", np.arange(4, dtype=np.uint8))
    write_idx(tmp_path / "packed.gz", np.arange(4, dtype=np.uint8))
    assert (tmp_path / "raw").read_bytes()[:4] == bytes([0, 0, 0x08, 1])
    assert (tmp_path / "packed.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_bytes_are_big_endian(tmp_path):
    path = write_idx(tmp_path / "x", np.array([1, 256], dtype=np.int32))
    assert path.read_bytes() == bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 0])


def test_gzip_detected_by_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    gz_named_plain = tmp_path / "plain"
    gz_named_plain.write_bytes(gzip.compress(write_idx(tmp_path / "tmp", array).read_bytes()))
    np.testing.assert_array_equal(read_idx(gz_named_plain), array)
    raw_named_gz = tmp_path / "raw.gz"
    raw_named_gz.write_bytes((tmp_path / "tmp").read_bytes())
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(DataError, match=r"not an IDX file.*0x1234.*expected 0x0000"):
        read_idx(path)


def test_too_short_for_magic(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="only 0 bytes"):
        read_idx(path)


def test_wrong_type_byte(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DataError, match=r"unknown IDX type byte 0x0A; expected one of 0x08 ubyte"):
        read_idx(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 2]))
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(path)


@pytest.mark.parametrize("dims, payload", [
    ((2**31, 2**31, 4), b""),  # 2**64 bytes: NumPy's int64 product wraps to 0, which "matched" the empty payload
    ((2**32 - 1,) * 3, b"\0" * 64),
    ((2**32 - 1, 2**32 - 1), b"\0" * 16),
], ids=["wraps-to-zero", "three-huge", "two-huge"])
def test_sizes_that_overflow_are_one_line(tmp_path, dims, payload):
    """Issue 8, defect 8: an IDX header whose sizes overflow gave a traceback (or a wrong message)."""
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 0x08, len(dims)]) + np.asarray(dims, dtype=">u4").tobytes() + payload)
    with pytest.raises(DataError) as e:
        read_idx(path)
    message = str(e.value)
    assert str(path) in message and "header" in message and "\n" not in message


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_file(tmp_path, suffix):
    full = write_idx(tmp_path / "full", np.zeros((4, 5), dtype=np.int16)).read_bytes()
    path = tmp_path / f"cut{suffix}"
    cut = full[:-3]
    path.write_bytes(gzip.compress(cut) if suffix else cut)
    with pytest.raises(DataError, match=r"truncated; shape \(4, 5\) of int16 needs exactly 40 bytes .* found 37") as e:
        read_idx(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_over_long_file(tmp_path, suffix):
    full = write_idx(tmp_path / "full", np.zeros(10, dtype=np.uint8)).read_bytes()
    path = tmp_path / f"long{suffix}"
    longer = full + b"extra"
    path.write_bytes(gzip.compress(longer) if suffix else longer)
    with pytest.raises(DataError, match="longer than its header says.* needs exactly 10 bytes.* found 15"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    good = write_idx(tmp_path / "good.gz", np.arange(1000, dtype=np.int32)).read_bytes()
    path = tmp_path / "corrupt.gz"
    path.write_bytes(good[:20] + bytes(b ^ 0xFF for b in good[20:40]) + good[40:])
    with pytest.raises(DataError, match="corrupt or truncated gzip stream") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_cut_short_gzip(tmp_path):
    good = write_idx(tmp_path / "good.gz", np.arange(1000, dtype=np.int32)).read_bytes()
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip stream"):
        read_idx(path)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="IDX cannot hold dtype int64.*astype"):
        write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))
    with pytest.raises(DataError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.uint8(3))
