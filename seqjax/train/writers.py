"""Metric writers: JSON lines, TensorBoard event files (no TensorFlow) and a text log.

``workdir/metrics.jsonl``
  one JSON object per log call: ``{"step": int, "split": "train" | "eval", ...values}``.
``workdir/tb/events.out.tfevents.<time>.<host>``
  TensorBoard scalars, written here byte by byte. An event file is a sequence
  of TFRecords: ``uint64 length`` (little endian), ``uint32 masked_crc32c(length
  bytes)``, ``payload``, ``uint32 masked_crc32c(payload)``, where
  ``masked(c) = ((c >> 15 | c << 17) + 0xa282ead8) mod 2**32``. Each payload is an
  ``Event`` protobuf (``wall_time``: field 1, double; ``step``: field 2, int64;
  ``file_version``: field 3, string; ``summary``: field 5, a ``Summary`` whose
  repeated field 1 holds ``Value {tag: 1 (string), simple_value: 2 (float)}``).
  The first event of a file carries ``file_version = "brain.Event:2"``.
``workdir/train.log``
  human-readable lines (start, resume, divergence, end).
"""

import json
import logging
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

_LOG = logging.getLogger("seqjax.train")

# --- CRC-32C (Castagnoli), reflected polynomial 0x82F63B78 --------------------

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (what TFRecord framing uses).

    Args:
      data: the bytes.

    Returns:
      The checksum as an unsigned 32-bit int.
    """
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    """One TFRecord frame around ``payload``."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


# --- minimal protobuf encoding -------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement varints
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def encode_event(wall_time: float, step: int, *, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """The bytes of an ``Event`` protobuf.

    Args:
      wall_time: seconds since the epoch.
      step: the global step.
      scalars: ``tag -> value`` written as ``Summary.Value.simple_value``.
      file_version: set for the first event of a file (``"brain.Event:2"``).

    Returns:
      The serialised message.
    """
    out = _key(1, 1) + struct.pack("<d", float(wall_time)) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _len_field(3, file_version.encode())
    if scalars:
        summary = b""
        for tag, value in scalars.items():
            val = _len_field(1, str(tag).encode()) + _key(2, 5) + struct.pack("<f", float(value))
            summary += _len_field(1, val)
        out += _len_field(5, summary)
    return out


def _scalar(value: Any) -> float | None:
    """``value`` as a Python float when it is a real scalar, else None."""
    if isinstance(value, bool):
        return float(value)
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything non-numeric is just skipped
        return None
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        return None
    return float(arr)


def _jsonable(value: Any) -> Any:
    """Converts NumPy/JAX scalars and arrays for ``json.dumps`` (NaN/Inf become strings)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, type(None), bool)):
        return value
    if isinstance(value, int):
        return value
    arr = np.asarray(value)
    if arr.shape == () and np.issubdtype(arr.dtype, np.integer):
        return int(arr)
    if arr.shape == () and np.issubdtype(arr.dtype, np.floating):
        f = float(arr)
        return f if math.isfinite(f) else str(f)
    if arr.dtype.kind in "biuf":
        return _jsonable(arr.tolist())
    return str(value)


class TensorBoardWriter:
    """Appends scalar events to a new event file under ``logdir``.

    Attributes:
      path: the event file.
    """

    def __init__(self, logdir: str | os.PathLike):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        # Name pattern TensorBoard globs for; pid keeps two runs in one second apart.
        self.path = logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self._file = open(self.path, "ab")
        self._file.write(tfrecord(encode_event(now, 0, file_version="brain.Event:2")))
        self._file.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes one event with the given scalars at ``step``."""
        if values:
            self._file.write(tfrecord(encode_event(time.time(), step, scalars=values)))
            self._file.flush()

    def close(self) -> None:
        """Closes the file."""
        self._file.close()


class MetricWriter:
    """Writes every log to ``metrics.jsonl``, TensorBoard and (for messages) ``train.log``.

    On resume (``resume_step`` given) lines of ``metrics.jsonl`` after that
    step, and a half-written last line left by a killed run, are dropped: the
    resumed run writes them again.

    Attributes:
      workdir: the run's directory.
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl_path = self.workdir / "metrics.jsonl"
        self._trim(resume_step or 0)
        self._jsonl = open(self._jsonl_path, "a")
        self._tb = TensorBoardWriter(self.workdir / "tb")
        self._log = open(self.workdir / "train.log", "a")

    def _trim(self, keep_until: int) -> None:
        if not self._jsonl_path.exists():
            return
        kept = []
        for line in self._jsonl_path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= keep_until:
                kept.append(line)
        tmp = self._jsonl_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self._jsonl_path)

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        """Logs ``values`` at ``step`` under ``split`` ("train" / "eval").

        Args:
          step: the global step.
          split: the name of the split; TensorBoard tags are ``split/name``.
          values: metric name → value (non-scalar values go to JSON only).
        """
        record = {"step": int(step), "split": split, **_jsonable(dict(values))}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        scalars = {}
        for name, value in values.items():
            f = _scalar(value)
            if f is not None:
                scalars[f"{split}/{name}"] = f
        self._tb.scalars(step, scalars)

    def message(self, text: str) -> None:
        """Appends a line to ``train.log`` and to the ``seqjax.train`` logger."""
        if text.startswith("ERROR"):
            _LOG.error(text)
        else:
            _LOG.info(text)
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self._log.flush()

    def close(self) -> None:
        """Closes every file."""
        for f in (self._jsonl, self._log):
            f.close()
        self._tb.close()


__all__ = ["crc32c", "masked_crc32c", "tfrecord", "encode_event", "TensorBoardWriter", "MetricWriter"]
