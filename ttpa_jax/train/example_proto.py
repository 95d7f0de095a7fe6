"""``tf.train.Example`` encoding and decoding without TensorFlow.

Tokenized records are stored as ``tf.train.Example`` protos in both ArrayRecord and TFRecord files,
so the two formats carry identical bytes and ``tf.data`` can read ours. Only what the training data
needs is implemented: features holding an ``int64_list`` or a ``float_list`` (1-D arrays).

Wire format (proto3): Example{features=1: Features{feature=1: map<string, Feature>}},
Feature{bytes_list=1 | float_list=2 | int64_list=3}, lists hold a packed repeated field 1.
Varints are encoded and decoded with NumPy, vectorised over the whole array.
"""

from __future__ import annotations

import numpy as np

_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)


def _varints(values: np.ndarray) -> bytes:
    """Encode non-negative or negative int64 values as protobuf varints (two's complement)."""
    v = np.asarray(values).astype(np.int64).view(np.uint64)
    if v.size == 0:
        return b""
    # bytes needed per value: 1 + number of 7-bit groups beyond the first that are non-zero
    groups = (v[:, None] >> _SHIFTS[None, :]) & np.uint64(0x7F)  # [n, 10]
    nonzero_above = (v[:, None] >> _SHIFTS[None, :]) != 0
    nbytes = np.maximum(nonzero_above.sum(axis=1), 1)  # [n]
    idx = np.arange(10)[None, :]
    keep = idx < nbytes[:, None]
    cont = (idx < (nbytes[:, None] - 1)).astype(np.uint64) << np.uint64(7)
    return (groups | cont)[keep].astype(np.uint8).tobytes()


def _varint(n: int) -> bytes:
    return _varints(np.array([n], np.int64))


def _decode_varints(buf: bytes | memoryview) -> np.ndarray:
    b = np.frombuffer(buf, np.uint8)
    if b.size == 0:
        return np.zeros((0,), np.int64)
    ends = np.flatnonzero(b < 0x80)
    starts = np.concatenate([[0], ends[:-1] + 1])
    pos_in_value = np.arange(b.size) - np.repeat(starts, ends - starts + 1)
    parts = (b & 0x7F).astype(np.uint64) << (pos_in_value.astype(np.uint64) * np.uint64(7))
    return np.add.reduceat(parts, starts).view(np.int64)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_example(features: dict[str, np.ndarray]) -> bytes:
    """Serialise 1-D integer or float arrays as a ``tf.train.Example``."""
    entries = []
    for name in sorted(features):
        arr = np.asarray(features[name])
        if arr.ndim != 1:
            raise ValueError(f"feature {name!r}: expected a 1-D array, got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
            feature = _field(3, _field(1, _varints(arr)))
        elif np.issubdtype(arr.dtype, np.floating):
            feature = _field(2, _field(1, arr.astype("<f4").tobytes()))
        else:
            raise ValueError(f"feature {name!r}: unsupported dtype {arr.dtype}")
        entry = _field(1, name.encode()) + _field(2, feature)
        entries.append(_field(1, entry))
    return _field(1, b"".join(entries))


def _fields(buf: memoryview):
    """Yield (field_number, payload) for the length-delimited fields of a message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 2:
            n, pos = _read_varint(buf, pos)
            yield num, buf[pos:pos + n]
            pos += n
        elif wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def decode_example(data: bytes) -> dict[str, np.ndarray]:
    """Parse a ``tf.train.Example`` into ``{name: int64 or float32 array}``."""
    out: dict[str, np.ndarray] = {}
    for _, features in _fields(memoryview(data)):
        for _, entry in _fields(features):
            name, feature = None, None
            for num, payload in _fields(entry):
                if num == 1:
                    name = bytes(payload).decode()
                elif num == 2:
                    feature = payload
            if name is None or feature is None:
                continue
            for kind, lst in _fields(feature):
                values = [p for n, p in _fields(lst) if n == 1]
                raw = b"".join(bytes(v) for v in values)
                if kind == 3:
                    out[name] = _decode_varints(raw)
                elif kind == 2:
                    out[name] = np.frombuffer(raw, "<f4").astype(np.float32)
    return out
