"""One real train step of a preset on the ICL regression config (shared by the preset tests)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import models
from seqjax.config import apply_overrides, load_config
from tests.models.test_models import fast_jit, init

ROOT = pathlib.Path(__file__).resolve().parents[2]
# A tiny ICL problem and model width, so that one compiled step is cheap.
SHRINK = ["task.dim=3", "task.n_points=4", "model.input_dim=3", "model.max_length=8", "model.d_model=16"]


def icl_config(model: str, overrides=()):
    """``configs/icl/regression.py:model=<model>`` with :data:`SHRINK` and ``overrides`` applied."""
    c = load_config(str(ROOT / "configs/icl/regression.py"), f"model={model}")
    apply_overrides(c, SHRINK + list(overrides))
    return c


def one_train_step(config) -> dict:
    """Runs the trainer's step once on ``config`` and asserts that it moved the parameters.

    Args:
      config: a full config (task and model).

    Returns:
      The initial parameters (for checks of their layout).
    """
    from seqjax.tasks import build as build_task
    from seqjax.train.state import create_train_state
    from seqjax.train.step import make_train_step

    task = build_task(config.task)
    batch = jax.tree.map(np.asarray, next(task.train_iterator(0, 4)))
    model = models.build(config.model)
    params = init(model, jnp.asarray(batch["inputs"][:1]))["params"]
    tx = optax.adam(1e-2)
    state = create_train_state(params, tx)
    step, key = make_train_step(model, task, tx, lambda count: 1e-2), jax.random.key(1)
    new, metrics = fast_jit(step, state, batch, key)(state, batch, key)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params))]
    assert max(moved) > 0 and int(new.step) == 1
    return params
