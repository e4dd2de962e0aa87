"""The ``xlstm71`` and ``xlstm11`` model presets (Beck et al. 2024, xLSTM[7:1] and xLSTM[1:1]):
their layer placement, the model fields they set, and one training step through a config file."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import models
from seqjax.config import apply_model_preset, apply_overrides, base_config, load_config, xlstm_layers
from seqjax.errors import ConfigError
from tests.models.test_models import fast_jit, init

ROOT = pathlib.Path(__file__).resolve().parents[2]
M, S = "mlstm_block", "slstm_block"


@pytest.mark.parametrize("preset,num_layers,expected", [
    ("xlstm71", 8, [M, S] + [M] * 6),
    ("xlstm71", 16, ([M, S] + [M] * 6) * 2),
    ("xlstm71", 1, [M]),
    ("xlstm11", 4, [M, S, M, S]),
])
def test_layers_and_fields(preset, num_layers, expected):
    config = base_config()
    m = config.model
    m.num_layers, m.d_model, m.vocab_size = num_layers, 16, 11
    assert m.channel == "mlp"
    apply_model_preset(config, preset, num_heads=2)
    assert models.layer_mixers(m) == expected
    assert m.channel == "none"  # the blocks carry their own projections
    built = models.build(m)  # constructs (and checks) every layer's mixer
    assert [name for name, _ in built.layers] == expected
    assert all(dict(kwargs)["num_heads"] == 2 for _, kwargs in built.layers)
    # The ratio: one sLSTM block per 8 layers (7:1), or every other layer (1:1).
    assert expected.count(S) == (num_layers // 8 if preset == "xlstm71" else num_layers // 2)


def test_pattern_errors():
    with pytest.raises(ConfigError, match=r"config\.model\.num_layers=0 must be an int > 0"):
        xlstm_layers(0, 8)


def test_one_train_step_on_icl():
    """configs/icl/regression.py:model=xlstm71, shrunk: the trainer's step runs and moves the params."""
    from seqjax.tasks import build as build_task
    from seqjax.train.state import create_train_state
    from seqjax.train.step import make_train_step

    # At the CPU scale's 3 layers both presets are the same stack (one sLSTM block in
    # the middle), so one training step covers both.
    for preset in ("xlstm11", "xlstm71"):
        c = load_config(str(ROOT / "configs/icl/regression.py"), f"model={preset}")
        assert models.layer_mixers(c.model) == [M, S, M] and c.model.channel == "none"
    apply_overrides(c, ["task.dim=3", "task.n_points=4", "model.input_dim=3", "model.max_length=8",
                        "model.d_model=16"])
    task = build_task(c.task)
    batch = jax.tree.map(np.asarray, next(task.train_iterator(0, 4)))
    model = models.build(c.model)
    params = init(model, jnp.asarray(batch["inputs"][:1]))["params"]
    blocks = params["backbone"]
    assert "channel" not in blocks["block_0"] and "qkv" in blocks["block_0"]["mixer"]
    assert "recurrent" in blocks["block_1"]["mixer"]
    tx = optax.adam(1e-2)
    state = create_train_state(params, tx)
    step, key = make_train_step(model, task, tx, lambda count: 1e-2), jax.random.key(1)
    new, metrics = fast_jit(step, state, batch, key)(state, batch, key)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params))]
    assert max(moved) > 0 and int(new.step) == 1
