"""GAE and the clipped PPO loss against float64 NumPy loops written from the equations."""

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.rl.gae import gae
from seqjax.rl.ppo import PPOBatch, ppo_loss


def gae_reference(r, v, d, last, gamma, lam):
    """The GAE recursion, one row and one step at a time, in float64."""
    r, v, d, last = (np.asarray(a, np.float64) for a in (r, v, d, last))
    b, T = r.shape
    adv = np.zeros((b, T))
    for i in range(b):
        a_next = 0.0
        for t in reversed(range(T)):
            v_next = last[i] if t == T - 1 else v[i, t + 1]
            nonterminal = 0.0 if d[i, t] else 1.0
            delta = r[i, t] + gamma * v_next * nonterminal - v[i, t]
            a_next = delta + gamma * lam * nonterminal * a_next
            adv[i, t] = a_next
    return adv, adv + v


def test_gae_matches_numpy_with_episode_ends_inside(rng):
    b, T = 3, 17
    r = rng.normal(size=(b, T)).astype(np.float32)
    v = rng.normal(size=(b, T)).astype(np.float32)
    d = rng.random((b, T)) < 0.2
    d[0, 5] = d[1, 9] = True
    d[2] = False  # one row without an end
    last = rng.normal(size=b).astype(np.float32)
    adv, tgt = gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(d), jnp.asarray(last), gamma=0.97, lam=0.9)
    ref_adv, ref_tgt = gae_reference(r, v, d, last, 0.97, 0.9)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tgt, ref_tgt, rtol=1e-5, atol=1e-5)
    # The episode ends matter: ignoring them gives other advantages before the end.
    no_end, _ = gae_reference(r, v, np.zeros_like(d), last, 0.97, 0.9)
    assert np.abs(no_end[0, :6] - ref_adv[0, :6]).max() > 1e-3


def ppo_reference(logits, values, actions, old_logp, old_v, adv, tgt, eps, c_v, c_h):
    """The clipped PPO loss, element by element, in float64."""
    logits, values, old_logp, old_v, adv, tgt = (np.asarray(a, np.float64).reshape(-1, *np.shape(a)[2:])
                                                 for a in (logits, values, old_logp, old_v, adv, tgt))
    actions = np.asarray(actions).reshape(-1)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pol, val, ent = [], [], []
    for i in range(len(actions)):
        z = logits[i] - logits[i].max()
        p = np.exp(z) / np.exp(z).sum()
        logp = np.log(p[actions[i]])
        ratio = np.exp(logp - old_logp[i])
        pol.append(-min(ratio * adv[i], min(max(ratio, 1 - eps), 1 + eps) * adv[i]))
        vc = old_v[i] + min(max(values[i] - old_v[i], -eps), eps)
        val.append(0.5 * max((values[i] - tgt[i]) ** 2, (vc - tgt[i]) ** 2))
        ent.append(-(p * np.log(p)).sum())
    return np.mean(pol) + c_v * np.mean(val) - c_h * np.mean(ent), np.mean(pol), np.mean(val), np.mean(ent)


def test_ppo_loss_matches_numpy(rng):
    b, T, A = 4, 6, 3
    logits = rng.normal(size=(b, T, A)).astype(np.float32)
    values = rng.normal(size=(b, T)).astype(np.float32)
    actions = rng.integers(0, A, (b, T))
    # Old log-probs near the new ones, some ratios outside [1 - eps, 1 + eps].
    new_logp = np.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], -1)[..., 0]
    old_logp = (new_logp + rng.normal(scale=0.3, size=(b, T))).astype(np.float32)
    old_v = (values + rng.normal(scale=0.4, size=(b, T))).astype(np.float32)
    adv = rng.normal(size=(b, T)).astype(np.float32)
    tgt = rng.normal(size=(b, T)).astype(np.float32)
    batch = PPOBatch(jnp.asarray(actions), jnp.asarray(old_logp), jnp.asarray(old_v), jnp.asarray(adv),
                     jnp.asarray(tgt))
    loss, aux = ppo_loss(jnp.asarray(logits), jnp.asarray(values), batch, clip_eps=0.2, vf_coef=0.5, ent_coef=0.01)
    ref, pol, val, ent = ppo_reference(logits, values, actions, old_logp, old_v, adv, tgt, 0.2, 0.5, 0.01)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([aux["policy_loss"], aux["value_loss"], aux["entropy"]], [pol, val, ent], rtol=1e-5,
                               atol=1e-6)
    assert 0.0 < float(aux["clip_frac"]) < 1.0  # both branches of the clip are exercised
    # The gradient reaches the logits and values (and is finite).
    g = jax.grad(lambda lg, v: ppo_loss(lg, v, batch, clip_eps=0.2, vf_coef=0.5, ent_coef=0.01)[0],
                 argnums=(0, 1))(jnp.asarray(logits), jnp.asarray(values))
    assert all(np.isfinite(x).all() and np.abs(x).max() > 0 for x in g)
