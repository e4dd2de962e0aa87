"""``layer_state_sizes``: a model's recurrent state per layer from its config, against hand counts."""

import pytest

from seqjax.config import load_config
from seqjax.errors import ConfigError
from seqjax.models import default_config, layer_state_sizes

MQAR = "configs/mqar/mqar.py"


def _model(arg):
    return load_config(MQAR, arg).model


@pytest.mark.parametrize("d", [32, 64])
def test_hand_counted_sizes(d):
    L = 64
    # Attention: keys and values, L × d float32 each, plus the int32 position counter.
    assert layer_state_sizes(_model(f"model=mha,d_model={d},scale=cpu"), L) == [2 * L * d * 4 + 4] * 2
    # Mamba (expand 2, d_state 16, d_conv 4): h (2d × 16) plus the last 3 inputs of the conv (2d × 3), float32.
    assert layer_state_sizes(_model(f"model=mamba,d_model={d},scale=cpu"), L) == [(16 + 3) * 2 * d * 4] * 2
    # GLA (2 heads, key width d/2, value width d): S per head is (d/4) × (d/2) float32.
    assert layer_state_sizes(_model(f"model=gla,d_model={d},scale=cpu"), L) == [2 * (d // 4) * (d // 2) * 4] * 2


def test_only_attention_grows_with_the_length_and_plain_dicts_work():
    mha, mamba = _model("model=mha,d_model=32,scale=cpu"), _model("model=mamba,d_model=32,scale=cpu")
    assert layer_state_sizes(mha, 128)[0] - 4 == 2 * (layer_state_sizes(mha, 64)[0] - 4)
    assert layer_state_sizes(mamba, 128) == layer_state_sizes(mamba, 64)
    assert layer_state_sizes(mamba.to_dict(), 64) == layer_state_sizes(mamba, 64)  # a results.json's config


def test_a_hybrid_is_listed_per_layer_and_a_bidirectional_layer_is_an_error():
    c = default_config()
    c.mixers, c.num_layers, c.d_model, c.max_length = "mamba,mha", 4, 16, 10
    mamba, mha = (16 + 3) * 32 * 4, 2 * 10 * 16 * 4 + 4
    assert layer_state_sizes(c, 10) == [mamba, mha, mamba, mha]
    c.causal = False
    with pytest.raises(ConfigError, match="'mha' is not causal"):
        layer_state_sizes(c, 10)
