"""The ``masformer`` model preset (Zhang et al. 2023): full attention in the bottom layers,
sliding-window attention above; it builds, is causal, places its layers and trains."""

import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models
from seqjax.config import apply_model_preset, base_config, masformer_layers
from seqjax.errors import ConfigError
from tests.models.one_step import icl_config, one_train_step
from tests.models.test_models import apply, init



def _lm(num_layers: int, window: int = 3):
    """A tiny causal MASFormer LM (d=16, 2 heads) with a short window so that it matters at length 10."""
    config = base_config()
    m = config.model
    m.num_layers, m.d_model, m.vocab_size = num_layers, 16, 11
    apply_model_preset(config, "masformer", num_heads=2)
    m.mixer_kwargs.sliding_window.window = window
    return config


@pytest.mark.parametrize("num_layers,full", [(1, 1), (2, 1), (3, 1), (6, 1), (12, 2), (24, 4)])
def test_full_attention_sits_in_the_bottom_layers(num_layers, full):
    config = _lm(num_layers)
    names = models.layer_mixers(config.model)
    assert names == ["mha"] * full + ["sliding_window"] * (num_layers - full)
    assert names == masformer_layers(num_layers).split(",")
    built = models.build(config.model)
    assert [name for name, _ in built.layers] == names
    window = {name: dict(kwargs).get("window") for name, kwargs in built.layers}
    assert window.get("sliding_window", 3) == 3 and "mha" in window


def test_preset_defaults_and_ngram_layer_first():
    config = base_config()
    config.model.num_layers = 12
    apply_model_preset(config, "masformer+ngram", num_heads=2)
    names = models.layer_mixers(config.model)
    # The n-gram layer goes below the preset's stack; full attention stays at its bottom.
    assert names[:3] == ["ngram", "mha", "mha"] and set(names[3:]) == {"sliding_window"}
    assert config.model.mixer_kwargs.sliding_window.window == 64
    assert config.model.mixer_kwargs.mha.num_heads == config.model.mixer_kwargs.sliding_window.num_heads == 2
    with pytest.raises(ConfigError, match="config.model.num_layers=0"):
        masformer_layers(0)


def test_forward_is_causal_and_the_window_acts(rng):
    config = _lm(3)
    model = models.build(config.model)
    x = jnp.asarray(rng.integers(0, 11, (2, 10)), jnp.int32)
    v = init(model, x)
    y = np.asarray(apply(model, v, x))
    assert y.shape == (2, 10, 11) and np.isfinite(y).all()
    t = 6
    x2 = x.at[:, t].set((x[:, t] + 1) % 11)
    y2 = np.asarray(apply(model, v, x2))
    np.testing.assert_allclose(y2[:, :t], y[:, :t], rtol=0, atol=1e-6)  # the past ignores the future
    assert np.abs(y2[:, t:] - y[:, t:]).max() > 1e-4
    # The same parameters in an all-mha stack give other outputs beyond the window: the
    # sliding_window layers really are windowed (mha and sliding_window share a param layout).
    full = models.build({**config.model.to_dict(), "mixers": "mha"})
    y_full = np.asarray(apply(full, v, x))
    np.testing.assert_allclose(y_full[:, :3], y[:, :3], rtol=1e-5, atol=1e-6)  # inside the window: equal
    assert np.abs(y_full[:, 3:] - y[:, 3:]).max() > 1e-4


def test_one_train_step_on_icl():
    """configs/icl/regression.py:model=masformer, shrunk: the trainer's step runs and moves the params."""
    c = icl_config("masformer", ["model.mixer_kwargs.sliding_window.window=2"])
    assert models.layer_mixers(c.model) == ["mha", "sliding_window", "sliding_window"]
    one_train_step(c)
