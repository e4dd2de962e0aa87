"""Informer's distilling layer (``config.model.distil``): a float64 reference, shapes, config errors, training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import models
from seqjax.errors import ConfigError
from seqjax.models import Distil, distil_mask, distilled_length
from tests.ops.utils import assert_rel_close


def distil_reference(params, x):
    """``MaxPool(ELU(LayerNorm(Conv1d(x))))`` from the paper's description, float64 NumPy.

    Conv1d: kernel 3, circular padding (position -1 is the last, position L the
    first); LayerNorm over channels (eps 1e-5); max over positions 2i-1, 2i, 2i+1
    that exist (the −∞ pad).
    """
    W = np.asarray(params["conv"]["kernel"], np.float64)  # (3, d, d)
    bias = np.asarray(params["conv"]["bias"], np.float64)
    scale = np.asarray(params["norm"]["scale"], np.float64)
    shift = np.asarray(params["norm"]["bias"], np.float64)
    x = np.asarray(x, np.float64)
    b, L, d = x.shape
    out = np.zeros((b, (L + 1) // 2, d))
    for bi in range(b):
        h = np.stack([sum(x[bi, (t + j - 1) % L] @ W[j] for j in range(3)) + bias for t in range(L)])
        h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5) * scale + shift
        h = np.where(h > 0, h, np.expm1(h))
        for i in range(out.shape[1]):
            out[bi, i] = h[max(0, 2 * i - 1):min(L, 2 * i + 2)].max(axis=0)
    return out


@pytest.mark.parametrize("length", [1, 2, 13, 16])
def test_distil_matches_reference_and_halves(length, rng):
    x = jnp.asarray(rng.standard_normal((2, length, 8)), jnp.float32)
    layer = Distil()
    variables = layer.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype),
                          nn.meta.unbox(variables["params"]))
    y = jax.jit(layer.apply)({"params": params}, x)
    assert y.shape == (2, distilled_length(length), 8) == (2, (length + 1) // 2, 8)
    assert_rel_close(y, distil_reference(params, x), 1e-5, "distil")


def test_mask_and_lengths():
    assert [distilled_length(16, n) for n in range(4)] == [16, 8, 4, 2]
    assert distilled_length(13, 2) == 4
    mask = jnp.asarray([[1, 1, 1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(distil_mask(mask), [[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(distil_mask(mask, 2), [[1, 1], [1, 0]])
    assert distil_mask(None) is None


def _cfg(**overrides):
    """A small Informer-like encoder (ProbSparse layers, distilling) as a plain dict of ``config.model``."""
    c = models.default_config().to_dict()
    c.update(dict(num_layers=2, d_model=16, vocab_size=11, causal=False, head="classification", num_classes=3,
                  mixers="probsparse", mixer_kwargs={"probsparse": {"num_heads": 2, "factor": 1.0}}, distil=True,
                  mlp_ratio=2.0))
    c.update(overrides)
    return c


def test_backbone_halves_between_layers_and_trains_one_step(rng):
    """An Informer-like encoder (ProbSparse, then attention), lengths 32 → 16 → 8; one Adam step lowers the loss."""
    model = models.build(_cfg(num_layers=3, mixers="probsparse,mha,mha",
                              mixer_kwargs={"probsparse": {"num_heads": 2, "factor": 1.0}, "mha": {"num_heads": 2}},
                              channel="none"))
    tokens = jnp.asarray(rng.integers(0, 11, (4, 32)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 3, (4,)))
    # The padding mask shrinks with the length: padding at the end stays out of the mean.
    mask = jnp.arange(32)[None] < jnp.asarray([[32], [12], [20], [31]])
    params = jax.jit(model.init)(jax.random.PRNGKey(1), tokens)["params"]
    assert set(params["backbone"]) >= {"distil_0", "distil_1"} and "distil_2" not in params["backbone"]
    with pytest.raises(ConfigError, match=r"^segment_ids with config\.model\.distil=True"):
        model.apply({"params": params}, tokens, segment_ids=jnp.zeros((4, 32), jnp.int32))
    opt = optax.adam(1e-3)

    def loss_fn(p):
        logits, inter = model.apply({"params": p}, tokens, mask=mask, capture_intermediates=True,
                                    mutable=["intermediates"])
        lengths = [inter["intermediates"]["backbone"][f"block_{i}"]["__call__"][0].shape[1] for i in range(3)]
        assert lengths == [32, 16, 8], lengths  # shapes are static: checked while tracing
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss, g

    p, state, before, grads = step(params, opt.init(params))
    conv = np.asarray(nn.meta.unbox(grads)["backbone"]["distil_0"]["conv"]["kernel"])
    assert np.abs(conv).max() > 0, "no gradient reaches the distilling conv"
    after = step(p, state)[2]  # the loss after one step (the same compiled step)
    assert np.isfinite(float(before)) and float(after) < float(before)


@pytest.mark.parametrize("overrides, match", [
    (dict(causal=True), r"^config\.model\.distil=True needs config\.model\.causal=False"),
    (dict(head="lm"), r"^config\.model\.distil=True with config\.model\.head='lm'"),
    (dict(head="regression", input="continuous", input_dim=2), r"^config\.model\.distil=True with config\.model\.head"),
    (dict(pooling="cls"), r"^config\.model\.distil=True with config\.model\.pooling='cls'"),
    (dict(distil=1), r"^config\.model\.distil=1 must be a bool"),
])
def test_config_errors_are_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        models.validate(_cfg(**overrides))
    assert "\n" not in str(e.value)
