"""Auxiliary losses: what mixers sow into ``"losses"`` is added to the task's loss by the train step.

A toy model with two ``mom`` layers (each sows ``balance_weight x`` its router
balance loss) and one ``longvq`` layer (its commitment loss) trains one step:
the step's loss is the task's loss plus, per name, the mean over the layers
that sowed it — recomputed here from the mixers' public loss functions — and
its gradient is the gradient of that sum; nothing of ``"losses"`` enters the
train state; evaluation (the collection not mutable) sows nothing.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import mixers
from seqjax.mixers.longvq import commitment
from seqjax.mixers.mom import load_balancing_loss
from seqjax.train.state import make_init_fn
from seqjax.train.step import aux_losses, make_train_step
from tests.train.toy import ToyTask, make_batch

WIDTH = 8
MOM = dict(num_heads=2, num_memories=3, top_k=2, memory="gla", gate_low_rank=4, chunk_size=4)
LONGVQ = dict(codebook_size=4, window=2, ema_dim=2, qk_dim=4, expand=1)


class AuxToy(nn.Module):
    """Dense → mom → mom → longvq (each residual) → Dense.

    Attributes:
      balance_weight: the mom layers' ``balance_weight``.
    """

    balance_weight: float = 0.5

    @nn.compact
    def __call__(self, x, segment_ids=None, deterministic=True):
        h = nn.Dense(WIDTH, name="embed")(x)
        for name, layer in _layers(self.balance_weight):
            h = h + layer(name=name)(h, segment_ids=segment_ids, deterministic=deterministic)
        return nn.Dense(1, name="head")(h)


def _layers(balance_weight):
    """``[(name, partial constructor)]`` of the toy's three mixer layers."""
    mom, longvq = mixers.get("mom"), mixers.get("longvq")
    return [("mom_0", lambda **k: mom(**MOM, balance_weight=balance_weight, **k)),
            ("mom_1", lambda **k: mom(**MOM, balance_weight=balance_weight, **k)),
            ("longvq", lambda **k: longvq(**LONGVQ, commitment_weight=0.25, **k))]


def _expected(model, params, model_state, batch):
    """``(task loss, {name: mean over layers})`` recomputed layer by layer from the public loss functions."""
    h = nn.Dense(WIDTH).apply({"params": params["embed"]}, batch["inputs"])
    balance, commit = [], []
    for name, layer in _layers(model.balance_weight):
        variables = {"params": params[name], **{k: v[name] for k, v in model_state.items() if name in v}}
        unbound = layer()
        if name.startswith("mom"):
            logits = unbound.apply(variables, h, method=lambda m, h: m.router_logits(h))
            balance.append(model.balance_weight * load_balancing_loss(logits, MOM["top_k"]))
        else:
            keys, codebook = unbound.apply(variables, h, method=lambda m, h: (
                lambda proj: (proj.rest[1], proj.shared[0]))(m.project(m.parts(h.shape[-1]), h, None)))
            commit.append(0.25 * commitment(keys, codebook))
        h = h + unbound.apply(variables, h)
    out = nn.Dense(1).apply({"params": params["head"]}, h)
    task_loss = jnp.mean((out - batch["targets"]) ** 2)
    return task_loss, {"balance_loss": jnp.mean(jnp.stack(balance)), "commitment_loss": jnp.mean(jnp.stack(commit))}


def test_aux_losses_means_per_name_and_walks_nested_layers():
    sown = {"a": {"balance_loss": (jnp.asarray(1.0),)}, "b": {"inner": {"balance_loss": (jnp.asarray(3.0),)}},
            "c": {"other": (jnp.asarray(0.5), jnp.asarray(1.5))}}
    out = aux_losses(sown)
    assert sorted(out) == ["balance_loss", "other"]
    assert float(out["balance_loss"]) == 2.0 and float(out["other"]) == 1.0
    assert aux_losses({}) == {}


def test_train_step_adds_the_sown_losses_to_the_loss_and_its_gradient():
    model, tx = AuxToy(), optax.sgd(1e-2)
    batch = make_batch(0, 0, 3)
    state = jax.jit(make_init_fn(model, tx))(jax.random.key(0), jnp.asarray(batch["inputs"][:1]), None)
    assert "losses" not in state.model_state  # per application, never state
    step = jax.jit(make_train_step(model, ToyTask(), tx, lambda count: 1e-2))
    new, metrics = step(state, batch, jax.random.key(1))
    assert "losses" not in new.model_state and set(new.model_state) == set(state.model_state)

    task_loss, aux = jax.jit(lambda p: _expected(model, p, state.model_state, batch))(state.params)
    assert float(aux["balance_loss"]) > 0.1 and float(aux["commitment_loss"]) > 0  # both terms matter
    for name, value in aux.items():
        np.testing.assert_allclose(float(metrics[f"aux_{name}"]), float(value), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), float(task_loss + sum(aux.values())), rtol=1e-5)

    # The update is SGD on the gradient of the sum: params - lr * grad.
    def total(params):
        t, a = _expected(model, params, state.model_state, batch)
        return t + sum(a.values())

    grads = jax.jit(jax.grad(total))(state.params)
    router = ("mom_0", "router", "kernel")
    expect = state.params[router[0]][router[1]][router[2]] - 1e-2 * grads[router[0]][router[1]][router[2]]
    np.testing.assert_allclose(np.asarray(new.params[router[0]][router[1]][router[2]]), np.asarray(expect),
                               rtol=1e-4, atol=1e-6)
    # Without the balance term the router's update differs (so the check above can fail).
    def task_only(params):
        return _expected(model, params, state.model_state, batch)[0] + _expected(
            model, params, state.model_state, batch)[1]["commitment_loss"]

    g0 = jax.jit(jax.grad(task_only))(state.params)[router[0]][router[1]][router[2]]
    assert float(jnp.max(jnp.abs(g0 - grads[router[0]][router[1]][router[2]]))) > 1e-4


def test_a_zero_weight_sows_nothing_and_evaluation_sows_nothing():
    model = AuxToy(balance_weight=0.0)
    x = jnp.asarray(make_batch(0, 0, 2)["inputs"])
    variables = jax.jit(model.init)(jax.random.key(0), x)
    out, written = jax.jit(lambda v, x: model.apply(v, x, mutable=["losses"]))(variables, x)
    assert sorted(aux_losses(written.get("losses", {}))) == ["commitment_loss"]
    # Not mutable (evaluation): nothing is sown and the output is the same.
    np.testing.assert_array_equal(np.asarray(jax.jit(model.apply)(variables, x)), np.asarray(out))
