"""LMUFormer pieces: LIF neurons, the conv patch embedding, the ``lmuformer`` presets.

Oracles are float64 NumPy loops of the definitions in ``seqjax/models/spiking.py``
and ``seqjax/models/conv_embed.py`` (Liu et al. 2024 and the authors' SpikingJelly
neuron: tau 2, threshold 1, hard reset, detached reset, sigmoid surrogate with
alpha 4), including a hand-written backward pass through time for the LIF.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models
from seqjax.config import apply_model_preset, base_config
from seqjax.errors import ConfigError
from seqjax.models.conv_embed import ConvEmbed
from seqjax.models.spiking import lif
from tests.models.one_step import icl_config, one_train_step


def _keep(seg, b, l):
    """1 where a position continues the previous one's segment, 0 at segment starts."""
    keep = np.ones((b, l))
    keep[:, 0] = 0
    if seg is not None:
        keep[:, 1:] = seg[:, 1:] == seg[:, :-1]
    return keep


def lif_ref(x, seg, tau=2.0, th=1.0):
    """Spikes and membrane potentials (before reset) of the LIF recurrence, float64."""
    b, l = x.shape[:2]
    keep = _keep(seg, b, l)
    u = np.zeros(x.shape[:1] + x.shape[2:])
    s_all, v_all = np.zeros_like(x), np.zeros_like(x)
    for t in range(l):
        u = u * keep[:, t, None]
        v = u + (x[:, t] - u) / tau
        s = (v >= th).astype(float)
        u = v * (1 - s)
        s_all[:, t], v_all[:, t] = s, v
    return s_all, v_all


def lif_grad_ref(x, seg, g, tau=2.0, th=1.0, alpha=4.0):
    """d(sum g * spikes)/dx by backpropagation through time with the surrogate, float64."""
    b, l = x.shape[:2]
    keep = _keep(seg, b, l)
    s, v = lif_ref(x, seg, tau, th)
    sig = 1 / (1 + np.exp(-alpha * (v - th)))
    surrogate = alpha * sig * (1 - sig)
    dx = np.zeros_like(x)
    du = np.zeros(x.shape[:1] + x.shape[2:])  # dL/du_t, u_t the membrane after the reset
    for t in reversed(range(l)):
        dv = g[:, t] * surrogate[:, t] + du * (1 - s[:, t])  # the reset's s_t is a constant
        dx[:, t] = dv / tau
        du = dv * (1 - 1 / tau) * keep[:, t, None]
    return dx


def _segments(rng, b, l):
    return np.cumsum(rng.random((b, l)) < 0.15, axis=1) % 3


def test_lif_matches_reference_forward_and_surrogate_gradient(rng):
    x = rng.normal(0.9, 1.0, (2, 23, 5))
    seg = _segments(rng, 2, 23)
    g = rng.standard_normal(x.shape)
    spikes = lif(jnp.asarray(x, jnp.float32), seg)
    s_ref, v_ref = lif_ref(x, seg)
    near = np.abs(v_ref - 1.0) < 1e-4  # float32 may land on the other side of the threshold
    assert 0.1 < s_ref.mean() < 0.9  # the test sees both spikes and silences
    np.testing.assert_array_equal(np.asarray(spikes)[~near], s_ref[~near])
    dx = jax.grad(lambda x: jnp.sum(jnp.asarray(g, jnp.float32) * lif(x, seg)))(jnp.asarray(x, jnp.float32))
    dx_ref = lif_grad_ref(x, seg, g)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-4, atol=1e-5)
    # Without the segments the membranes carry over: a different gradient.
    assert np.abs(dx_ref - lif_grad_ref(x, None, g)).max() > 1e-3


def _layernorm(h, scale, bias, eps=1e-5):
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    return (h - mu) / np.sqrt(var + eps) * scale + bias


def _conv_ref(x, kernel, seg, causal):
    """out_t = sum_tap W_tap x_{t + o_tap}, zero outside the row and across segments."""
    b, l, _ = x.shape
    offsets = [-2, -1, 0] if causal else [-1, 0, 1]
    run = np.zeros((b, l))
    if seg is not None:
        run = np.cumsum(np.concatenate([np.zeros((b, 1)), seg[:, 1:] != seg[:, :-1]], axis=1), axis=1)
    out = np.zeros((b, l, kernel.shape[-1]))
    for bi in range(b):
        for t in range(l):
            for tap, o in enumerate(offsets):
                s = t + o
                if 0 <= s < l and run[bi, s] == run[bi, t]:
                    out[bi, t] += x[bi, s] @ kernel[tap]
    return out


