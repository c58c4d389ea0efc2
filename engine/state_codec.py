"""A versioned binary record of JSON fields plus numpy arrays (the monitor's state record).

Layout::

    magic (5 bytes) | version (1 byte) | header length (uint32, little endian) | header | buffers

The header is orjson: ``{"fields": {...JSON-safe values...}, "arrays": {name: [dtype, shape,
offset, nbytes]}}``; an array's bytes are at ``offset`` in the buffer section (C order, the
dtype string says the byte order). No pickle: a record names everything it holds, so reading
one cannot run code, and a record whose version this code does not know is refused
(`UnknownStateVersion`) instead of guessed at.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

_LENGTH = struct.Struct("<I")


class StateRecordError(ValueError):
    """The record is not a readable record of this kind (wrong magic, truncated, malformed)."""


class UnknownStateVersion(StateRecordError):
    """The record is of this kind but of a version this code does not read."""


def pack(magic: bytes, version: int, fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """The record of `fields` (JSON-safe) and `arrays`, tagged with `magic` and `version` (0-255)."""
    described: dict[str, list[Any]] = {}
    buffers: list[bytes] = []
    offset = 0
    for name, a in arrays.items():
        a = np.asarray(a)
        if not a.flags.c_contiguous:
            a = a.copy(order="C")
        described[name] = [a.dtype.str, list(a.shape), offset, a.nbytes]
        buffers.append(a.tobytes())
        offset += a.nbytes
    header = orjson.dumps({"fields": fields, "arrays": described}, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([magic, bytes([version]), _LENGTH.pack(len(header)), header, *buffers])


def unpack(raw: bytes, magic: bytes, versions: tuple[int, ...]) -> tuple[int, dict[str, Any], dict[str, np.ndarray]]:
    """(version, fields, arrays) of a `pack` record.

    Raises:
        StateRecordError: not a record with `magic`, or a malformed one.
        UnknownStateVersion: a record with `magic` whose version is not in `versions`.
    """
    if not raw.startswith(magic) or len(raw) < len(magic) + 1:
        raise StateRecordError("not a state record of this kind (unknown magic)")
    version = raw[len(magic)]
    if version not in versions:
        raise UnknownStateVersion(
            f"state record version {version} is not one this engine reads (it reads {list(versions)}); "
            "it was written by another streamscore release")
    start = len(magic) + 1 + _LENGTH.size
    try:
        (length,) = _LENGTH.unpack_from(raw, len(magic) + 1)
        header = orjson.loads(raw[start:start + length])
        body = memoryview(raw)[start + length:]
        arrays: dict[str, np.ndarray] = {}
        for name, (dtype, shape, offset, nbytes) in header["arrays"].items():
            if offset + nbytes > len(body):
                raise StateRecordError(f"array {name!r} runs past the end of the record")
            arrays[name] = np.frombuffer(body[offset:offset + nbytes], dtype=np.dtype(dtype)).reshape(shape).copy()
        return version, header["fields"], arrays
    except StateRecordError:
        raise
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise StateRecordError(f"malformed state record: {exc}") from exc


__all__ = ["StateRecordError", "UnknownStateVersion", "pack", "unpack"]
