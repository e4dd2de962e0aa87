"""The benchmarks time the trainer's own step, so every mixer runs there as it trains."""

import jax
import numpy as np

from benchmarks.lra import train_step


def test_benchmark_step_is_the_trainers_and_keeps_model_state():
    # routing keeps k-means centroids as model state: a params-only apply cannot run it.
    step, (state, batch, key) = train_step("routing", 32, 16, 2)
    new, metrics = step(state, batch, key)
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new.model_state, state.model_state)
    assert any(jax.tree.leaves(moved))  # the centroid EMA was written back
