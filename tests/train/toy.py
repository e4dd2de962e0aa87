"""A tiny fake task and model for the trainer's tests (no seqjax.models / seqjax.tasks).

The task is noisy linear regression: ``inputs (b, l, 4) ~ N(0, 1)``,
``targets = inputs @ w + 0.1 noise`` with one fixed ``w``; batch ``s`` of a
stream is a pure function of ``(seed, s)``, so the iterator's state is just
``{"step": s}``. ``nan_at`` poisons the loss of batch ``nan_at``.
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqjax.train import default_config

DIM, LENGTH = 4, 6


class ToyIterator:
    """Deterministic stream of regression batches.

    Attributes:
      seed: stream seed.
      batch_size: examples per batch.
      step: index of the next batch.
      nan_at: batch index whose loss becomes NaN (None: never).
      delay: seconds to sleep per batch (makes a subprocess slow enough to kill).
    """

    def __init__(self, seed, batch_size, nan_at=None, delay=0.0):
        self.seed, self.batch_size, self.step, self.nan_at, self.delay = seed, batch_size, 0, nan_at, delay

    def __iter__(self):
        return self

    def __next__(self):
        if self.delay:
            time.sleep(self.delay)
        batch = make_batch(self.seed, self.step, self.batch_size)
        poison = np.nan if self.step == self.nan_at else 0.0
        batch["poison"] = np.full((self.batch_size,), poison, np.float32)
        self.step += 1
        return batch

    def get_state(self):
        return {"step": self.step}

    def set_state(self, state):
        self.step = int(state["step"])


def make_batch(seed, step, batch_size):
    """Batch ``step`` of stream ``seed``: ``{"inputs": (b, l, 4), "targets": (b, l, 1)}``."""
    w = np.random.default_rng(12345).normal(size=(DIM, 1))
    rng = np.random.default_rng([seed, step])
    x = rng.normal(size=(batch_size, LENGTH, DIM))
    y = x @ w + 0.1 * rng.normal(size=(batch_size, LENGTH, 1))
    return {"inputs": x.astype(np.float32), "targets": y.astype(np.float32)}


class ToyTask:
    """The fake task (implements ``seqjax.tasks.base.Task``).

    Attributes:
      name: "toy".
      max_length: sequence length of ``inputs``.
      nan_at: see :class:`ToyIterator`.
      delay: see :class:`ToyIterator`.
      iterators_made: how many train iterators were requested (tests check reuse of results).
    """

    name = "toy"
    max_length = LENGTH

    def __init__(self, nan_at=None, delay=0.0):
        self.nan_at, self.delay, self.iterators_made = nan_at, delay, 0

    def train_iterator(self, seed, batch_size):
        self.iterators_made += 1
        return ToyIterator(seed, batch_size, self.nan_at, self.delay)

    def loss(self, outputs, batch):
        mse = jnp.mean((outputs - batch["targets"]) ** 2)
        # The poison multiplies the outputs so that the gradients turn NaN too, not only the loss.
        poison = jnp.mean(batch["poison"][:, None, None] * outputs) if "poison" in batch else 0.0
        return mse + poison, {"mse": mse}

    def evaluate(self, predict, seed):
        errs = []
        for i in range(2):
            batch = make_batch(seed + 1000, i, 8)
            errs.append(float(jnp.mean((predict(batch) - batch["targets"]) ** 2)))
        return {"mse": float(np.mean(errs)), "num_batches": 2}


class ToyModel(nn.Module):
    """Dense → GELU → dropout → LayerNorm → Dense, position-wise.

    Attributes:
      width: hidden width.
      dropout: dropout rate (exercises the per-step dropout key).
    """

    width: int = 16
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x, segment_ids=None, deterministic=True):
        del segment_ids
        h = nn.gelu(nn.Dense(self.width)(x))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = nn.LayerNorm()(h)
        return nn.Dense(1)(h)


def make_config(**train) -> ml_collections.ConfigDict:
    """A small trainer config (model/task sections describe the toy; the objects are passed to run)."""
    config = default_config()
    config.task = {"name": "toy", "eval_seed": 7}
    config.model = {"positions": "none", "max_length": LENGTH}
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 2
    config.train.steps = 20
    config.train.batch_size = 8
    config.train.log_every = 5
    config.train.checkpoint_every = 10
    config.train.progress = False
    config.mesh.data = 1
    config.train.update(train)
    return config


def logged(workdir, split, key):
    """``{step: value of key}`` of the ``split`` lines (``"train"``, ``"eval"``) of ``workdir/metrics.jsonl``."""
    import json
    from pathlib import Path

    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == split:
            out[record["step"]] = record[key]
    return out


def losses(workdir):
    """``{step: loss}`` of the train lines of ``workdir/metrics.jsonl``."""
    return logged(workdir, "train", "loss")


def final_params(workdir):
    """The params of the newest checkpoint in ``workdir`` as a flat ``{path: ndarray}``."""
    from seqjax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir, keep=10, async_save=False)
    try:
        _, state, meta = ckpt.restore_latest()
    finally:
        ckpt.close()
    flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}, {**meta, "state_step": int(state["step"])}
