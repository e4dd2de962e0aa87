"""Tests of the continuous seq2seq task (seqjax.tasks.csp): streams, standardisation, loss, metrics, errors.

References are float64 NumPy written here from the definitions in the module
docstring: per-target MSE over real targets, the train-mean baseline, the
least-squares readout (solved by the normal equations, not ``lstsq``).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.data import csp_bench
from seqjax.data import imu_odometry as imu
from seqjax.errors import ConfigError
from seqjax.tasks import build
from seqjax.tasks.base import pad_rows
from seqjax.tasks.csp import CSPTask, default_config

SMALL = dict(chunk=4, num_chunks=5, stats_examples=40, eval_examples=7, eval_batch_size=3)


def _task(**fields) -> CSPTask:
    """The task of ``default_config()`` with ``fields`` set (a plain dict, as a mistyped file gives)."""
    return build({**default_config().to_dict(), **fields})


def test_stream_is_the_generator_standardised_with_train_statistics(rng):
    task = _task(**SMALL, stats_seed=3)
    assert isinstance(task, CSPTask) and task.max_length == 20 and (task.input_dim, task.output_dim) == (3, 2)
    law = {k: task.law[k] for k in imu.DEFAULTS}
    x_stats, y_stats = imu.generate(3, 40, split="train", **law)
    flat_x, flat_y = x_stats.astype(np.float64).reshape(-1, 3), y_stats.astype(np.float64).reshape(-1, 2)
    np.testing.assert_allclose(task.stats["input_std"], flat_x.std(0), rtol=1e-10)
    np.testing.assert_allclose(task.stats["target_mean"], flat_y.mean(0), rtol=1e-10)
    seed = int(rng.integers(0, 2**31))
    it = task.train_iterator(seed, 3)
    next(it)
    second = next(it)
    x, y = imu.generate(seed, 3, split="train", start=3, **law)
    np.testing.assert_allclose(second["inputs"], (x - flat_x.mean(0)) / flat_x.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second["targets"], (y - flat_y.mean(0)) / flat_y.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(second["target_mask"], 1.0)
    state = it.get_state()
    third = next(it)
    again = task.train_iterator(seed, 3)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["inputs"], third["inputs"])


def test_loss_reads_chunk_ends_and_honours_masks_and_padding_rows(rng):
    task = _task(**SMALL)
    b, k, c, d = 3, 4, 5, 2
    outputs = rng.normal(size=(b, k * c, d)).astype(np.float32)
    targets = rng.normal(size=(b, c, d)).astype(np.float32)
    mask = (rng.random((b, c)) < 0.7).astype(np.float32)
    mask[0, 0] = 1.0
    batch = {"inputs": rng.normal(size=(b, k * c, 3)).astype(np.float32), "targets": targets, "target_mask": mask}
    loss, metrics = task.loss(jnp.asarray(outputs), batch)
    err = outputs[:, [3, 7, 11, 15, 19]].astype(np.float64) - targets  # positions ck + k - 1
    want = (err**2 * mask[..., None]).sum() / (mask.sum() * d)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["mae"], (np.abs(err) * mask[..., None]).sum() / (mask.sum() * d), rtol=1e-5)
    padded = pad_rows(batch, 5)
    loss_p, _ = task.loss(jnp.asarray(np.concatenate([outputs, 7.0 + outputs[:2]])), padded)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-6)


def test_evaluate_against_numpy(rng):
    task = _task(**SMALL, eval_seed=11)
    weights = rng.normal(size=(3, 2))

    def predict(batch):  # a causal per-sample linear map: known outputs at every position
        assert batch["inputs"].shape[0] == 3
        return batch["inputs"] @ weights

    m = task.evaluate(predict, seed=0)
    law = {k: task.law[k] for k in imu.DEFAULTS}
    x, y = imu.generate(11, 7, split="test", **law)
    s = task.stats
    xs, ys = (x - s["input_mean"]) / s["input_std"], (y - s["target_mean"]) / s["target_std"]
    out = (xs @ weights)[:, 3::4]
    per = ((out - ys) ** 2).mean(axis=(0, 1))
    np.testing.assert_allclose(m["mse_per_target"], per, rtol=1e-4)
    np.testing.assert_allclose(m["mse"], per.mean(), rtol=1e-4)
    np.testing.assert_allclose(m["rmse_physical"], np.sqrt(per) * s["target_std"], rtol=1e-4)
    np.testing.assert_allclose(m["baseline_mean_mse"], (ys**2).mean(), rtol=1e-4)
    # Linear readout: the normal equations on the standardised stats set, features = the chunk's samples and 1.
    xf, yf = imu.generate(0, 40, split="train", **law)
    xf, yf = (xf - s["input_mean"]) / s["input_std"], (yf - s["target_mean"]) / s["target_std"]

    def feats(a):  # each chunk's 4 samples × 3 channels, then a constant
        return np.concatenate([a.reshape(len(a), 5, 12), np.ones((len(a), 5, 1))], -1).reshape(-1, 13)

    f = feats(xf)
    w = np.linalg.solve(f.T @ f, f.T @ yf.reshape(-1, 2))
    np.testing.assert_allclose(m["baseline_linear_mse"], ((feats(xs) @ w - ys.reshape(-1, 2)) ** 2).mean(),
                               rtol=1e-4)
    assert m["baseline_linear_mse"] < m["baseline_mean_mse"]  # the fit explains something in sample
    assert (m["num_examples"], m["num_targets"], m["source"]) == (7, 35, "imu_odometry")
    np.testing.assert_allclose(m["trace_target"], y[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["trace_predicted"], out[0] * s["target_std"] + s["target_mean"], rtol=1e-4,
                               atol=1e-6)


def _write_bench(root, rng, lengths):
    """A tiny marker_writing file in the authors' layout: episodes of ``lengths`` targets (10 samples each)."""
    import h5py

    spec = csp_bench.DATASETS["marker_writing"]
    spec.path(root).parent.mkdir(parents=True)
    xs = [rng.normal(3.0, 2.0, size=(10 * c, 4)) for c in lengths]
    ys = [np.cumsum(rng.normal(size=(c, 7)), axis=0) for c in lengths]
    with h5py.File(spec.path(root), "w") as f:
        for m, eps in (("tactile", xs), ("kinova", ys)):
            f.create_dataset(m, data=np.concatenate(eps))
            f.create_dataset(f"{m}_episode_ids", data=np.concatenate([[0], np.cumsum([len(e) for e in eps])]))
    return xs, ys


