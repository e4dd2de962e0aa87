"""Tests of the ICL metrics (error per n, SPD, ILWD) and of ICLTask (seqjax.tasks.icl)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import seqjax.tasks
from seqjax.data import icl as icl_data
from seqjax.errors import ConfigError
from seqjax.tasks import icl_baselines as B
from seqjax.tasks.base import DataIterator, Task
from seqjax.tasks.icl import ICLTask, error_per_n, fit_linear_weights, ilwd, probe_model_weights, spd


def _config(**overrides):
    cfg = ml_collections.ConfigDict(
        {
            "name": "icl",
            "function_class": "linear",
            "dim": 3,
            "n_points": 8,
            "noise_std": 0.0,
            "eval_batch_size": 24,
            "eval_seed": 7,
            "eval_chunk_size": 16,
            "ilwd_batch_size": 6,
        }
    )
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _least_squares_model(batch):
    """A causal "model" that runs least squares on its own tokens (reads x's at even, y's at odd)."""
    inputs = batch["inputs"]
    xs, ys = inputs[:, 0::2], inputs[:, 1::2, 0]
    preds = B.least_squares(xs, ys)
    out = jnp.zeros(inputs.shape[:2]).at[:, 0::2].set(preds)
    return out[..., None]


# ---------------------------------------------------------------------------
# Metrics.


def test_error_per_n_of_zero_predictor_is_one_on_linear(rng):
    d = 5
    data = icl_data.sample_batch(jax.random.key(int(rng.integers(2**31))), "linear", 2000, 4, d)
    err = np.asarray(error_per_n(jnp.zeros_like(data["ys"]), data["ys"], d))
    assert err.shape == (4,)
    assert np.all(np.abs(err - 1.0) < 0.15)  # std of the estimate ~0.04


def test_error_per_n_hand_case():
    preds = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    ys = jnp.array([[0.0, 0.0], [2.0, 2.0]])
    np.testing.assert_allclose(np.asarray(error_per_n(preds, ys, 2)), [(1 + 4) / 2 / 2, (4 + 4) / 2 / 2])


def test_spd(rng):
    a = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(spd(a, a)), np.zeros(4))
    pa = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    pb = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(np.asarray(spd(pa, pb)), [2.5, 6.5])
    np.testing.assert_allclose(np.asarray(spd(pa, pb, dim=2)), [1.25, 3.25])


def test_fit_linear_weights_and_ilwd(rng):
    w = rng.normal(size=(3, 4, 5))
    q = rng.normal(size=(3, 4, 12, 5))
    answers = np.einsum("bnqd,bnd->bnq", q, w)
    fitted = np.asarray(fit_linear_weights(jnp.asarray(q, jnp.float32), jnp.asarray(answers, jnp.float32)))
    np.testing.assert_allclose(fitted, w, rtol=1e-4, atol=1e-4)
    w2 = w + 1.0
    np.testing.assert_allclose(np.asarray(ilwd(jnp.asarray(w), jnp.asarray(w2), dim=5)), np.ones(4), rtol=1e-6)


def test_probing_recovers_a_known_linear_predictor(rng):
    d, n = 3, 5
    w_star = jnp.asarray(rng.normal(size=(d,)), jnp.float32)

    def predict(batch):
        # Ignores the context: f(x) = w*.x at every token.
        return jnp.einsum("bld,d->bl", batch["inputs"], w_star)[..., None]

    xs = jnp.asarray(rng.normal(size=(2, n, d)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(2, n)), jnp.float32)
    probes = jnp.asarray(rng.normal(size=(2, 2 * d, d)), jnp.float32)
    w = probe_model_weights(predict, xs, ys, probes, chunk_size=4)
    assert w.shape == (2, n, d)
    np.testing.assert_allclose(w, np.broadcast_to(np.asarray(w_star), w.shape), rtol=1e-4, atol=1e-4)


def test_probing_sees_only_the_prefix(rng):
    d, n = 2, 6
    xs = jnp.asarray(rng.normal(size=(3, n, d)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(3, n)), jnp.float32)
    probes = jnp.asarray(rng.normal(size=(3, 4, d)), jnp.float32)
    w = probe_model_weights(_least_squares_model, xs, ys, probes, chunk_size=5)
    np.testing.assert_allclose(w, np.asarray(B.least_squares_weights(xs, ys)), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------
# The task.


def test_task_protocol_and_build():
    task = seqjax.tasks.build(_config())
    assert isinstance(task, ICLTask) and isinstance(task, Task)
    assert task.name == "icl" and task.max_length == 16
    assert isinstance(task.train_iterator(0, 4), DataIterator)
    assert task.baselines == ("least_squares", "knn3", "averaging", "ridge", "gd")
    assert "lasso" in ICLTask(_config(function_class="sparse_linear", dim=4)).baselines


def test_iterator_batches_layout_and_determinism():
    task = ICLTask(_config())
    it1, it2, it3 = task.train_iterator(3, 4), task.train_iterator(3, 4), task.train_iterator(4, 4)
    b1, b2, b3 = next(it1), next(it2), next(it3)
    assert b1["inputs"].shape == (4, 16, 3) and b1["ys"].shape == (4, 8)
    assert b1["inputs"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(b1["inputs"]), np.asarray(b2["inputs"]))
    assert not np.allclose(np.asarray(b1["inputs"]), np.asarray(b3["inputs"]))
    inputs = np.asarray(b1["inputs"])
    np.testing.assert_array_equal(inputs[:, 1::2, 0], np.asarray(b1["ys"]))
    assert np.all(inputs[:, 1::2, 1:] == 0)
    # The next batch is a different draw.
    assert not np.allclose(np.asarray(next(it1)["inputs"]), inputs)


def test_iterator_resume_is_exact():
    task = ICLTask(_config())
    it = task.train_iterator(11, 3)
    batches = [next(it) for _ in range(5)]
    fresh = task.train_iterator(11, 3)
    for _ in range(2):
        next(fresh)
    state = json.loads(json.dumps(fresh.get_state()))
    resumed = task.train_iterator(11, 3)
    resumed.set_state(state)
    for want in batches[2:]:
        got = next(resumed)
        np.testing.assert_array_equal(np.asarray(got["inputs"]), np.asarray(want["inputs"]))
        np.testing.assert_array_equal(np.asarray(got["ys"]), np.asarray(want["ys"]))


def test_curriculum_stages_in_batches():
    cur = {"enabled": True, "dim_start": 2, "dim_end": 4, "dim_inc": 1, "points_start": 3,
           "points_end": 5, "points_inc": 1, "interval": 2}
    task = ICLTask(_config(dim=4, n_points=5, curriculum=cur))
    it = task.train_iterator(0, 2)
    seen = {}
    for step in range(7):
        batch = next(it)
        seen[step] = batch
    for step, (active, n) in {0: (2, 3), 1: (2, 3), 2: (3, 4), 4: (4, 5), 6: (4, 5)}.items():
        x = np.asarray(seen[step]["inputs"])
        assert x.shape == (2, 2 * n, 4) and seen[step]["ys"].shape == (2, n)
        assert np.all(x[:, 0::2, active:] == 0) and np.all(x[:, 0::2, :active] != 0)
    off = ICLTask(_config(dim=4, n_points=5, curriculum={**cur, "enabled": False}))
    assert off.stage(0) == (4, 5)


def test_loss_reads_even_positions(rng):
    task = ICLTask(_config())
    batch = next(task.train_iterator(0, 4))
    ys = np.asarray(batch["ys"])
    garbage = rng.normal(size=ys.shape).astype(np.float32) * 5
    right = np.zeros((4, 16, 1), np.float32)
    right[:, 0::2, 0] = ys
    right[:, 1::2, 0] = garbage
    wrong = np.zeros((4, 16, 1), np.float32)
    wrong[:, 1::2, 0] = ys
    wrong[:, 0::2, 0] = garbage
    loss, metrics = jax.jit(task.loss)(jnp.asarray(right), batch)
    assert float(loss) < 1e-12 and float(metrics["error_last"]) < 1e-12
    loss_w, metrics_w = task.loss(jnp.asarray(wrong), batch)
    assert float(loss_w) > 1.0
    np.testing.assert_allclose(float(metrics_w["mse"]), np.mean((garbage - ys) ** 2), rtol=1e-5)
    np.testing.assert_allclose(float(metrics_w["error_last"]), np.mean((garbage[:, -1] - ys[:, -1]) ** 2),
                               rtol=1e-5)


def test_evaluate_with_a_least_squares_model():
    task = ICLTask(_config())
    result = task.evaluate(jax.jit(_least_squares_model), seed=0)
    json.dumps(result)  # JSON-able
    assert result["n"] == list(range(1, 9)) and result["dim"] == 3
    err = result["error_per_n"]
    assert set(err) >= {"model", "zero", "least_squares", "knn3", "averaging", "ridge", "gd"}
    np.testing.assert_allclose(err["model"], err["least_squares"], rtol=1e-3, atol=1e-5)
    assert max(err["model"][4:]) < 1e-5 and min(err["zero"]) > 0.2
    assert max(result["spd"]["least_squares"]) < 1e-5 and max(result["spd"]["averaging"]) > 1e-2
    ilwd_ = result["ilwd"]
    assert len(ilwd_["least_squares"]) == 8 and max(ilwd_["least_squares"]) < 1e-4
    assert max(ilwd_["true"][4:]) < 1e-4 and ilwd_["true"][0] > 0.1  # no context: w = 0
    assert max(ilwd_["knn3"]) > 1e-2
    # Fixed eval set (eval_seed): the same prompts again, whatever the seed argument.
    light = ICLTask(_config(ilwd_batch_size=0, baselines=["least_squares"]))
    again = light.evaluate(jax.jit(_least_squares_model), seed=123)
    assert again["error_per_n"]["zero"] == result["error_per_n"]["zero"]
    other = ICLTask(_config(eval_seed=None, ilwd_batch_size=0, baselines=["least_squares"]))
    assert other.evaluate(jax.jit(_least_squares_model), seed=123)["error_per_n"]["zero"] != err["zero"]


def test_evaluate_classification_reports_accuracy():
    task = ICLTask(_config(function_class="linear_classification", ilwd_batch_size=0,
                           baselines=["least_squares"]))
    result = task.evaluate(jax.jit(_least_squares_model), seed=0)
    acc = result["accuracy_per_n"]["least_squares"]
    assert "ilwd" not in result
    assert acc[-1] > 0.6 and all(0 <= a <= 1 for a in acc)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"function_class": "cubic"}, "config.task.function_class"),
        ({"dim": 0}, "config.task.dim"),
        ({"n_points": -1}, "config.task.n_points"),
        ({"noise_std": -0.1}, "config.task.noise_std"),
        ({"function_class": "noisy_linear"}, "config.task.noise_std"),
        ({"curriculum": {"dim_end": 9}}, "config.task.curriculum.dim_end"),
        ({"curriculum": {"dim_start": 2, "dim_end": 3, "points_end": 20}}, "config.task.curriculum.points_end"),
        ({"baselines": ["least_squares", "svm"]}, "config.task.baselines"),
        ({"task_kwargs": {"depth": 2}}, "config.task.task_kwargs.depth"),
        ({"eval_batch_size": 0}, "config.task.eval_batch_size"),
    ],
)
def test_config_errors(overrides, field):
    with pytest.raises(ConfigError) as info:
        ICLTask(_config(**overrides))
    message = str(info.value)
    assert field in message and "\n" not in message
