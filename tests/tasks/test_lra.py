"""The LRA task on in-memory sources of the builders' features: batches, masks,
loss, evaluation against NumPy, config errors, and a short training run that
must learn a toy rule (so the whole path — loader, mask, pooling, loss — works)."""

import math

import ml_collections
import numpy as np
import pytest

from seqjax import tasks
from seqjax.errors import ConfigError
from seqjax.tasks.lra import PIXEL_MEAN, PIXEL_STD, LRATask, evaluate_split


def _cfg(**kw):
    base = dict(name="lra", dataset="lra_listops", max_length=12, eval_batch_size=4)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _records(rng, n, retrieval=False, fixed=None):
    out = []
    for _ in range(n):
        if retrieval:
            a, b = (rng.integers(1, 9, rng.integers(2, 15)).astype(np.int32) for _ in range(2))
            out.append({"inputs1": a, "inputs2": b, "label": np.int32(int(a[0] == b[0]))})
        else:
            x = rng.integers(1, 9, fixed or rng.integers(2, 15)).astype(np.int32)
            out.append({"inputs": x, "label": np.int32(x[0] % 2)})
    return out


class _Source:
    """A random-access source with a short, stable repr (grain checks the repr on restore)."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __repr__(self):
        return f"_Source({len(self.records)})"


def _task(cfg, sources, monkeypatch):
    task = tasks.build(cfg)
    wrapped = {k: _Source(v) for k, v in sources.items()}
    monkeypatch.setattr(task, "source", lambda split: wrapped[split])
    return task


def test_batches_masks_and_resume(rng, monkeypatch):
    recs = _records(rng, 40)
    task = _task(_cfg(), {"train": recs}, monkeypatch)
    it = task.train_iterator(seed=3, batch_size=8)
    first = next(it)
    assert first["inputs"].shape == (8, 12) and first["inputs"].dtype == np.int32
    np.testing.assert_array_equal(first["mask"], first["inputs"] != 0)
    assert first["label"].shape == (8,)
    # The record behind each row: the label rule holds and the mask covers exactly its tokens.
    for row, m, y in zip(first["inputs"], first["mask"], first["label"]):
        assert y == row[0] % 2 and m.sum() == min(12, m.sum()) and not m[m.sum():].any()
    state = it.get_state()
    after = [next(it)["inputs"] for _ in range(3)]
    it.set_state(state)
    np.testing.assert_array_equal(np.stack(after), np.stack([next(it)["inputs"] for _ in range(3)]))


def test_retrieval_and_continuous_pixels(rng, monkeypatch):
    task = _task(_cfg(dataset="lra_retrieval"), {"train": _records(rng, 16, retrieval=True)}, monkeypatch)
    b = next(task.train_iterator(0, 4))
    assert b["inputs"].shape == (4, 2, 12) and b["mask"].shape == (4, 2, 12)
    np.testing.assert_array_equal(b["label"], (b["inputs"][:, 0, 0] == b["inputs"][:, 1, 0]).astype(np.int32))
    img = _records(rng, 8, fixed=12)
    for r in img:
        r["inputs"] = rng.integers(0, 256, 12).astype(np.int32)  # 0 is a real intensity here
    task = _task(_cfg(dataset="lra_image", pixels="continuous"), {"train": img}, monkeypatch)
    b = next(task.train_iterator(0, 4))
    assert b["inputs"].shape == (4, 12, 1) and b["mask"].all()
    tokens = np.asarray(task.to_batch({"inputs": np.stack([img[0]["inputs"]]), "label": np.zeros(1)})["inputs"])
    np.testing.assert_allclose(tokens[0, :, 0], (img[0]["inputs"] / 255.0 - PIXEL_MEAN) / PIXEL_STD,
                               rtol=1e-5, atol=1e-6)


def test_loss_and_evaluate_against_numpy(rng, monkeypatch):
    recs = _records(rng, 11)
    task = _task(_cfg(eval_splits=("validation", "test")), {"validation": recs[:5], "test": recs}, monkeypatch)
    w = rng.normal(size=(9, 10))

    def predict(batch):  # a fixed "model": logits from the first token
        return w[np.asarray(batch["inputs"])[:, 0]]

    metrics = task.evaluate(predict, seed=0)
    labels = np.array([r["label"] for r in recs])
    logits = w[[r["inputs"][0] for r in recs]]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert metrics["test"]["num_examples"] == 11 and metrics["validation"]["num_examples"] == 5
    assert metrics["accuracy"] == metrics["test"]["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))
    assert metrics["test"]["ce"] == pytest.approx(-np.mean(logp[np.arange(11), labels]))
    counts = np.bincount(labels, minlength=10)
    assert metrics["test"]["label_counts"] == counts.tolist()
    assert metrics["test"]["majority"] == pytest.approx(counts.max() / 11)
    ce, m = task.loss(np.asarray(logits, np.float32), {"label": labels})
    assert float(ce) == pytest.approx(metrics["test"]["ce"], rel=1e-5)
    assert float(m["acc"]) == pytest.approx(metrics["test"]["accuracy"])
    limited = evaluate_split(recs, predict, task.to_batch, features=("inputs",), max_length=12, batch_size=4,
                             num_classes=10, limit=3)
    assert limited["num_examples"] == 3 and math.isfinite(limited["ce"])


@pytest.mark.parametrize(
    "change, field",
    [
        ({"dataset": "lra_cifar"}, "config.task.dataset"),
        ({"max_length": 0}, "config.task.max_length"),
        ({"max_length": None}, "config.task.max_length"),
        ({"pixels": "continuous"}, "config.task.pixels"),
        ({"pixels": "rgb", "dataset": "lra_image"}, "config.task.pixels"),
        ({"eval_splits": ("dev",)}, "config.task.eval_splits"),
        ({"builder_config": "32_hard", "builder_kwargs": {"seed": 1}}, "config.task.builder_config"),
    ],
)
def test_config_errors(change, field):
    with pytest.raises(ConfigError) as info:
        LRATask(_cfg(**change))
    assert field in str(info.value) and "\n" not in str(info.value)


def test_training_learns_a_toy_rule(tmp_path, rng, monkeypatch):
    from seqjax import train
    from seqjax.train import default_config

    # label = parity of the LAST real token. The model is one sliding-window layer with window 1
    # (each position sees only itself) and "last" pooling: only the mask can point the pooling
    # at the last real token; without it the pooled position is padding and accuracy stays ~0.5.
    recs = []
    for _ in range(256):
        x = rng.integers(1, 9, rng.integers(2, 12)).astype(np.int32)
        recs.append({"inputs": x, "label": np.int32(x[-1] % 2)})
    task = _task(_cfg(eval_splits=("test",), eval_batch_size=32), {"train": recs, "test": recs[:64]}, monkeypatch)
    config = default_config()
    config.task = _cfg()
    config.model = dict(mixers="sliding_window", mixer_kwargs={"sliding_window": {"window": 1}}, num_layers=1,
                        d_model=16, causal=True, vocab_size=10, head="classification", num_classes=10,
                        pooling="last", positions="none", max_length=12)
    config.train.steps, config.train.batch_size, config.train.progress = 150, 16, False
    config.optim.learning_rate, config.optim.warmup_steps = 1e-2, 10
    config.mesh.data = 1
    res = train.run(config, str(tmp_path), task=task)
    assert res["metrics"]["accuracy"] > 0.9, res["metrics"]
