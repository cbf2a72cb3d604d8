"""The IDX format of MNIST and Fashion-MNIST (unsigned bytes), read and written with numpy.

A file is a 4-byte magic number (0, 0, type 0x08 = unsigned byte, number of dimensions), the
dimensions as big-endian 32-bit integers, then the values in C order. Readers take plain or
gzipped files (the official distributions are gzipped). Every defect (not IDX, a type other than
unsigned byte, fewer or more bytes than the header announces, a gzip stream cut short) is a
:class:`DataError` naming the file and what is wrong, never an assertion or a silently short array.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from el_plugins.files import atomic_write

UBYTE = 0x08


class DataError(ValueError):
    """A data file that is missing, unreadable, or not what it should be."""


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if data[:2] == b"\x1f\x8b":  # gzip
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: a gzip file that does not decompress ({exc}); is it truncated?") from None
    return data


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array in IDX bytes ``data`` (unsigned byte type only); ``name`` is used in error messages."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (it must start with two zero bytes, a type byte and the "
                        f"number of dimensions; starts with {data[:4].hex() or 'nothing'})")
    if data[2] != UBYTE:
        raise DataError(f"{name}: IDX type 0x{data[2]:02x}, expected 0x08 (unsigned byte) as in MNIST")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise DataError(f"{name}: IDX header announces {ndim} dimension(s) but the file has {len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(data) - header
    if got != expected:
        raise DataError(f"{name}: the IDX header announces shape {tuple(shape)} ({expected} values) but the file "
                        f"holds {got}; {'truncated' if got < expected else 'trailing bytes'}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable, owns its memory


def read_idx(path: str) -> np.ndarray:
    """The uint8 array in the IDX file ``path`` (plain or gzipped)."""
    return parse_idx(_read_bytes(path), path)


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in IDX format."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writing supports uint8 arrays only, got {array.dtype}")
    header = bytes([0, 0, UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` (uint8) to ``path`` as an uncompressed IDX file, all-or-nothing."""
    with atomic_write(path, "wb") as f:
        f.write(idx_bytes(array))


def find_idx(folder: str, stem: str):
    """The file ``stem`` (e.g. ``t10k-images-idx3-ubyte``) or ``stem.gz`` in ``folder``, else None."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None
