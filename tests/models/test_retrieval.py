"""The two-tower retrieval head: both documents through one encoder, then
``[u, v, u*v, u-v]`` -> GELU MLP, checked against a float64 NumPy reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models
from seqjax.errors import ConfigError


def _config(mixers="mha", causal=False, pooling="mean"):
    c = models.default_config()
    c.mixers, c.num_layers, c.d_model, c.causal = mixers, 2, 16, causal
    c.vocab_size, c.head, c.num_classes, c.pooling = 11, "retrieval", 2, pooling
    return c


def _gelu(x):  # Flax's default gelu is the tanh approximation
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def test_matches_float64_reference_and_masks_padding(rng):
    model = models.build(_config())
    b, l = 3, 9
    tokens = jnp.asarray(rng.integers(1, 11, (b, 2, l)), jnp.int32)
    lengths = rng.integers(3, l + 1, (b, 2))
    mask = jnp.asarray(np.arange(l)[None, None, :] < lengths[..., None])
    params = nn.unbox(model.init(jax.random.key(0), tokens)["params"])
    logits, inter = model.apply({"params": params}, tokens, mask=mask, capture_intermediates=True,
                                mutable=["intermediates"])
    assert logits.shape == (b, 2) and logits.dtype == jnp.float32
    x = np.asarray(inter["intermediates"]["backbone"]["__call__"][0], np.float64).reshape(b, 2, l, -1)
    m = np.asarray(mask, np.float64)
    pooled = (x * m[..., None]).sum(2) / m.sum(2)[..., None]  # masked mean per document
    u, v = pooled[:, 0], pooled[:, 1]
    feats = np.concatenate([u, v, u * v, u - v], -1)
    h = params["head"]["hidden"]
    o = params["head"]["logits"]
    hid = _gelu(feats @ np.asarray(h["kernel"], np.float64) + np.asarray(h["bias"], np.float64))
    ref = hid @ np.asarray(o["kernel"], np.float64) + np.asarray(o["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-4, atol=1e-5)
    # Each document is encoded on its own: its encoding does not depend on the other document
    # (mha here is bidirectional, so a shared sequence would leak) ...
    other = tokens.at[:, 1].set(jnp.asarray(rng.integers(1, 11, (b, l)), jnp.int32))
    _, inter2 = model.apply({"params": params}, other, mask=mask, capture_intermediates=True,
                            mutable=["intermediates"])
    x2 = np.asarray(inter2["intermediates"]["backbone"]["__call__"][0]).reshape(b, 2, l, -1)
    np.testing.assert_allclose(x2[:, 0], x[:, 0], rtol=1e-5, atol=1e-6)
    # ... and the output depends on both; padded positions of the inputs do not matter
    # for the pooled features (causal model: padding is on the right, after the real tokens).
    assert not np.allclose(np.asarray(model.apply({"params": params}, other, mask=mask)), np.asarray(logits))
    causal = models.build(_config(mixers="gla", causal=True))
    p2 = causal.init(jax.random.key(1), tokens)["params"]
    noise = jnp.where(mask, tokens, jnp.asarray(rng.integers(1, 11, (b, 2, l)), jnp.int32))
    np.testing.assert_allclose(np.asarray(causal.apply({"params": p2}, noise, mask=mask)),
                               np.asarray(causal.apply({"params": p2}, tokens, mask=mask)), rtol=1e-5, atol=1e-6)


def test_bad_shapes_and_config():
    model = models.build(_config())
    with pytest.raises(ConfigError, match=r"retrieval inputs: shape \(2, 7\)"):
        model.init(jax.random.key(0), jnp.ones((2, 7), jnp.int32))
    c = _config()
    c.num_classes = None
    with pytest.raises(ConfigError, match="config.model.num_classes"):
        models.build(c)
    with pytest.raises(ConfigError, match="pooling='cls'"):
        models.build(_config(mixers="gla", causal=True, pooling="cls"))
