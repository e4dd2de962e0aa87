"""LRA pretraining objectives (``config.task.objective``): batches, loss against NumPy, errors, a tiny run each."""

import json
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seqjax import tasks
from seqjax.errors import ConfigError
from seqjax.tasks.lra_objectives import masked_positions


def _cfg(**kw):
    base = dict(name="lra", dataset="lra_listops", max_length=12, eval_batch_size=4)
    base.update(kw)
    return ml_collections.ConfigDict(base)


class _Source:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __repr__(self):
        return f"_Source({len(self.records)})"


def _records(rng, n, constant=False):
    out = []
    for _ in range(n):
        length = int(rng.integers(2, 13))
        x = np.full(length, rng.integers(1, 9)) if constant else rng.integers(1, 9, length)
        out.append({"inputs": x.astype(np.int32), "label": np.int32(x[0] % 2)})
    return out


def _task(cfg, sources, monkeypatch):
    task = tasks.build(cfg)
    wrapped = {k: _Source(v) for k, v in sources.items()}
    monkeypatch.setattr(task, "source", lambda split: wrapped[split])
    return task


def _np_ce(logits, targets, scored):
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return -picked[scored].mean(), (logits.argmax(-1) == targets)[scored].mean()


def test_causal_lm_targets_are_the_next_real_token_and_the_loss_matches_numpy(rng, monkeypatch):
    task = _task(_cfg(objective="causal_lm"), {"train": _records(rng, 20)}, monkeypatch)
    batch = next(task.train_iterator(seed=1, batch_size=8))
    tokens, real = batch["inputs"], batch["mask"]
    assert np.array_equal(batch["targets"][:, :-1][real[:, 1:]], tokens[:, 1:][real[:, 1:]])
    assert np.array_equal(batch["target_mask"][:, :-1], real[:, 1:]) and not batch["target_mask"][:, -1].any()
    logits = rng.normal(size=tokens.shape + (10,))
    ce, metrics = task.loss(jnp.asarray(logits, jnp.float32), batch)
    want_ce, want_acc = _np_ce(logits, batch["targets"], batch["target_mask"])
    np.testing.assert_allclose(float(ce), want_ce, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["acc"]), want_acc, rtol=1e-6)
    # Rows of weight 0 (the trainer's padding) do not count.
    weighted = dict(batch, weight=np.r_[np.ones(4), np.zeros(4)].astype(np.float32))
    half, _ = _np_ce(logits[:4], batch["targets"][:4], batch["target_mask"][:4])
    np.testing.assert_allclose(float(task.loss(jnp.asarray(logits, jnp.float32), weighted)[0]), half, rtol=1e-5)


def test_masked_lm_masks_15_percent_of_real_tokens_the_same_way_every_time(rng, monkeypatch):
    task = _task(_cfg(objective="masked_lm"), {"train": _records(rng, 20)}, monkeypatch)
    rows = np.zeros((6, 12), np.int32)
    for i in range(6):
        n = int(rng.integers(2, 13))
        rows[i, :n] = rng.integers(1, 9, n)
    batch = task.to_batch({"inputs": rows, "label": np.zeros(6, np.int32)})
    real = rows != 0
    scored = batch["target_mask"]
    assert np.all(scored.sum(1) == np.maximum(1, np.round(0.15 * real.sum(1))))
    assert not (scored & ~real).any()
    assert np.all(batch["inputs"][scored] == 0) and np.array_equal(batch["inputs"][~scored], rows[~scored])
    assert np.array_equal(batch["targets"][scored], rows[scored])
    again = task.to_batch({"inputs": rows.copy(), "label": np.zeros(6, np.int32)})
    assert np.array_equal(again["target_mask"], scored)
    # A longer row: about 15% masked, and different rows choose different positions.
    long = rng.integers(1, 9, (2, 200)).astype(np.int32)
    m = masked_positions(long, long != 0)
    assert m.sum(1).tolist() == [30, 30] and not np.array_equal(m[0], m[1])


@pytest.mark.parametrize("change, phrase", [
    ({"objective": "lm"}, r"config\.task\.objective"),
    ({"objective": "causal_lm", "dataset": "lra_retrieval"}, r"config\.task\.objective='causal_lm' needs one"),
    ({"objective": "masked_lm", "dataset": "lra_image"}, r"config\.task\.mask_token_id is needed"),
    ({"objective": "causal_lm", "dataset": "lra_image", "pixels": "continuous"}, r"config\.task\.objective"),
])
def test_config_errors(change, phrase):
    with pytest.raises(ConfigError, match=phrase):
        tasks.build(_cfg(**change))


