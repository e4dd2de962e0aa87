"""Tests of the randomised-label option of the icl task (train_label_noise, eval_label_noise) and its CLI."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seqjax.data import icl as icl_data
from seqjax.errors import ConfigError
from seqjax.tasks import icl_baselines as B
from seqjax.tasks.icl import ICLTask
from tests.test_experiments import _cli


def _config(**overrides):
    cfg = ml_collections.ConfigDict({
        "name": "icl", "function_class": "sliding_window", "dim": 3, "n_points": 10, "noise_std": 0.0,
        "eval_batch_size": 40, "eval_seed": 7, "eval_chunk_size": 16, "ilwd_batch_size": 0,
        "baselines": ["least_squares"],
    })
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _least_squares_model(batch):
    """A causal "model" running least squares on the tokens it reads (x at even, y at odd positions)."""
    inputs = batch["inputs"]
    preds = B.least_squares(inputs[:, 0::2], inputs[:, 1::2, 0])
    return jnp.zeros(inputs.shape[:2]).at[:, 0::2].set(preds)[..., None]


def test_training_batches_read_randomised_labels_and_score_clean_ones():
    clean = next(ICLTask(_config()).train_iterator(seed=3, batch_size=32))
    noisy_task = ICLTask(_config(train_label_noise=0.5))
    it = noisy_task.train_iterator(seed=3, batch_size=32)
    noisy = next(it)
    # The same prompts; the loss targets are the clean labels.
    np.testing.assert_array_equal(np.asarray(noisy["ys"]), np.asarray(clean["ys"]))
    np.testing.assert_array_equal(np.asarray(noisy["inputs"][:, 0::2]), np.asarray(clean["inputs"][:, 0::2]))
    ys, read = np.asarray(clean["ys"]), np.asarray(noisy["inputs"][:, 1::2, 0])
    replaced = read != ys
    assert abs(replaced.mean() - 0.5) < 4 * np.sqrt(0.25 / replaced.size)
    for b, i in zip(*np.nonzero(replaced)):
        rows = np.flatnonzero(ys[:, i] == read[b, i])
        assert rows.size == 1 and rows[0] != b  # another prompt's label at the same point
    # The stream is reproducible from the seed, and a resumed one is identical.
    it2 = noisy_task.train_iterator(seed=3, batch_size=32)
    np.testing.assert_array_equal(np.asarray(next(it2)["inputs"]), np.asarray(noisy["inputs"]))
    second = next(it)
    it3 = noisy_task.train_iterator(seed=3, batch_size=32)
    it3.set_state({"step": 1})
    np.testing.assert_array_equal(np.asarray(next(it3)["inputs"]), np.asarray(second["inputs"]))


def test_evaluation_with_randomised_context_labels():
    # Linear prompts: clean least squares is exact from d + 1 points on, randomised labels spoil it.
    clean = ICLTask(_config(function_class="linear")).evaluate(jax.jit(_least_squares_model), seed=0)
    task = ICLTask(_config(function_class="linear", eval_label_noise=0.5))
    res = task.evaluate(jax.jit(_least_squares_model), seed=0)
    json.dumps(res)
    assert res["label_noise"]["train"] == 0.0 and res["label_noise"]["eval"] == 0.5
    assert abs(res["label_noise"]["eval_replaced_fraction"] - 0.5) < 4 * np.sqrt(0.25 / 400)
    assert clean["label_noise"] == {"train": 0.0, "eval": 0.0, "eval_replaced_fraction": 0.0}
    # Same prompts, scored against clean labels: the zero predictor does not change ...
    assert res["error_per_n"]["zero"] == clean["error_per_n"]["zero"]
    # ... the model and least squares read the same randomised labels (so they agree) and do worse.
    np.testing.assert_allclose(res["error_per_n"]["model"], res["error_per_n"]["least_squares"], rtol=1e-3,
                               atol=1e-5)
    assert max(clean["error_per_n"]["least_squares"][4:]) < 1e-5
    assert min(res["error_per_n"]["least_squares"][4:]) > 0.1
    # Reference: least squares in float64 on labels randomised as the task does.
    k_data = jax.random.split(jax.random.key(7))[0]
    data = icl_data.sample_batch(k_data, "linear", 40, 10, 3)
    ctx, _ = icl_data.randomize_labels(jax.random.fold_in(k_data, 7), data["ys"], 0.5)
    xs, ctx, ys = (np.asarray(a, np.float64) for a in (data["xs"], ctx, data["ys"]))
    ref = np.zeros_like(ys)
    for b in range(40):
        for i in range(1, 10):
            ref[b, i] = xs[b, i] @ np.linalg.pinv(xs[b, :i]) @ ctx[b, :i]
    np.testing.assert_allclose(res["error_per_n"]["least_squares"], np.mean((ref - ys) ** 2, axis=0) / 3,
                               rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("field, value", [("train_label_noise", 1.5), ("eval_label_noise", -0.1),
                                          ("train_label_noise", "half")])
def test_config_errors(field, value):
    with pytest.raises(ConfigError, match=f"config.task.{field}=.* must be a number in \\[0, 1\\]") as info:
        ICLTask(_config(**{field: value}))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args, field", [
    (["--config=configs/icl/regression.py:fc=class_mixture", "--config.task.task_kwargs.p_linear=-1"],
     "config.task.task_kwargs.p_linear=-1.0 must be a number >= 0"),
    (["--config=configs/icl/regression.py:fc=class_mixture", "--config.task.task_kwargs.p_linear=0",
      "--config.task.task_kwargs.p_decision_tree=0"], "p_<member> are all 0"),
    (["--config=configs/icl/regression.py:fc=class_mixture", "--config.task.task_kwargs.window=3"],
     "task_kwargs"),
    (["--config=configs/icl/regression.py:fc=class_mixture", "--config.task.baselines=bayes_class_mixture"],
     "bayes_class_mixture"),
    (["--config=configs/icl/regression.py:fc=sliding_window,label_noise=lots"], "label_noise='lots'"),
    (["--config=configs/icl/regression.py:fc=sliding_window,label_noise=2"], "config.task.train_label_noise=2.0"),
    (["--config.task.eval_label_noise=-1"], "config.task.eval_label_noise=-1.0"),
])
def test_cli_errors_are_one_line(tmp_path, args, field):
    r = _cli("experiments.icl", *args, f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "w").exists()
