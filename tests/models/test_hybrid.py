"""The ``mamba2_hybrid`` preset (Waleffe et al. 2024): Mamba-2, attention and MLP layers
interleaved as in the 8B model; it builds, is causal, decodes step by step and trains."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import models
from seqjax.config import apply_model_preset, apply_overrides, base_config, hybrid_layers, load_config
from seqjax.errors import ConfigError
from seqjax.presets import HYBRID_8B_PATTERN
from tests.models.test_models import apply, fast_jit, init

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_8b_pattern_and_its_proportions():
    names = hybrid_layers(56).split(",")
    # The paper's 8B model: 24 Mamba-2, 4 attention, 28 MLP layers.
    assert (names.count("mamba2"), names.count("mha"), names.count("mlp")) == (24, 4, 28)
    assert [i for i, n in enumerate(names) if n == "mha"] == [10, 22, 33, 45]
    assert "".join({"mamba2": "M", "mha": "*", "mlp": "-"}[n] for n in names) == HYBRID_8B_PATTERN
    for depth in (3, 4, 8, 12, 24):
        names = hybrid_layers(depth).split(",")
        assert len(names) == depth and names[1::2] == ["mlp"] * (depth // 2)
        assert names.count("mha") == max(1, round(depth * 4 / 56)) and "mamba2" in names
        assert names[0] == "mamba2"  # attention never in the bottom layer, as in the 8B
    assert hybrid_layers(8) == "mamba2,mlp,mamba2,mlp,mha,mlp,mamba2,mlp"
    with pytest.raises(ConfigError, match=r"config\.model\.num_layers=2 must be an int >= 3"):
        hybrid_layers(2)


def _lm(num_layers=4):
    config = base_config()
    m = config.model
    m.num_layers, m.d_model, m.vocab_size = num_layers, 16, 11
    apply_model_preset(config, "mamba2_hybrid", num_heads=2)
    m.mixer_kwargs.mamba2 = {"d_state": 8, "headdim": 8}
    return config


def test_preset_sets_single_branch_layers_and_is_causal(rng):
    config = _lm()
    assert config.model.channel == "none" and config.model.mixer_kwargs.mha.num_heads == 2
    model = models.build(config.model)
    assert [name for name, _ in model.layers] == ["mamba2", "mlp", "mha", "mlp"]
    x = jnp.asarray(rng.integers(0, 11, (2, 9)), jnp.int32)
    v = init(model, x)
    # single-branch blocks: no channel branch besides the MLP layers
    assert all("channel" not in v["params"]["backbone"][f"block_{i}"] for i in range(4))
    y = np.asarray(apply(model, v, x))
    x2 = x.at[:, 5].set((x[:, 5] + 1) % 11)
    y2 = np.asarray(apply(model, v, x2))
    np.testing.assert_allclose(y2[:, :5], y[:, :5], rtol=0, atol=1e-6)
    assert np.abs(y2[:, 5:] - y[:, 5:]).max() > 1e-4


def test_one_train_step_on_icl(tmp_path):
    """configs/icl/regression.py:model=mamba2_hybrid (3 layers), shrunk: the trainer's step runs and moves the params."""
    from seqjax.tasks import build as build_task
    from seqjax.train.state import create_train_state
    from seqjax.train.step import make_train_step

    c = load_config(str(ROOT / "configs/icl/regression.py"), "model=mamba2_hybrid")
    assert c.model.channel == "none" and models.layer_mixers(c.model) == ["mamba2", "mlp", "mha"]
    apply_overrides(c, ["task.dim=3", "task.n_points=4", "model.input_dim=3", "model.max_length=8",
                        "model.d_model=16"])
    task = build_task(c.task)
    batch = jax.tree.map(np.asarray, next(task.train_iterator(0, 4)))
    model = models.build(c.model)
    params = init(model, jnp.asarray(batch["inputs"][:1]))["params"]
    tx = optax.adam(1e-2)
    state = create_train_state(params, tx)
    step, key = make_train_step(model, task, tx, lambda count: 1e-2), jax.random.key(1)
    new, metrics = fast_jit(step, state, batch, key)(state, batch, key)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params))]
    assert max(moved) > 0 and int(new.step) == 1
