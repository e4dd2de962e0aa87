"""Tests of seqjax.train.optim: per-group updates, clipping and the schedule.

The groups themselves (which parameter is "ssm", "no_decay", "decay") are
tested in test_param_groups.py; here they come from a real s5 + mamba model.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seqjax import models
from seqjax.models.param_groups import labeler, param_labels
from seqjax.train import default_config
from seqjax.train.optim import make_optimizer, make_schedule


def _flat(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _model_config():
    """Two layers (s5, mamba) on tokens, with a learned position table: every group is present."""
    cfg = models.default_config()
    cfg.update(dict(mixers="s5,mamba", num_layers=2, d_model=8, vocab_size=11, max_length=8, positions="learned"))
    return cfg


@pytest.fixture(scope="module")
def real_params():
    """Params of a real s5 + mamba model (built once)."""
    model = models.build(_model_config())
    # Jitted init: eager init of mamba/s5 takes several seconds on CPU.
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return nn.meta.unbox(variables["params"])


def _optim(**kw):
    optim = default_config().optim
    optim.update(kw)
    return optim


def _make(optim, steps=10):
    return make_optimizer(optim, steps, labeler(_model_config()))


def test_param_groups_of_real_mixers(real_params):
    labels = _flat(param_labels(real_params, _model_config()))
    s5, mamba = "['backbone']['block_0']['mixer']", "['backbone']['block_1']['mixer']"
    expected = {
        f"{s5}['Lambda_re']": "ssm", f"{s5}['Lambda_im']": "ssm", f"{s5}['log_step']": "ssm",
        f"{s5}['B']": "ssm", f"{s5}['C']": "decay", f"{s5}['D']": "no_decay",
        f"{mamba}['A_log']": "ssm", f"{mamba}['dt_bias']": "ssm", f"{mamba}['D']": "no_decay",
        f"{mamba}['conv_bias']": "no_decay", f"{mamba}['conv_weight']": "decay",
        f"{mamba}['in_proj']['kernel']": "decay", f"{mamba}['dt_proj']['kernel']": "decay",
        "['embed']['embedding']": "no_decay", "['embed']['positions']['embedding']": "no_decay",
        "['backbone']['block_0']['mixer_norm']['scale']": "no_decay",
        "['backbone']['block_0']['mixer_norm']['bias']": "no_decay",
        "['backbone']['block_0']['channel']['wi']['bias']": "no_decay",
        "['backbone']['block_0']['channel']['wi']['kernel']": "decay",
        "['head']['logits']['kernel']": "decay",
    }
    assert {k: labels[k] for k in expected} == expected
    assert set(labels.values()) == {"ssm", "decay", "no_decay"}


def test_weight_decay_only_on_decay_group(real_params):
    """One AdamW step with zero gradient: only "decay" leaves shrink, by exactly lr * wd * p."""
    lr, wd = 0.01, 0.1
    params = real_params
    tx, _ = _make(_optim(learning_rate=lr, weight_decay=wd, schedule="constant", ssm_learning_rate=0.05))
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    labels, ups, ps = _flat(param_labels(params, _model_config())), _flat(updates), _flat(params)
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
    tx, _ = _make(optim)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    labels, ups, gs = _flat(param_labels(params, _model_config())), _flat(updates), _flat(grads)
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
                                  schedule="constant", clip_norm=clip), 10, labeler(None))
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
    _, schedules = make_optimizer(ml_collections.ConfigDict(_optim(learning_rate=2e-3)), 10, labeler(None))
    assert float(schedules["ssm_lr"](3)) == pytest.approx(float(schedules["lr"](3)))
