"""The forecasting task (seqjax.tasks.forecast): batches, stream, loss and metrics against NumPy, baselines, errors."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.tasks import build
from seqjax.tasks.forecast import ForecastTask, apply_linear, default_config, fit_linear


def _task(**kw):
    cfg = default_config()
    cfg.update(dict(dataset="elnino", seq_len=24, label_len=12, pred_len=6, eval_batch_size=16) | kw)
    return ForecastTask(cfg)


def test_registered_and_scaled_with_train_statistics():
    t = build(ml_collections.ConfigDict(dict(default_config()) | {"dataset": "elnino", "seq_len": 24,
                                                                   "label_len": 12, "pred_len": 6}))
    assert isinstance(t, ForecastTask)
    a, b = t.borders["train"]
    np.testing.assert_allclose(t.values[a:b].mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(t.values[a:b].std(0), 1.0, rtol=1e-9)
    assert abs(t.values[b:].mean()) > 1e-3  # the test segment is scaled with the train statistics, not its own


def test_batch_layout_and_stream():
    t = _task(dataset="macrodata", features="M", seq_len=8, label_len=4, pred_len=3)
    assert (t.num_channels, t.num_marks, t.input_dim) == (12, 1, 13)
    it = t.train_iterator(0, 5)
    b0 = next(it)
    assert b0["inputs"].shape == (5, 8, 13) and b0["decoder_inputs"].shape == (5, 7, 13)
    assert b0["targets"].shape == (5, 3, 12)
    np.testing.assert_array_equal(b0["decoder_inputs"][:, 4:, :12], 0.0)  # horizon values never fed
    np.testing.assert_allclose(b0["decoder_inputs"][:, :4, :12], b0["inputs"][:, 4:, :12])
    # The stream covers every training window once per epoch.
    n = len(t.train_starts)
    last = next(t.train_iterator(0, n))["inputs"][:, -1, 0]
    np.testing.assert_allclose(np.sort(last), np.sort(t.values[t.train_starts + 7, 0]), rtol=1e-6)


def test_resume_equals_uninterrupted():
    t = _task()
    a = t.train_iterator(3, 4)
    batches = [next(a)["inputs"] for _ in range(140)]  # past one epoch (~465 windows, 4 per step)
    b = t.train_iterator(3, 4)
    b.set_state({"step": 130})
    np.testing.assert_array_equal(next(b)["inputs"], batches[130])


def test_loss_against_numpy():
    t = _task()
    rng = np.random.default_rng(0)
    out = rng.normal(size=(4, 18, 1)).astype(np.float32)  # decoder length label + pred; the loss reads the last 6
    tgt = rng.normal(size=(4, 6, 1)).astype(np.float32)
    w = np.array([1, 1, 0, 1], np.float32)
    loss, m = t.loss(jnp.asarray(out), {"targets": tgt, "weight": w})
    err = out[:, -6:].astype(np.float64) - tgt
    ref_mse = (np.mean(err**2, axis=(1, 2)) * w).sum() / w.sum()
    ref_mae = (np.mean(np.abs(err), axis=(1, 2)) * w).sum() / w.sum()
    np.testing.assert_allclose(float(loss), ref_mse, rtol=1e-5)
    np.testing.assert_allclose(float(m["mae"]), ref_mae, rtol=1e-5)


def test_evaluate_metrics_against_numpy():
    t = _task(eval_examples=37)
    rng = np.random.default_rng(1)
    noise = {}

    def predict(batch):  # a forecast that depends on the rows: last label value + fixed noise per call shape
        x = batch["decoder_inputs"][:, :, :1]
        key = x.shape
        noise.setdefault(key, rng.normal(size=key).astype(np.float32))
        return x + noise[key]

    m = t.evaluate(predict, seed=0)
    # Reference: recompute from the raw definition with one explicit loop over windows.
    se = ae = bse = bae = 0.0
    preds = t.forecasts(predict, t.eval_starts)
    for n, i in enumerate(t.eval_starts):
        target = t.values[i + 24:i + 30]
        se += ((preds[n] - target) ** 2).sum()
        ae += np.abs(preds[n] - target).sum()
        bse += ((t.values[i + 23] - target) ** 2).sum()
        bae += np.abs(t.values[i + 23] - target).sum()
    count = 37 * 6
    np.testing.assert_allclose(m["mse"], se / count, rtol=1e-6)
    np.testing.assert_allclose(m["mae"], ae / count, rtol=1e-6)
    np.testing.assert_allclose(m["baseline_mse"], bse / count, rtol=1e-6)
    np.testing.assert_allclose(m["baseline_mae"], bae / count, rtol=1e-6)
    assert m["num_windows"] == 37 and len(m["mse_per_step"]) == 6
    ex = m["examples"]
    assert ex["starts"][0] == t.eval_starts[0] and ex["starts"][-1] == t.eval_starts[36]
    np.testing.assert_allclose(ex["truth"][-1], t.values[t.eval_starts[36] + 24:t.eval_starts[36] + 30, -1], rtol=1e-6)
    np.testing.assert_allclose(ex["forecast"][0], preds[0, :, -1])
    assert m["linear_mse"] < m["baseline_mse"]  # monthly SST: the seasonal linear map beats repeating the last month


def test_linear_baseline_recovers_a_linear_law():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 3))
    hist = rng.normal(size=(50, 5, 2))
    tgt = np.moveaxis(np.moveaxis(hist, 2, 1) @ w[:-1] + w[-1], 1, 2)
    np.testing.assert_allclose(fit_linear(hist, tgt), w, atol=1e-9)
    np.testing.assert_allclose(apply_linear(w, hist), tgt, atol=1e-12)


@pytest.mark.parametrize("field,value,match", [("dataset", "nile", "dataset"), ("features", "MS", "features"),
                                               ("label_len", 30, "label_len"), ("pred_len", 0, "pred_len"),
                                               ("seq_len", 600, "holds no window")])
def test_bad_fields(field, value, match):
    with pytest.raises(ConfigError, match=match) as e:
        _task(**{field: value})
    assert "\n" not in str(e.value)
