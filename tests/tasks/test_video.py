"""Tests of the next-frame video task (seqjax.tasks.video): streams, loss, evaluation, config errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.data import moving_digits as md
from seqjax.errors import ConfigError
from seqjax.tasks import build
from seqjax.tasks.base import pad_rows
from seqjax.tasks.video import VideoTask, default_config


def _task(**fields) -> VideoTask:
    """The task of ``default_config()`` with ``fields`` set (a plain dict: any value, as a mistyped file gives)."""
    return build({**default_config().to_dict(), **fields})


def test_train_stream_is_the_generators_and_resumes(rng):
    task = _task(num_frames=6, frame_size=12, context_frames=2)
    assert isinstance(task, VideoTask) and task.max_length == 5 and task.pixels == 144
    seed = int(rng.integers(0, 2**31))
    it = task.train_iterator(seed, 3)
    first, second = next(it), next(it)
    assert first["inputs"].shape == first["targets"].shape == (3, 5, 144)
    np.testing.assert_array_equal(first["inputs"][:, 1:], first["targets"][:, :-1])  # targets = inputs shifted
    videos = md.generate(seed, 3, start=3, num_frames=6, frame_size=12).reshape(3, 6, 144)
    np.testing.assert_array_equal(second["inputs"], videos[:, :-1])
    np.testing.assert_array_equal(second["targets"], videos[:, 1:])
    state = it.get_state()
    third = next(it)
    again = task.train_iterator(seed, 3)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["inputs"], third["inputs"])


def test_loss_matches_numpy_and_ignores_padding_rows(rng):
    task = _task()
    b, l, d = 3, 4, 5
    batch = {"inputs": rng.random((b, l, d), np.float32), "targets": rng.random((b, l, d), np.float32)}
    outputs = rng.normal(size=(b, l, d)).astype(np.float32)
    loss, metrics = task.loss(jnp.asarray(outputs), batch)
    np.testing.assert_allclose(loss, np.mean((outputs - batch["targets"]) ** 2), rtol=1e-6)
    np.testing.assert_allclose(metrics["mae"], np.mean(np.abs(outputs - batch["targets"])), rtol=1e-6)
    padded = pad_rows(batch, 5)
    out_p = np.concatenate([outputs, 9.0 + outputs[:2]])
    loss_p, metrics_p = task.loss(jnp.asarray(out_p), padded)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-6)
    np.testing.assert_allclose(metrics_p["mae"], metrics["mae"], rtol=1e-6)


def _reference(task, seed):
    """The eval videos, flattened, generated directly: ``(n, T, H·W)``."""
    v = md.generate(seed, task.eval_examples, split="test", **task.digits_kwargs)
    return v.reshape(v.shape[:2] + (-1,)).astype(np.float64)


def test_evaluate_against_hand_computed_errors(rng):
    """A causal model ``f(x)_t = a·x_t + e``: teacher-forced, copy and rollout errors computed here by hand."""
    task = _task(num_frames=7, frame_size=12, context_frames=3, eval_examples=5, eval_batch_size=2)
    a, e = float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.05, 0.2))
    calls = []

    def predict(batch):
        calls.append(batch["inputs"].shape)
        return a * batch["inputs"] + e

    seed = int(rng.integers(0, 2**31))
    m = task.evaluate(predict, seed)
    assert set(calls) == {(2, 6, 144)}  # always eval_batch_size rows
    v = _reference(task, seed)
    target, prev = v[:, 3:], v[:, 2:-1]  # frames 3..6 and the frames before them
    np.testing.assert_allclose(m["mse"], np.mean((a * prev + e - target) ** 2), rtol=1e-6)
    np.testing.assert_allclose(m["mae"], np.mean(np.abs(a * prev + e - target)), rtol=1e-6)
    np.testing.assert_allclose(m["baseline_mse"], np.mean((prev - target) ** 2), rtol=1e-9)
    np.testing.assert_allclose(m["baseline_mae"], np.mean(np.abs(prev - target)), rtol=1e-9)
    # Rollout: frame 2 is the last true one; then x_{t+1} = a x_t + e, fed back.
    roll, x = [], v[:, 2]
    for _ in range(4):
        x = a * x + e
        roll.append(x)
    roll = np.stack(roll, axis=1)
    np.testing.assert_allclose(m["rollout_mse"], np.mean((roll - target) ** 2), rtol=1e-5)
    np.testing.assert_allclose(m["rollout_mae"], np.mean(np.abs(roll - target)), rtol=1e-5)
    np.testing.assert_allclose(m["rollout_mse_per_frame"], np.mean((roll - target) ** 2, axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(m["baseline_rollout_mse"], np.mean((v[:, 2:3] - target) ** 2), rtol=1e-9)
    assert m["mse"] != m["rollout_mse"]
    assert (m["num_examples"], m["num_predicted_frames"], m["source"]) == (5, 4, "moving_digits")
    # The eval set is fixed by eval_seed, whatever the run's seed.
    fixed = _task(num_frames=7, frame_size=12, context_frames=3, eval_examples=5, eval_batch_size=2,
                  eval_seed=seed, rollout=False)
    m2 = fixed.evaluate(predict, seed + 1)
    assert m2["mse"] == pytest.approx(m["mse"], rel=1e-12) and "rollout_mse" not in m2


def test_moving_mnist_source_reads_the_manual_dir(tmp_path, rng):
    raw = rng.integers(0, 256, size=(5, 6, 64, 64), dtype=np.uint8)  # 5 frames, 6 videos, time first
    np.save(tmp_path / md.MOVING_MNIST_FILE, raw)
    task = _task(source="moving_mnist", manual_dir=str(tmp_path), context_frames=2, eval_examples=2,
                 eval_batch_size=2, rollout=False)
    assert (task.num_frames, task.frame_size, task.max_length, task.num_train_videos) == (5, 64, 4, 4)
    batch = next(task.train_iterator(0, 3))
    assert batch["inputs"].shape == (3, 4, 4096)
    train = raw[:, :4].transpose(1, 0, 2, 3).reshape(4, 5, 4096) / 255.0
    for row in batch["targets"]:
        assert any(np.array_equal(row, t[1:].astype(np.float32)) for t in train)  # a training video, not eval
    m = task.evaluate(lambda b: b["inputs"], 0)  # copy-last-frame model
    assert m["mse"] == pytest.approx(m["baseline_mse"]) and m["mse"] > 0


@pytest.mark.parametrize("fields, message", [
    ({"source": "kth"}, "config.task.source='kth' is not allowed; allowed: moving_digits, moving_mnist"),
    ({"context_frames": 20}, "config.task.context_frames=20 is not allowed; allowed: 1 .. 19 (num_frames - 1)"),
    ({"context_frames": 0}, "config.task.context_frames=0 is not allowed; allowed: an int >= 1"),
    ({"frame_size": 10}, "config.task.frame_size=10 is not allowed; allowed: an int >= 12"),
    ({"num_frames": 1}, "config.task.num_frames=1 is not allowed; allowed: an int >= 2"),
    ({"rollout": "yes"}, "config.task.rollout='yes' is not allowed; allowed: True, False"),
    ({"source": "moving_mnist"}, "config.task.manual_dir=None is not allowed with source='moving_mnist'"),
    ({"source": "moving_mnist", "manual_dir": "/nonexistent/mm"}, "Moving MNIST file /nonexistent/mm/mnist_test_seq.npy"
                                                                  " not found"),
])
def test_bad_fields_are_one_line_errors(fields, message):
    with pytest.raises(ConfigError) as info:
        _task(**fields)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
