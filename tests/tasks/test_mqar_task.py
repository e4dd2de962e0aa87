"""The ``mqar`` task (MQAR and set disjointness): streams, masked loss, evaluation and config checks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import experiment
from seqjax.config import apply_overrides, load_config
from seqjax.data.mqar import IGNORE
from seqjax.errors import ConfigError
from seqjax.tasks import build
from seqjax.tasks.mqar import MQARTask, default_config


def _task(**fields):
    """A small task; a plain dict config, so that fields of the wrong type reach the task's checks."""
    cfg = default_config().to_dict() | dict(vocab_size=40, seq_len=24, num_kv_pairs=3, eval_examples=13,
                                            eval_batch_size=5)
    return MQARTask(cfg | fields)


@pytest.fixture(scope="module")
def task():
    return _task()


def test_built_by_name_with_both_kinds():
    t = build(default_config())
    assert (t.name, t.kind, t.max_length, t.vocab_size) == ("mqar", "mqar", 64, 8192)
    sd = _task(kind="set_disjointness", size_a=3, size_b=5, seq_len=11)
    assert sd.kind == "set_disjointness" and sd.max_length == 11


def test_train_stream_resumes_and_rows_do_not_depend_on_the_batch(task):
    it = task.train_iterator(seed=3, batch_size=8)
    first = next(it)
    assert set(first) == {"inputs", "targets"}
    assert first["inputs"].shape == first["targets"].shape == (8, 24) and first["inputs"].dtype == np.int32
    assert np.all((first["targets"] != IGNORE).sum(axis=1) == 3)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it)["inputs"] for _ in range(3)]
    again = task.train_iterator(seed=3, batch_size=8)
    again.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(again)["inputs"], w)
    # Row r of a step is the same example whatever the batch size: a process reading rows 8..15 of a
    # 16-row batch draws exactly those.
    wide = task.train_iterator(seed=3, batch_size=16)
    np.testing.assert_array_equal(next(wide)["inputs"][:8], first["inputs"])
    assert not np.array_equal(next(task.train_iterator(seed=4, batch_size=8))["inputs"], first["inputs"])


def test_a_fixed_train_set_is_read_once_per_epoch_in_a_new_order():
    t = _task(num_train_examples=10)
    it = t.train_iterator(seed=0, batch_size=4)
    rows = np.concatenate([next(it)["inputs"] for _ in range(5)])  # 20 rows: two epochs
    epoch0, epoch1 = [{r.tobytes() for r in rows[i:i + 10]} for i in (0, 10)]
    assert len(epoch0) == 10 and epoch0 == epoch1  # every example once per epoch, the same 10 examples
    assert not np.array_equal(rows[:10], rows[10:])  # ... reshuffled
    fresh = t.train_iterator(seed=0, batch_size=4)
    fresh.set_state({"step": 3})  # mid-epoch resume (rows 12..15)
    np.testing.assert_array_equal(next(fresh)["inputs"], rows[12:16])


def test_loss_matches_numpy_and_ignores_padding_rows(rng, task):
    targets = rng.integers(0, 40, size=(4, 24)).astype(np.int32)
    targets[rng.random(targets.shape) < 0.7] = IGNORE
    logits = rng.normal(size=(4, 24, 40)).astype(np.float32) * 2
    weight = np.array([1, 1, 0, 1], np.float32)
    loss, metrics = jax.jit(task.loss)(jnp.asarray(logits), {"targets": jnp.asarray(targets),
                                                             "weight": jnp.asarray(weight)})
    lg = logits.astype(np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    nll, right, n = 0.0, 0.0, 0
    for b in (0, 1, 3):
        for t in range(24):
            if targets[b, t] != IGNORE:
                nll -= logp[b, t, targets[b, t]]
                right += lg[b, t].argmax() == targets[b, t]
                n += 1
    np.testing.assert_allclose(float(loss), nll / n, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["acc"]), right / n, rtol=1e-6)
    assert float(metrics["ce"]) == float(loss)


def _oracle(batch):
    """Logits that put 10 more on every scored target (0 elsewhere)."""
    t = batch["targets"]
    out = np.zeros(t.shape + (40,), np.float32)
    b, pos = np.nonzero(t != IGNORE)
    out[b, pos, t[b, pos]] = 10.0
    return out