def test_csp_bench_source_splits_standardises_and_masks(tmp_path, rng):
    pytest.importorskip("h5py")
    xs, ys = _write_bench(tmp_path, rng, [3, 5, 4, 2, 3])
    task = _task(source="csp_bench", manual_dir=str(tmp_path), train_fraction=0.6, eval_batch_size=2)
    assert (task.chunk, task.num_chunks, task.input_dim, task.output_dim, task.eval_examples) == (10, 5, 4, 2, 2)
    diffs = [np.concatenate([np.zeros((1, 2)), np.diff(y[:, :2], axis=0)]) for y in ys]
    x_train, y_train = np.concatenate(xs[:3]), np.concatenate(diffs[:3])
    np.testing.assert_allclose(task.stats["input_mean"], x_train.mean(0), rtol=1e-10)
    np.testing.assert_allclose(task.stats["target_std"], y_train.std(0), rtol=1e-10)
    np.testing.assert_array_equal(task.test["target_mask"], [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    want = (diffs[4] - y_train.mean(0)) / y_train.std(0)
    np.testing.assert_allclose(task.test["targets"][1, :3], want, rtol=1e-5, atol=1e-6)
    batch = next(task.train_iterator(5, 4))
    picks = np.random.default_rng([5, 0]).integers(0, 3, 4)
    np.testing.assert_array_equal(batch["inputs"], task.train["inputs"][picks])
    # Evaluation counts real targets only: zeros as predictions give the train-mean baseline.
    m = task.evaluate(lambda b: np.zeros(b["inputs"].shape[:2] + (2,), np.float32), seed=0)
    assert m["num_targets"] == 5 and len(m["trace_target"]) == 2  # the first eval episode's real targets
    np.testing.assert_allclose(m["trace_target"], diffs[3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["mse"], m["baseline_mean_mse"], rtol=1e-12)
    np.testing.assert_allclose(m["mse"], np.mean(((np.concatenate(diffs[3:]) - y_train.mean(0)) / y_train.std(0))
                                                 ** 2), rtol=1e-5)


@pytest.mark.parametrize("fields, match", [
    ({"source": "tactile"}, "config.task.source='tactile' is not allowed; allowed: imu_odometry, csp_bench"),
    ({"chunk": 0}, "config.task.chunk=0 is not allowed"),
    ({"noise_std": -1.0}, "config.task.noise_std=-1.0 is not allowed"),
    ({"eval_examples": 0}, "config.task.eval_examples=0 is not allowed"),
    ({"source": "csp_bench"}, "config.task.manual_dir=None is not allowed with source='csp_bench'"),
    ({"source": "csp_bench", "manual_dir": "/nonexistent", "dataset": "ronin"},
     "CSP-Bench file /nonexistent/ronin/ronin_i50o5_test.h5 not found"),
])
def test_bad_fields_are_one_line(fields, match):
    with pytest.raises(ConfigError, match=match) as e:
        _task(**fields)
    assert "\n" not in str(e.value)


def test_check_model_names_the_field():
    task = _task(**SMALL)
    good = {"input": "continuous", "head": "regression", "input_dim": 3, "output_dim": 2}
    task.check_model(good)
    with pytest.raises(ConfigError, match="config.model.output_dim=4 is not allowed with task 'csp'"):
        task.check_model({**good, "output_dim": 4})
