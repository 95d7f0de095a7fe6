"""Record files for tokenized data: ArrayRecord (default) and TFRecord, both random-access.

Both hold serialised ``tf.train.Example`` protos (see ``example_proto``). The sources implement
``__len__`` and ``__getitem__`` so grain can shuffle, split across processes and resume them.

TFRecord framing: u64 length, masked crc32c(length), data, masked crc32c(data). It is written
without TensorFlow; ``tf.data.TFRecordDataset`` and the ``tfrecord`` package read it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordWriter

FORMATS = ("arrayrecord", "tfrecord")


# --------------------------------------------------------------------------- crc32c
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli). Uses the ``crc32c`` extension when installed, else pure Python."""
    try:
        import crc32c as _ext  # optional accelerator

        return _ext.crc32c(data)
    except ImportError:
        pass
    c = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- writers
class RecordWriter:
    """Append serialised records to an ArrayRecord or TFRecord file. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, fmt: str = "arrayrecord"):
        if fmt not in FORMATS:
            raise ValueError(f"record format {fmt!r}: choose one of {FORMATS}")
        self.path, self.fmt = Path(path), fmt
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "arrayrecord":
            self._w = ArrayRecordWriter(str(self.path), "group_size:1")
        else:
            self._f = self.path.open("wb")

    def write(self, record: bytes) -> None:
        if self.fmt == "arrayrecord":
            self._w.write(record)
        else:
            header = struct.pack("<Q", len(record))
            self._f.write(header + struct.pack("<I", masked_crc(header)) + record + struct.pack("<I", masked_crc(record)))

    def close(self) -> None:
        if self.fmt == "arrayrecord":
            self._w.close()
        else:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- sources
class TFRecordSource:
    """Random access over a TFRecord file: offsets are indexed once when opened."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._offsets: list[tuple[int, int]] = []
        with open(self.path, "rb") as f:
            pos = 0
            while True:
                header = f.read(12)
                if not header:
                    break
                if len(header) < 12:
                    raise ValueError(f"{self.path}: truncated TFRecord header at byte {pos}")
                (n,) = struct.unpack("<Q", header[:8])
                (crc,) = struct.unpack("<I", header[8:])
                if crc != masked_crc(header[:8]):
                    raise ValueError(f"{self.path}: corrupt TFRecord length at byte {pos}")
                self._offsets.append((pos + 12, n))
                pos += 12 + n + 4
                f.seek(pos)
        self._fd = None

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        start, n = self._offsets[i]
        return os.pread(self._fd, n, start)  # positional read: safe from several threads at once

    def __getstate__(self):  # picklable for grain workers: reopen lazily
        return {"path": self.path, "_offsets": self._offsets, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __repr__(self) -> str:
        return f"TFRecordSource({self.path!r}, {len(self)} records)"


def open_source(path: str | os.PathLike, fmt: str):
    """A random-access source of serialised records."""
    if fmt == "arrayrecord":
        import grain.python as grain  # deferred: grain imports JAX; keeps this module JAX-free

        return grain.ArrayRecordDataSource([str(path)])
    if fmt == "tfrecord":
        return TFRecordSource(path)
    raise ValueError(f"record format {fmt!r}: choose one of {FORMATS}")
