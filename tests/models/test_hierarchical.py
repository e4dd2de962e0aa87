"""The hierarchical architecture (seqjax.models.hierarchical): HiSS's two networks, checked by composition.

The reference runs the two built SequenceModels by hand with the model's own
parameters: the low level on each chunk alone (a separate call per chunk, so
no state can cross a chunk boundary), its last-sample outputs stacked in
float64 order, then the high level; the model must give those numbers at the
chunks' last samples and exact zeros elsewhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models
from seqjax.errors import ConfigError
from seqjax.models import hierarchical


def _config(**fields):
    c = hierarchical.default_config()
    c.update(dict(input_dim=3, output_dim=2, chunk=4, feature_dim=8))
    c.low.update(mixers="s4d", num_layers=1, d_model=8)
    c.high.update(mixers="s4d", num_layers=1, d_model=8)
    c.update(fields)
    return c


def test_output_is_the_two_networks_composed(rng):
    model = models.build(_config())
    x = jnp.asarray(rng.normal(size=(2, 12, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(1), x)
    out = np.asarray(jax.jit(model.apply)(variables, x))
    assert out.shape == (2, 12, 2)
    params = variables["params"]
    low = jax.jit(lambda chunk: model.low.apply({"params": params["low"]}, chunk))
    feats = np.stack([np.stack([np.asarray(low(x[i:i + 1, 4 * c:4 * c + 4]))[0, -1] for c in range(3)])
                      for i in range(2)])  # each chunk alone
    want = np.asarray(jax.jit(model.high.apply)({"params": params["high"]}, jnp.asarray(feats)))
    np.testing.assert_allclose(out[:, 3::4], want, rtol=1e-5, atol=1e-6)
    mask = np.ones(12, bool)
    mask[3::4] = False
    np.testing.assert_array_equal(out[:, mask], 0.0)


def test_causal_at_the_chunk_rate(rng):
    model = models.build(_config())
    x = rng.normal(size=(1, 12, 3)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(2), jnp.asarray(x))
    apply = jax.jit(model.apply)
    y = np.asarray(apply(variables, jnp.asarray(x)))
    x2 = x.copy()
    x2[:, 5] += 10.0  # a sample of chunk 1
    y2 = np.asarray(apply(variables, jnp.asarray(x2)))
    # Chunk 0 unchanged (up to the FFT convolution's float32 roundoff), chunks 1 and 2 changed.
    np.testing.assert_allclose(y2[:, 3], y[:, 3], atol=1e-6)
    assert np.abs(y2[:, 7] - y[:, 7]).max() > 1e-4 and np.abs(y2[:, 11] - y[:, 11]).max() > 1e-4


def test_bad_configs_are_one_line():
    with pytest.raises(ConfigError, match=r"config.model.chunk=0 is not allowed"):
        models.validate(_config(chunk=0))
    bad = _config()
    bad.low.mixers = "nonsense"
    with pytest.raises(ConfigError, match=r"^config.model.low.mixers='nonsense'") as e:
        models.validate(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"config.model.chunk=4 does not divide task=10"):
        models.check_length(_config(), 10, "task")
    models.check_length(_config(), 12, "task")
    models.check_build(_config(), 12)