@pytest.mark.parametrize("objective, model, phrase", [
    ("causal_lm", dict(head="classification", causal=True, vocab_size=10), r"config\.model\.head='classification'"),
    ("causal_lm", dict(head="lm", causal=False, vocab_size=10), r"config\.model\.causal=False"),
    ("masked_lm", dict(head="lm", causal=False, vocab_size=10), None),
])
def test_check_model(objective, model, phrase):
    task = tasks.build(_cfg(objective=objective))
    if phrase is None:
        task.check_model(ml_collections.ConfigDict(model))
        image = tasks.build(_cfg(objective=objective, dataset="lra_image", mask_token_id=256))
        with pytest.raises(ConfigError, match=r"config\.model\.vocab_size=256 has no id 256"):
            image.check_model(ml_collections.ConfigDict(dict(model, vocab_size=256)))
    else:
        with pytest.raises(ConfigError, match=phrase):
            task.check_model(ml_collections.ConfigDict(model))
    with pytest.raises(ConfigError, match=r"config\.task\.objective='causal_lm' needs per-position logits"):
        tasks.build(_cfg(objective="causal_lm")).loss(jnp.zeros((2, 10)), {
            "targets": np.zeros((2, 12), np.int32), "target_mask": np.ones((2, 12), bool)})


@pytest.mark.parametrize("objective", ["causal_lm", pytest.param("masked_lm", marks=pytest.mark.slow)])
def test_a_tiny_run_learns(tmp_path, rng, monkeypatch, objective):
    from seqjax import train
    from seqjax.train import default_config

    # Rows repeat one token: the next token (causal) and a masked one (from its neighbours) are learnable.
    recs = _records(rng, 256, constant=True)
    task = _task(_cfg(objective=objective, eval_splits=("test",), eval_batch_size=32),
                 {"train": recs, "test": recs[:64]}, monkeypatch)
    config = default_config()
    config.task = _cfg(objective=objective)
    mixer = "sliding_window" if objective == "causal_lm" else "mha"
    kwargs = {"sliding_window": {"window": 1}} if objective == "causal_lm" else {"mha": {"num_heads": 2}}
    config.model = dict(mixers=mixer, mixer_kwargs=kwargs, num_layers=1, d_model=16,
                        causal=objective == "causal_lm", vocab_size=10, head="lm", positions="none", max_length=12)
    config.train.steps, config.train.batch_size, config.train.progress = 60, 16, False
    config.train.log_every = 10
    config.optim.learning_rate, config.optim.warmup_steps = 1e-2, 5
    config.mesh.data = 1
    task.check_model(ml_collections.ConfigDict(config.model))
    res = train.run(config, str(tmp_path), task=task)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    curve = [r["loss"] for r in lines if r["split"] == "train"]
    assert all(math.isfinite(v) for v in curve)
    assert curve[-1] < 0.5 * curve[0], curve
    assert math.isfinite(res["metrics"]["ce"]) and res["metrics"]["ce"] < 0.5 * math.log(10), res["metrics"]
    assert res["metrics"]["test"]["num_tokens"] > 0


@pytest.mark.slow
def test_pretrain_then_classify_from_it(tmp_path, rng, monkeypatch):
    """causal_lm pretraining, then a classifier started from it with init_from_skip=head."""
    from seqjax import train
    from seqjax.train import default_config

    recs = _records(rng, 128)
    sources = {"train": recs, "test": recs[:32]}
    model = dict(mixers="sliding_window", mixer_kwargs={"sliding_window": {"window": 2}}, num_layers=1, d_model=16,
                 causal=True, vocab_size=10, positions="none", max_length=12)
    config = default_config()
    config.task = _cfg(objective="causal_lm", eval_splits=("test",))
    config.model = dict(model, head="lm")
    config.train.steps, config.train.batch_size, config.train.progress = 10, 8, False
    config.mesh.data = 1
    train.run(config, str(tmp_path / "pre"), task=_task(config.task, sources, monkeypatch))
    config.task = _cfg(eval_splits=("test",))
    config.model = dict(model, head="classification", num_classes=2, pooling="last")
    config.train.init_from = str(tmp_path / "pre")
    with pytest.raises(ConfigError, match=r"parameter head/logits/kernel has shape \(16, 10\) in the source but "
                                          r"\(16, 2\) in this model"):
        train.run(config, str(tmp_path / "cls0"), task=_task(config.task, sources, monkeypatch))
    config.train.init_from_skip = "head"
    res = train.run(config, str(tmp_path / "cls"), task=_task(config.task, sources, monkeypatch))
    record = res["init_from"]
    assert record["skipped"] == ["head/logits/kernel"] and record["new"] == ["head/logits/bias"]
    assert record["dropped"] == [] and any(p.startswith("backbone/") for p in record["matched"])
    assert any(p.startswith("embed/") for p in record["matched"]) and math.isfinite(res["metrics"]["accuracy"])
