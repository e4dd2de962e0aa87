"""The ``xlstm71`` and ``xlstm11`` model presets (Beck et al. 2024, xLSTM[7:1] and xLSTM[1:1]):
their layer placement, the model fields they set, and one training step through a config file."""

import pytest

from seqjax import models
from seqjax.config import apply_model_preset, base_config, xlstm_layers
from seqjax.errors import ConfigError
from tests.models.one_step import icl_config, one_train_step

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
    # At the CPU scale's 3 layers both presets are the same stack (one sLSTM block in
    # the middle), so one training step covers both.
    for preset in ("xlstm11", "xlstm71"):
        c = icl_config(preset)
        assert models.layer_mixers(c.model) == [M, S, M] and c.model.channel == "none"
    blocks = one_train_step(c)["backbone"]
    assert "channel" not in blocks["block_0"] and "qkv" in blocks["block_0"]["mixer"]
    assert "recurrent" in blocks["block_1"]["mixer"]