def conv_embed_ref(params, x, seg, causal, spiking, num_layers):
    h = x
    for i in range(num_layers):
        h = _conv_ref(h, params[f"conv_{i}"]["kernel"], seg, causal)
        h = _layernorm(h, params[f"norm_{i}"]["scale"], params[f"norm_{i}"]["bias"])
        h = lif_ref(h, seg)[0] if spiking else np.maximum(h, 0)
    return h + _conv_ref(h, params["conv_rpe"]["kernel"], seg, causal)


def _perturbed(params, rng):
    """Random norm scales and biases (not the init's ones and zeros), float64 copies."""
    out = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    for name, p in out.items():
        if name.startswith("norm_"):
            p["scale"] = rng.uniform(0.5, 1.5, p["scale"].shape)
            p["bias"] = rng.normal(0.3, 0.5, p["bias"].shape)
    return out


@pytest.mark.parametrize("causal,spiking", [(True, False), (False, False), (True, True)])
def test_conv_embed_matches_reference(rng, causal, spiking):
    b, l, d, n = 2, 17, 6, 2
    x = rng.standard_normal((b, l, d))
    seg = _segments(rng, b, l)
    module = ConvEmbed(n, causal=causal, spiking=spiking)
    params = _perturbed(nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, 4, d))))["params"], rng)
    out = module.apply({"params": jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)},
                       jnp.asarray(x, jnp.float32), seg)
    ref = conv_embed_ref(params, x, seg, causal, spiking, n)
    # Spiking: a float32 membrane within ~1e-5 of the threshold may fire differently; compare where it cannot.
    np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-4, atol=2e-4)
    # The segments matter (a reference without them differs).
    assert np.abs(ref - conv_embed_ref(params, x, None, causal, spiking, n)).max() > 1e-2


def test_conv_embed_causal_reads_no_future(rng):
    b, l, d = 1, 12, 4
    x = rng.standard_normal((b, l, d))
    for causal in (True, False):
        module = ConvEmbed(2, causal=causal)
        variables = module.init(jax.random.key(1), jnp.zeros((1, l, d)))
        y = module.apply(variables, jnp.asarray(x, jnp.float32))
        x2 = x.copy()
        x2[:, 7:] += 3.0 * rng.standard_normal((b, l - 7, d))
        y2 = module.apply(variables, jnp.asarray(x2, jnp.float32))
        changed = np.abs(np.asarray(y2 - y)).max(-1)[0]
        if causal:
            assert changed[:7].max() == 0.0 and changed[7:].max() > 0
        else:  # two layers of one-step look-ahead plus the position term: 3 positions earlier change
            assert changed[:4].max() == 0.0 and changed[4:7].max() > 0


@pytest.mark.parametrize("preset", ["lmuformer", pytest.param("spiking_lmuformer", marks=pytest.mark.slow)])
def test_presets_fields_and_one_train_step(preset):
    config = base_config()
    m = config.model
    m.num_layers, m.d_model, m.vocab_size = 2, 16, 11
    apply_model_preset(config, preset)
    assert models.layer_mixers(m) == ["lmu", "lmu"] and m.conv_embed == 4 and m.channel == "mlp"
    assert m.spiking == (preset == "spiking_lmuformer")
    c = icl_config(preset)
    params = one_train_step(c)
    assert set(params["conv_embed"]) == {"conv_0", "conv_1", "conv_2", "conv_3", "conv_rpe"} | {
        f"norm_{i}" for i in range(4)}
    assert "channel" in params["backbone"]["block_0"]


def test_config_errors():
    def check(match, **fields):
        m = base_config().model
        m.vocab_size = 11
        for key, value in fields.items():
            m[key] = value
        with pytest.raises(ConfigError, match=match):
            models.validate(m)

    check(r"config\.model\.conv_embed=-1 must be an int >= 0", conv_embed=-1)
    check(r"spiking=True has nothing to act on", spiking=True, channel="glu")
    check(r"conv_embed=2 / spiking=False with config\.model\.sequence_axis='sequence'", conv_embed=2,
          sequence_axis="sequence", mixers="mamba")


def test_decoding_with_caches_is_refused():
    m = base_config().model
    m.vocab_size, m.mixers, m.conv_embed, m.d_model = 11, "lmu", 1, 16
    model = models.build(m)
    caches = [{} for _ in model.layers]
    # The check comes before any parameter is read: no init needed.
    with pytest.raises(ConfigError, match=r"decoding with caches: config\.model\.conv_embed=1"):
        model.apply({"params": {}}, jnp.zeros((1, 1), jnp.int32), caches=caches)
