"""Tests of seqjax.train.optim: parameter groups, per-group updates, clipping and the schedule."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import seqjax.mixers
from seqjax.train import default_config
from seqjax.train.optim import make_optimizer, make_schedule, param_labels


def _flat(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _mixer_params(name, rng):
    x = jnp.asarray(rng.normal(size=(1, 8, 8)), jnp.float32)
    # Jitted init: eager init of mamba/s5 takes several seconds on CPU.
    variables = jax.jit(seqjax.mixers.get(name)().init)(jax.random.key(0), x)
    return nn.meta.unbox(variables["params"])


class _Block(nn.Module):
    """Embedding, LayerNorm and a biased Dense: the non-mixer parts of a model.

    Attributes:
      (none)
    """

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(11, 8)(tokens)
        return nn.Dense(8)(nn.LayerNorm()(h))


@pytest.fixture(scope="module")
def real_params():
    """Params of real s5 and mamba mixers plus an embedding/LayerNorm/Dense block (built once)."""
    rng = np.random.default_rng(0)
    block = nn.meta.unbox(_Block().init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    return {"s5": _mixer_params("s5", rng), "mamba": _mixer_params("mamba", rng), "block": block}


def _optim(**kw):
    optim = default_config().optim
    optim.update(kw)
    return optim


def test_param_groups_of_real_mixers(real_params):
    labels = _flat(param_labels(real_params))
    expected = {
        "['s5']['Lambda_re']": "ssm", "['s5']['Lambda_im']": "ssm", "['s5']['log_step']": "ssm",
        "['s5']['B']": "ssm", "['s5']['C']": "decay", "['s5']['D']": "no_decay",
        "['mamba']['A_log']": "ssm", "['mamba']['dt_bias']": "ssm", "['mamba']['D']": "no_decay",
        "['mamba']['conv_bias']": "no_decay", "['mamba']['conv_weight']": "decay",
        "['mamba']['in_proj']['kernel']": "decay", "['mamba']['dt_proj']['kernel']": "decay",
        "['block']['Embed_0']['embedding']": "no_decay", "['block']['LayerNorm_0']['scale']": "no_decay",
        "['block']['LayerNorm_0']['bias']": "no_decay", "['block']['Dense_0']['bias']": "no_decay",
        "['block']['Dense_0']['kernel']": "decay",
    }
    assert {k: labels[k] for k in expected} == expected
    assert set(labels.values()) == {"ssm", "decay", "no_decay"}


def test_weight_decay_only_on_decay_group(real_params):
    """One AdamW step with zero gradient: only "decay" leaves shrink, by exactly lr * wd * p."""
    lr, wd = 0.01, 0.1
    params = real_params
    tx, _ = make_optimizer(_optim(learning_rate=lr, weight_decay=wd, schedule="constant", ssm_learning_rate=0.05), 10)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    labels, ups, ps = _flat(param_labels(params)), _flat(updates), _flat(params)
    for key, label in labels.items():
        p = np.asarray(ps[key], np.float64)
        want = -lr * wd * p if label == "decay" else np.zeros_like(p)
        np.testing.assert_allclose(np.asarray(ups[key], np.float64), want, rtol=1e-5, atol=1e-9, err_msg=key)


def test_ssm_group_uses_ssm_learning_rate(real_params, rng):
    """One Adam step with a known gradient vs the Adam formula in float64 NumPy, per group."""
    lr, ssm_lr, b1, b2, eps = 1e-3, 3e-2, 0.9, 0.98, 1e-6
    params = real_params
    optim = _optim(optimizer="adam", learning_rate=lr, ssm_learning_rate=ssm_lr, weight_decay=0.0, b1=b1, b2=b2,
                   eps=eps, schedule="constant", clip_norm=0.0)
    tx, _ = make_optimizer(optim, 10)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    labels, ups, gs = _flat(param_labels(params)), _flat(updates), _flat(grads)
    for key, label in labels.items():
        g = np.asarray(gs[key], np.float64)
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g**2 / (1 - b2)
        rate = ssm_lr if label == "ssm" else lr
        want = -rate * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(np.asarray(ups[key], np.float64), want, rtol=1e-4, atol=1e-9, err_msg=key)


def test_global_norm_clipping(rng):
    """With a huge eps Adam's first step is ~ -lr * g, so the clipped gradient shows through."""
    clip, lr, eps = 0.5, 1.0, 1e6
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}
    grads = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    tx, _ = make_optimizer(_optim(optimizer="adam", learning_rate=lr, eps=eps, weight_decay=0.0,
                                  schedule="constant", clip_norm=clip), 10)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
    assert norm > clip
    for k in g:
        want = -lr * (g[k] * clip / norm) / (np.abs(g[k] * clip / norm) + eps)
        np.testing.assert_allclose(np.asarray(updates[k], np.float64), want, rtol=1e-4, err_msg=k)


def _reference_lr(t, lr, steps, warmup, schedule, ratio):
    if t < warmup:
        return lr * (t + 1) / warmup
    if schedule == "constant" or steps == warmup:
        return lr
    frac = min((t - warmup) / (steps - warmup), 1.0)
    floor = lr * ratio
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * frac))


@pytest.mark.parametrize(
    "steps,warmup,schedule,ratio",
    [(100, 10, "cosine", 0.1), (100, 0, "cosine", 0.0), (50, 5, "constant", 0.0), (20, 20, "cosine", 0.1)],
)
def test_schedule_matches_formula(steps, warmup, schedule, ratio):
    lr = 3e-3
    fn = make_schedule(lr, steps=steps, warmup_steps=warmup, schedule=schedule, min_lr_ratio=ratio)
    for t in sorted({0, 1, warmup - 1, warmup, warmup + 1, steps // 2, steps - 1, steps, steps + 5} - {-1}):
        want = _reference_lr(t, lr, steps, warmup, schedule, ratio)
        np.testing.assert_allclose(float(fn(t)), want, rtol=1e-6, atol=lr * 1e-6, err_msg=f"t={t}")
    if schedule == "cosine" and steps > warmup:
        np.testing.assert_allclose(float(fn(steps)), lr * ratio, rtol=1e-6, atol=1e-12)


def test_ssm_rate_defaults_to_base_rate():
    _, schedules = make_optimizer(ml_collections.ConfigDict(_optim(learning_rate=2e-3)), 10)
    assert float(schedules["ssm_lr"](3)) == pytest.approx(float(schedules["lr"](3)))
