"""The ``mamba2_hybrid`` preset (Waleffe et al. 2024): Mamba-2, attention and MLP layers
interleaved as in the 8B model; it builds, is causal and trains."""

import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models
from seqjax.config import apply_model_preset, base_config, hybrid_layers
from seqjax.errors import ConfigError
from seqjax.presets import HYBRID_8B_PATTERN
from tests.models.one_step import icl_config, one_train_step
from tests.models.test_models import apply, init



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


def test_one_train_step_on_icl():
    """configs/icl/regression.py:model=mamba2_hybrid (3 layers), shrunk: the trainer's step runs and moves the params."""
    c = icl_config("mamba2_hybrid")
    assert c.model.channel == "none" and models.layer_mixers(c.model) == ["mamba2", "mlp", "mha"]
    one_train_step(c)