@pytest.mark.parametrize("kind", ["mqar", "set_disjointness"])
def test_evaluate_scores_an_oracle_and_a_uniform_model(kind):
    fields = dict(kind="set_disjointness", size_a=3, size_b=5) if kind != "mqar" else {}
    t = _task(**fields)
    seen = []

    def oracle(batch):
        assert batch["inputs"].shape == (5, 24)  # always eval_batch_size rows
        seen.append(batch["inputs"])
        return _oracle(batch)

    m = t.evaluate(oracle, seed=0)
    per = 3 if kind == "mqar" else 1
    assert m["num_examples"] == 13 and m["num_positions"] == 13 * per and m["kind"] == kind
    assert m["accuracy"] == 1.0 and m["sequence_accuracy"] == 1.0
    np.testing.assert_allclose(m["ce"], -np.log(np.exp(10.0) / (np.exp(10.0) + 39)), rtol=1e-6)
    uniform = t.evaluate(lambda b: np.zeros(b["targets"].shape + (40,), np.float32), seed=0)
    np.testing.assert_allclose(uniform["ce"], np.log(40), rtol=1e-6)
    assert uniform["accuracy"] == 0.0  # argmax is id 0: never a value, a label or a set element
    # The eval set does not depend on eval_batch_size, and is not the training stream.
    other = []
    _task(eval_batch_size=4, **fields).evaluate(lambda b: other.append(b["inputs"]) or _oracle(b), seed=0)
    np.testing.assert_array_equal(np.concatenate(seen)[:13], np.concatenate(other)[:13])
    train = next(t.train_iterator(seed=0, batch_size=13))["inputs"]
    assert not any(np.array_equal(a, b) for a in train for b in np.concatenate(seen)[:13])


def test_a_half_right_model_scores_half_the_positions(task):
    """Wrong at the second query of every row: accuracy 2/3, and no example wholly right."""
    def half(batch):
        out = _oracle(batch)
        for b in range(len(out)):
            pos = np.nonzero(batch["targets"][b] != IGNORE)[0]
            out[b, pos[1], :] = 0.0  # the second query of each row: argmax 0, wrong
        return out

    m = task.evaluate(half, seed=1)
    np.testing.assert_allclose(m["accuracy"], 2 / 3)
    assert m["sequence_accuracy"] == 0.0


@pytest.mark.parametrize("fields, message", [
    (dict(kind="mqqar"), "config.task.kind='mqqar' is not allowed; allowed: mqar, set_disjointness"),
    (dict(num_kv_pairs=7), "config.task.seq_len=24 is not allowed; allowed: an int >= 28 = 4 * "
                           "config.task.num_kv_pairs"),
    (dict(vocab_size=7), "config.task.vocab_size=7 is not allowed; allowed: an int >= 8 = 2 * "
                         "config.task.num_kv_pairs + 2"),
    (dict(power_a=-1.0), "config.task.power_a=-1.0 is not allowed; allowed: a number > 0"),
    (dict(random_fill="yes"), "config.task.random_fill='yes' is not allowed; allowed: True, False"),
    (dict(kind="set_disjointness", size_a=20, size_b=20), "config.task.vocab_size=40 is not allowed; allowed: "
                                                          "an int >= 46 = 6 special ids"),
    (dict(kind="set_disjointness", answer="both"), "config.task.answer='both' is not allowed; allowed: label, element"),
    (dict(num_train_examples=-1), "config.task.num_train_examples=-1 is not allowed; allowed: an int >= 0"),
    (dict(eval_examples=0), "config.task.eval_examples=0 is not allowed; allowed: an int >= 1"),
    (dict(eval_seed=-2), "config.task.eval_seed=-2 is not allowed; allowed: an int >= 0 or None"),
])
def test_bad_fields_are_one_line_errors(fields, message):
    with pytest.raises(ConfigError) as e:
        _task(**fields)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_model_vocabulary_smaller_than_the_tasks_is_refused():
    c = load_config("configs/mqar/mqar.py")
    apply_overrides(c, ["task.vocab_size=512"])  # the model keeps 64
    with pytest.raises(ConfigError, match=r"^config.model.vocab_size=64 is smaller than the vocabulary of task "
                                          r"'mqar' \(ids below 512\); allowed: config.model.vocab_size >= 512$"):
        experiment.prepare(c, num_devices=1)
    apply_overrides(c, ["model.vocab_size=512"])
    assert experiment.prepare(c, num_devices=1).task.vocab_size == 512


def test_unigram_baseline_predicts_the_most_frequent_prefix_token(rng):
    from seqjax.tasks.mqar import unigram_logits

    vocab = 9
    inputs = rng.integers(0, vocab, size=(3, 17))
    pred = unigram_logits(inputs, vocab).argmax(-1)
    for b in range(inputs.shape[0]):
        for t in range(inputs.shape[1]):
            prefix = list(inputs[b, : t + 1])
            best = max(prefix.count(v) for v in set(prefix))
            tied = {v for v in set(prefix) if prefix.count(v) == best}
            # the most recently seen of the tied tokens
            expected = next(v for v in reversed(prefix) if v in tied)
            assert pred[b, t] == expected, (b, t, prefix)
