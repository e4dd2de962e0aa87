"""Tests of seqjax.train.writers: CRC-32C, TFRecord framing, TensorBoard events, metrics.jsonl."""

import json
import struct

import numpy as np
import pytest

from seqjax.train.writers import MetricWriter, TensorBoardWriter, crc32c, masked_crc32c


def _crc32c_bitwise(data: bytes) -> int:
    """CRC-32C without a table (reflected polynomial 0x82F63B78), as a reference."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _read_frames(path):
    """TFRecord frames of ``path``, checking both masked CRCs (format spec, independent of the writer)."""

    def mask(c):
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        assert len_crc == mask(_crc32c_bitwise(header))
        payload = data[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert data_crc == mask(_crc32c_bitwise(payload))
        out.append(payload)
        pos += 16 + length
    assert pos == len(data)
    return out


def test_crc32c_check_value(rng):
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    data = rng.integers(0, 256, size=300).astype(np.uint8).tobytes()
    assert crc32c(data) == _crc32c_bitwise(data)
    assert masked_crc32c(data) != crc32c(data)


def test_event_file_frames_and_protobuf(tmp_path, rng):
    """Frames carry valid CRCs; payloads parse as tensorboard's Event protobuf with our values."""
    event_pb2 = pytest.importorskip("tensorboard.compat.proto.event_pb2")
    writer = TensorBoardWriter(tmp_path)
    values = [float(v) for v in rng.normal(size=3)]
    writer.scalars(7, {"train/loss": values[0], "train/lr": values[1]})
    writer.scalars(2**40, {"eval/mse": values[2]})
    writer.close()
    frames = _read_frames(writer.path)
    events = [event_pb2.Event.FromString(f) for f in frames]
    assert events[0].file_version == "brain.Event:2"
    assert [e.step for e in events[1:]] == [7, 2**40]
    got = {v.tag: v.simple_value for e in events[1:] for v in e.summary.value}
    np.testing.assert_allclose([got["train/loss"], got["train/lr"], got["eval/mse"]],
                               np.float32(values), rtol=1e-7)
    assert all(e.wall_time > 1e9 for e in events)


def test_tensorboard_reads_scalars(tmp_path, rng):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    writer = MetricWriter(tmp_path)
    losses = rng.uniform(0.5, 2.0, size=4)
    for i, loss in enumerate(losses):
        writer.write(10 * (i + 1), "train", {"loss": np.float32(loss), "lr": 1e-3, "shape": np.zeros(3)})
    writer.write(40, "eval", {"mse": 0.25, "name": "not a number"})
    writer.close()
    acc = accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr", "eval/mse"}
    scalars = acc.Scalars("train/loss")
    assert [s.step for s in scalars] == [10, 20, 30, 40]
    np.testing.assert_allclose([s.value for s in scalars], np.float32(losses), rtol=1e-7)
    assert acc.Scalars("eval/mse")[0].value == pytest.approx(0.25)


def test_metrics_jsonl_and_resume_trim(tmp_path):
    writer = MetricWriter(tmp_path)
    for step in (5, 10, 15):
        writer.write(step, "train", {"loss": 1.0 / step, "bad": float("nan")})
    writer.write(15, "eval", {"acc": 0.5, "per_class": [0.25, 0.75]})
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines] == [(5, "train"), (10, "train"), (15, "train"), (15, "eval")]
    assert lines[0]["loss"] == pytest.approx(0.2) and lines[0]["bad"] == "nan"
    assert lines[3]["per_class"] == [0.25, 0.75]
    # A killed run: a half-written line at the end; resuming from step 10 drops it and step 15.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "spl')
    writer = MetricWriter(tmp_path, resume_step=10)
    writer.write(15, "train", {"loss": 0.5})
    writer.message("resumed")
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("loss")) for r in lines] == [(5, 0.2), (10, 0.1), (15, 0.5)]
    assert "resumed" in (tmp_path / "train.log").read_text()
