"""The train state's ``model_state``: non-param collections (the ``routing`` mixer's centroids) through training.

A toy model with a ``routing`` layer trains with :func:`seqjax.train.run`:
the centroids (collection ``"routing"``) move by the mixer's EMA, never by the
optimiser (no optimiser state or gradient for them), are checkpointed, and a
resumed run continues from the checkpointed centroids. Checkpoints saved before
the train state had ``model_state`` still restore.
"""

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import mixers
from seqjax.mixers.routing import update_centroids
from seqjax.train import run
from seqjax.train.checkpoint import Checkpointer
from seqjax.train.state import TrainState, create_train_state, make_init_fn
from seqjax.train.step import make_train_step
from tests.train.toy import ToyTask, make_batch, make_config


class RoutingToy(nn.Module):
    """Dense → ``routing`` mixer (residual) → Dense.

    Attributes:
      width: hidden width.
    """

    width: int = 8

    @nn.compact
    def __call__(self, x, segment_ids=None, deterministic=True):
        h = nn.Dense(self.width)(x)
        mixer = mixers.get("routing")(num_routing_heads=1, num_local_heads=1, num_clusters=2, window=2,
                                      ema_decay=0.9, name="mixer")
        h = h + mixer(h, segment_ids=segment_ids, deterministic=deterministic)
        return nn.Dense(1)(h)


def _checkpoint(workdir):
    ckpt = Checkpointer(workdir, keep=10, async_save=False)
    try:
        _, state, _ = ckpt.restore_latest()
    finally:
        ckpt.close()
    return state


def test_train_step_moves_centroids_by_ema_only():
    model, tx = RoutingToy(), optax.adam(1e-2)
    batch = make_batch(0, 0, 4)
    state = jax.jit(make_init_fn(model, tx))(jax.random.key(0), jnp.asarray(batch["inputs"][:1]), None)
    mu0 = state.model_state["routing"]["mixer"]["centroids"]
    # No optimiser state for the centroids: the optimiser sees params only.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert paths and not any("centroids" in p for p in paths)
    step = jax.jit(make_train_step(model, ToyTask(), tx, lambda count: 1e-2))
    new, metrics = step(state, batch, jax.random.key(1))
    assert math.isfinite(float(metrics["loss"]))
    # The centroids after one step are exactly the EMA of the routing queries at the old params.
    variables = {"params": state.params, **state.model_state}
    h = nn.Dense(8).apply({"params": state.params["Dense_0"]}, batch["inputs"])
    m = mixers.get("routing")(num_routing_heads=1, num_local_heads=1, num_clusters=2, window=2, ema_decay=0.9)
    qr = m.apply({"params": variables["params"]["mixer"], "routing": state.model_state["routing"]["mixer"]}, h,
                 method=lambda mod, h: mod.project(mod.parts(h.shape[-1]), h, None).tokens[0])
    np.testing.assert_allclose(np.asarray(new.model_state["routing"]["mixer"]["centroids"]),
                               np.asarray(update_centroids(mu0, qr, 0.9)), rtol=1e-5, atol=1e-6)
    newer, _ = step(new, make_batch(0, 1, 4), jax.random.key(1))
    assert float(jnp.max(jnp.abs(newer.model_state["routing"]["mixer"]["centroids"] - mu0))) > 1e-4
    assert int(newer.step) == 2


@pytest.mark.slow
def test_run_checkpoints_the_centroids(tmp_path):
    config = make_config(steps=2, log_every=1, checkpoint_every=2)
    results = run(config, tmp_path, task=ToyTask(), model=RoutingToy())
    assert math.isfinite(results["train"]["loss"]) and math.isfinite(results["metrics"]["mse"])
    state = _checkpoint(tmp_path)
    assert int(state["step"]) == 2
    mu = np.asarray(state["model_state"]["routing"]["mixer"]["centroids"])
    assert mu.shape == (1, 2, 4)
    # Moved by the EMA: the init's centroids are unit vectors, after two updates they are not.
    assert np.abs(np.linalg.norm(mu, axis=-1) - 1.0).max() > 1e-3


@pytest.mark.slow
def test_resume_continues_from_the_checkpointed_centroids(tmp_path):
    config = make_config(steps=4, log_every=1, checkpoint_every=2)
    run(config, tmp_path / "straight", task=ToyTask(), model=RoutingToy())
    run(make_config(steps=2, log_every=1, checkpoint_every=2), tmp_path / "resumed", task=ToyTask(),
        model=RoutingToy())
    run(config, tmp_path / "resumed", task=ToyTask(), model=RoutingToy())  # resumes at step 2
    a, b = _checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "resumed")
    assert int(a["step"]) == int(b["step"]) == 4
    np.testing.assert_allclose(np.asarray(b["model_state"]["routing"]["mixer"]["centroids"]),
                               np.asarray(a["model_state"]["routing"]["mixer"]["centroids"]), rtol=1e-5, atol=1e-6)


@flax.struct.dataclass
class _StateBeforeModelState:
    """The train state's fields as checkpoints saved them before ``model_state`` existed."""

    step: jax.Array
    params: Any
    opt_state: Any


def test_a_checkpoint_from_before_model_state_restores(tmp_path):
    tx = optax.adam(1e-3)
    state = create_train_state({"w": jnp.asarray(np.random.default_rng(0).standard_normal((3, 2)), jnp.float32)}, tx)
    state = state.replace(opt_state=tx.update(state.params, state.opt_state, state.params)[1])
    ckpt = Checkpointer(tmp_path, async_save=False)
    try:
        ckpt.save(5, _StateBeforeModelState(step=state.step + 5, params=state.params, opt_state=state.opt_state),
                  {"step": 5})
        restored, meta = ckpt.restore(5, jax.eval_shape(lambda: state))
    finally:
        ckpt.close()
    assert isinstance(restored, TrainState) and restored.model_state == {} and int(restored.step) == 5
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert meta == {"step": 5}
