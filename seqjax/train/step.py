"""What runs on the devices: the train step and the model's application to a batch.

Both are pure functions of arrays; :mod:`seqjax.train.loop` jits them with
the state's and the batch's shardings.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from seqjax.mixers.base import AUX_LOSSES
from seqjax.train.state import TrainState

# Batch keys the model is applied with (besides ``inputs``), when the task provides them, as keywords:
# ``decoder_inputs`` feeds an encoder–decoder (``config.model.architecture``, seqjax.models.architectures).
MODEL_KEYS = ("segment_ids", "mask", "decoder_inputs")


def model_inputs(batch: dict) -> dict:
    """Only what the model sees: ``inputs`` and, if present, ``segment_ids``, ``mask`` and ``decoder_inputs``.

    ``mask`` (True at real positions) reaches the classification head's
    pooling, so padded sequences pool over their real tokens only.

    Args:
      batch: a task's batch.

    Returns:
      The subset of ``batch`` passed to the model.
    """
    out = {"inputs": batch["inputs"]}
    for key in MODEL_KEYS:
        if batch.get(key) is not None:
            out[key] = batch[key]
    return out


def init_extras(batch: dict) -> dict:
    """The model inputs besides ``inputs``/``segment_ids`` that the parameters' shapes need at init.

    ``mask`` is left out (it changes no shape); ``decoder_inputs`` is kept (an
    encoder–decoder's decoder is built on it).

    Args:
      batch: a batch (or :func:`model_inputs` of one).

    Returns:
      The keyword inputs for ``model.init`` (empty for a SequenceModel's batches).
    """
    return {k: batch[k] for k in MODEL_KEYS if k not in ("segment_ids", "mask") and batch.get(k) is not None}


def apply_model(model, params, batch: dict, model_state: dict | None = None, **kwargs):
    """``model.apply`` on a batch's ``inputs`` (and the other :data:`MODEL_KEYS` when present).

    Args:
      model: the Flax module.
      params: its ``"params"`` collection.
      batch: a batch (other keys, e.g. targets, are ignored).
      model_state: the model's other variable collections (read; None: none).
      **kwargs: passed on (``deterministic``, ``rngs``, ``mutable``).

    Returns:
      The model's outputs (with ``mutable``: ``(outputs, updated collections)``).
    """
    extra = {k: batch[k] for k in MODEL_KEYS if batch.get(k) is not None}
    return model.apply({"params": params, **(model_state or {})}, batch["inputs"], **extra, **kwargs)


def aux_losses(sown: dict) -> dict:
    """The auxiliary losses a model sowed in one application, one scalar per name.

    Each mixer layer sows its (already weighted) loss under a name, e.g.
    ``"balance_loss"`` in every ``mom`` layer; a name's value is the mean
    over the places that sowed it (the layers), as the MoM authors average
    their balance loss over layers. The train step adds the sum over names
    to the task's loss.

    Args:
      sown: the ``"losses"`` collection returned by ``model.apply(...,
        mutable=["losses"])``: nested dicts whose leaves are the tuples
        :meth:`flax.linen.Module.sow` appends to.

    Returns:
      ``{name: float32 scalar}`` (empty when nothing was sown).
    """
    per_name: dict[str, list] = {}

    def walk(node):
        for key, value in node.items():
            if isinstance(value, tuple):
                per_name.setdefault(key, []).extend(value)
            else:
                walk(value)

    walk(sown)
    return {name: jnp.mean(jnp.stack([jnp.asarray(v, jnp.float32).sum() for v in values]))
            for name, values in sorted(per_name.items())}


def make_train_step(model, task, tx: optax.GradientTransformation, lr_schedule: Callable) -> Callable:
    """The (unjitted) train step ``(state, batch, key, limit=None) -> (state, metrics)``.

    A non-finite loss or gradient norm, or a loss above ``limit`` (the
    divergence guard's, :class:`~seqjax.train.guards.DivergenceGuard`),
    returns the input state unchanged, so that the host can checkpoint the
    last good state after seeing the loss.
    The dropout key of a step is ``fold_in(key, state.step)``, so a resumed
    run draws the same masks as an uninterrupted one. The model's other
    collections (``state.model_state``) are applied mutable and replaced by
    what the model writes (the ``routing`` mixer's centroid EMA); the
    gradient is taken of ``params`` only. Auxiliary losses the mixers sow
    into :data:`AUX_LOSSES` (:func:`aux_losses`) are added to the task's
    loss: ``loss`` is then the sum that is optimised, and each name is also
    logged (``aux_<name>``, e.g. ``aux_balance_loss``).

    Args:
      model: the Flax module.
      task: the task (its ``loss(outputs, batch) -> (loss, metrics)``).
      tx: the optimiser.
      lr_schedule: ``count -> lr`` of the base group, logged as ``lr``.

    Returns:
      The step function; its metrics are the task's plus ``loss``,
      ``grad_norm`` and ``lr``.
    """

    def train_step(state: TrainState, batch: Any, key: jax.Array, limit: jax.Array | float | None = None):
        step_key = jax.random.fold_in(key, state.step)

        mutable = sorted(set(state.model_state) | {AUX_LOSSES})

        def loss_fn(params):
            kwargs = dict(deterministic=False, rngs={"dropout": step_key})
            outputs, written = apply_model(model, params, batch, state.model_state, mutable=mutable, **kwargs)
            written = dict(written)
            aux = aux_losses(written.pop(AUX_LOSSES, {}))
            # A collection the model did not write keeps its value (and the state its structure).
            model_state = {**state.model_state, **{k: v for k, v in written.items() if k in state.model_state}}
            loss, metrics = task.loss(outputs, batch)
            if aux:
                loss = loss + sum(aux.values())
                metrics = {**metrics, **{f"aux_{name}": value for name, value in aux.items()}}
            return loss, (metrics, model_state)

        (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                         model_state=jax.lax.stop_gradient(dict(model_state)))
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if limit is not None:
            ok = ok & (loss <= limit)
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "lr": lr_schedule(state.step)}
        return new, metrics

    return train_step


__all__ = ["MODEL_KEYS", "model_inputs", "init_extras", "apply_model", "aux_losses", "make_train_step"]
