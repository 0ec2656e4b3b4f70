"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number (two zero bytes, a type byte, the number
of dimensions), one big-endian uint32 per dimension, then the values in
big-endian C order. Files are often gzipped; we tell by the gzip magic bytes,
not the name, because mirrors and users rename files freely.

Every way a file can be damaged (wrong magic, unknown type, cut short, too
long, a broken gzip stream) is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from deepgrid.errors import DataError

# IDX type byte -> NumPy dtype, big-endian as the format says.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_OF_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_TYPES.items()}
_TYPE_NAMES = "0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float, 0x0E double"

_GZIP_MAGIC = b"\x1f\x8b"
MAX_PAYLOAD_BYTES = 1 << 40  # 1 TiB: far beyond any data set read into memory, far below an overflow
_CHUNK = 16 << 20  # read in 16 MiB pieces: a damaged header cannot make us allocate more than the file holds


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in an IDX file, gzipped or raw, in native byte order.

    Raises :class:`DataError` when the file is missing, not an IDX file, or its
    payload is not exactly as long as its dimensions say.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {str(path)!r} does not exist; check the path or the data directory.")
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if gzipped:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _read_stream(stream, path)
            return _read_stream(raw, path)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        # EOFError: the gzip stream ends before its end marker (a cut-short download).
        raise DataError(
            f"{path}: corrupt or truncated gzip stream ({e}); download or copy the file again."
        ) from None
    except OSError as e:
        raise DataError(f"Cannot read IDX file {str(path)!r}: {e.strerror or e}; check its permissions.") from None


def _read_stream(stream: BinaryIO, path: Path) -> np.ndarray:
    header = _read_up_to(stream, 4)
    if len(header) < 4:
        raise DataError(f"{path}: not an IDX file, it holds only {len(header)} bytes; expected a 4-byte magic number.")
    if header[0] != 0 or header[1] != 0:
        raise DataError(
            f"{path}: not an IDX file, its magic number starts 0x{header[:2].hex()}; expected 0x0000 followed "
            "by a type byte and the number of dimensions. Check that this is an MNIST-style IDX file."
        )
    type_code, ndim = header[2], header[3]
    if type_code not in IDX_TYPES:
        raise DataError(f"{path}: unknown IDX type byte 0x{type_code:02X}; expected one of {_TYPE_NAMES}.")
    if ndim == 0:
        raise DataError(f"{path}: the IDX header declares 0 dimensions; expected at least 1.")
    dims_bytes = _read_up_to(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(
            f"{path}: truncated IDX header; {ndim} dimensions need {4 * ndim} bytes of sizes "
            f"but only {len(dims_bytes)} follow the magic number."
        )
    shape = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
    dtype = IDX_TYPES[type_code]
    # Python integers: NumPy's int64 product wraps around for sizes like 2**32-1 cubed, and a
    # wrapped size can even match the payload and then fail in reshape with a traceback.
    expected = math.prod(shape) * dtype.itemsize
    if expected > MAX_PAYLOAD_BYTES:
        raise DataError(
            f"{path}: the IDX header declares shape {shape} of {dtype.name}, {expected:.3g} bytes of data, "
            f"more than the {MAX_PAYLOAD_BYTES:.3g} an IDX file read here may hold; the header is damaged or "
            "this is not an MNIST-style file. Download or copy the file again."
        )
    payload = _read_up_to(stream, expected)
    actual = len(payload) + _count_rest(stream)
    if actual != expected:
        problem = "truncated" if actual < expected else "longer than its header says"
        raise DataError(
            f"{path}: IDX file is {problem}; shape {shape} of {dtype.name} needs exactly {expected} bytes "
            f"of data after the {4 + 4 * ndim}-byte header, found {actual}. Download or copy the file again."
        )
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    # Multi-byte values arrive big-endian; hand back native order so arithmetic is fast. ubyte needs no copy.
    return array.astype(dtype.newbyteorder("="), copy=False)


def _read_up_to(stream: BinaryIO, n: int) -> bytearray:
    """Up to n bytes (fewer only at end of file), in a bytearray so NumPy views of it are writable."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _count_rest(stream: BinaryIO) -> int:
    """Bytes left in the stream; reading to the end also makes gzip check its CRC and length."""
    total = 0
    while chunk := stream.read(_CHUNK):
        total += len(chunk)
    return total


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends with ``.gz``. Returns the path.

    The dtype must be one IDX can hold: uint8, int8, int16, int32, float32 or float64.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _TYPE_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise DataError(
            f"IDX cannot hold dtype {array.dtype}; expected uint8, int8, int16, int32, float32 or float64. "
            "Convert with array.astype(...) first."
        )
    if not 1 <= array.ndim <= 255:
        raise DataError(f"IDX holds 1 to 255 dimensions; the array has {array.ndim}. Reshape it first.")
    if max(array.shape) >= 2**32:
        raise DataError(f"IDX dimensions must be below 2**32; the array has shape {array.shape}.")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        # mtime=0: the same array always gives the same bytes.
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            out.write(header + data)
    else:
        path.write_bytes(header + data)
    return path
