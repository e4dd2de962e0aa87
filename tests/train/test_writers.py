"""Tests of seqjax.train.writers: TensorBoard scalars read back by tensorboard, metrics.jsonl, train.log."""

import json
import subprocess
import sys

import numpy as np
import pytest

from seqjax.train.writers import MetricWriter, NullWriter, open_writer


def _events(path):
    """Every Event protobuf of one event file as written, read by tensorboard's own loader."""
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    # The legacy loader: the other one converts simple_value scalars to tensors.
    return list(loader.LegacyEventFileLoader(str(path)).Load())


def test_event_file_round_trip(tmp_path, rng):
    """The file is a valid event file: version record first, then our steps and float32 values."""
    values = [float(v) for v in rng.normal(size=3)]
    with MetricWriter(tmp_path) as writer:
        writer.write(7, "train", {"loss": values[0], "lr": values[1]})
        writer.write(2**40, "eval", {"mse": values[2]})
    (path,) = (tmp_path / "tb").iterdir()
    assert path.name.startswith("events.out.tfevents.")
    events = _events(path)
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert [(s, t) for s, t, _ in scalars] == [(7, "train/loss"), (7, "train/lr"), (2**40, "eval/mse")]
    np.testing.assert_array_equal([v for _, _, v in scalars], np.float32(values))
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


def test_writers_opened_in_the_same_second_keep_their_own_files(tmp_path):
    """tensorboardX truncates a file of the same name: a run resumed at once must not erase the first one's events."""
    for step in (5, 10):
        with MetricWriter(tmp_path, resume_step=step - 5) as writer:
            writer.write(step, "train", {"loss": float(step)})
    files = sorted((tmp_path / "tb").iterdir())
    assert len(files) == 2
    steps = sorted(e.step for f in files for e in _events(f) if e.summary.value)
    assert steps == [5, 10]


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


def test_other_processes_write_nothing(tmp_path):
    with open_writer(tmp_path / "w", resume_step=0, primary=False) as writer:
        assert isinstance(writer, NullWriter)
        writer.write(1, "train", {"loss": 1.0})
        writer.message("hello")
    assert not (tmp_path / "w").exists()


def test_the_writer_pulls_in_neither_tensorflow_nor_torch():
    code = ("import sys, seqjax.train.writers; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
