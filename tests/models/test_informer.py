"""The Informer encoder–decoder (seqjax.models.informer): shapes, no leakage of the horizon, the cross-attention
path's forward and gradient against a float64 NumPy reference, any mixer as the encoder, config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.errors import ConfigError
from seqjax.models import informer as inf
from seqjax.models.encoder_decoder import CrossAttention, CrossKV, source_ids
from seqjax.tasks.forecast import ForecastTask, default_config as task_config


def _model(**kw):
    cfg = inf.default_config()
    cfg.update(dict(channels=1, pred_len=6, d_model=16, num_heads=2) | kw)
    return inf.build(cfg)


def _init_apply(model, x, d=None):
    kw = {} if d is None else {"decoder_inputs": d}
    variables = jax.jit(lambda k: model.init(k, x, **kw))(jax.random.key(0))
    apply = jax.jit(lambda v, x, d: model.apply(v, x, **({} if d is None else {"decoder_inputs": d})))
    return variables, apply


def test_shapes_informer_and_decoderless():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 24, 5)), jnp.float32)  # C = 3 values + k = 2 time features
    d = jnp.asarray(rng.normal(size=(3, 14, 5)), jnp.float32)  # label 8 + pred 6
    out = jax.eval_shape(lambda x, d: _model(channels=3).init_with_output(jax.random.key(0), x, decoder_inputs=d),
                         x, d)
    assert out[0].shape == (3, 14, 3)
    assert "distil_0" in out[1]["params"]["encoder"]  # distilling between the 2 encoder blocks
    base = _model(channels=3, num_decoder_layers=0, encoder_mixers="lstm")
    vb, apply_b = _init_apply(base, x)
    assert apply_b(vb, x, None).shape == (3, 6, 3)


def test_no_leakage_of_the_horizon():
    cfg = task_config()
    cfg.update(dataset="elnino", seq_len=24, label_len=12, pred_len=6)
    task = ForecastTask(cfg)
    starts = task.eval_starts[:1]
    batch = task.batch(starts)
    model = _model()
    v, apply = _init_apply(model, jnp.asarray(batch["inputs"]), jnp.asarray(batch["decoder_inputs"]))
    out = apply(v, batch["inputs"], batch["decoder_inputs"])
    # Change every value after the histories (the horizons and beyond): the batch's model inputs, and so the
    # forecasts, must not change; the targets must.
    rng = np.random.default_rng(1)
    first_future = starts[0] + task.seq_len
    task.values = task.values.copy()
    task.values[first_future:] = rng.normal(size=task.values[first_future:].shape)
    changed = task.batch(starts[:1])
    np.testing.assert_array_equal(changed["inputs"], batch["inputs"][:1])
    np.testing.assert_array_equal(changed["decoder_inputs"], batch["decoder_inputs"][:1])
    assert not np.allclose(changed["targets"], batch["targets"][:1])
    np.testing.assert_array_equal(apply(v, changed["inputs"], changed["decoder_inputs"]), out)
    # The check can fail: had the placeholders carried the horizon, the forecast would move with it.
    leaky = batch["decoder_inputs"].copy()
    leaky[:, 12:, :1] = batch["targets"]
    assert not np.allclose(apply(v, batch["inputs"], leaky), out, atol=1e-6)


def _cross_reference(x, mem, wq, wk, wv, wo, heads):
    """Multi-head attention of x over mem in float64: softmax(q kᵀ / √dh) v per head, then W_o."""
    b, lt, d = x.shape
    dh = d // heads
    q = (x @ wq).reshape(b, lt, heads, dh)
    k = (mem @ wk).reshape(b, -1, heads, dh)
    v = (mem @ wv).reshape(b, -1, heads, dh)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, lt, d) @ wo


class _Cross(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, x, mem):
        k, v = CrossKV(self.heads, name="cross_kv")(mem)
        return CrossAttention(self.heads, name="cross")(x, k, v, source_ids(jnp.ones(mem.shape[:2], bool)))


def test_cross_attention_forward_and_gradient_vs_float64():
    rng = np.random.default_rng(2)
    b, lt, ls, d, heads = 2, 3, 5, 8, 2
    x, mem, r = rng.normal(size=(b, lt, d)), rng.normal(size=(b, ls, d)), rng.normal(size=(b, lt, d))
    mod = _Cross(heads)
    params = mod.init(jax.random.key(3), jnp.asarray(x, jnp.float32), jnp.asarray(mem, jnp.float32))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(params))["params"]
    ws = (p["cross"]["wq"]["kernel"], p["cross_kv"]["wk"]["kernel"], p["cross_kv"]["wv"]["kernel"],
          p["cross"]["wo"]["kernel"])
    y = mod.apply(params, jnp.asarray(x, jnp.float32), jnp.asarray(mem, jnp.float32))
    np.testing.assert_allclose(np.asarray(y), _cross_reference(x, mem, *ws, heads), rtol=2e-5, atol=2e-5)

    gx, gm = jax.grad(lambda a, m: jnp.sum(mod.apply(params, a, m) * r), argnums=(0, 1))(
        jnp.asarray(x, jnp.float32), jnp.asarray(mem, jnp.float32))

    def numeric(arr, fn, eps=1e-6):  # central differences of the float64 reference
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            up, dn = arr.copy(), arr.copy()
            up[idx] += eps
            dn[idx] -= eps
            g[idx] = (np.sum(fn(up) * r) - np.sum(fn(dn) * r)) / (2 * eps)
        return g

    np.testing.assert_allclose(np.asarray(gx), numeric(x, lambda a: _cross_reference(a, mem, *ws, heads)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gm), numeric(mem, lambda m: _cross_reference(x, m, *ws, heads)),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kw,match", [
    (dict(foo=1), "not an Informer field"), (dict(decoder_mixers="fit"), "bidirectional"),
    (dict(num_heads=3), "num_heads"), (dict(encoder_mixers="nope"), "encoder_mixers"),
    (dict(num_decoder_layers=-1), "num_decoder_layers"), (dict(mixer_kwargs={"probsparse": {"zz": 1}}), "zz"),
    (dict(architecture="sequence"), "not the Informer's")])
def test_build_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        _model(**kw)
    assert "\n" not in str(e.value)


def test_decoder_inputs_required():
    model = _model()
    x = jnp.ones((1, 24, 1))
    with pytest.raises(ConfigError, match="decoder_inputs"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
