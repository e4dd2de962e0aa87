"""The train state (step, params, optimiser state), its creation and its sharding.

The state is one pytree so that the jitted train step can take it, donate it
and return the next one, and so that a checkpoint is a single save of it.
Where the state lives on the mesh is decided in :func:`state_shardings` only;
today everything is replicated, and sharding parameters (FSDP / tensor
parallelism) is a change to that one function.
"""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@flax.struct.dataclass
class TrainState:
    """Everything the train step updates.

    Attributes:
      step: number of optimiser updates applied so far (int32 scalar).
      params: the model's ``"params"`` collection (unboxed).
      opt_state: the optax state of ``params``.
    """

    step: jax.Array
    params: Any
    opt_state: Any


def create_train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0.

    Args:
      params: the parameter pytree (boxed Flax partitioning metadata is removed).
      tx: the optimiser.

    Returns:
      The :class:`TrainState`.
    """
    params = nn.meta.unbox(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation) -> Callable:
    """``(key, inputs, segment_ids) -> TrainState``: initialises the model and the optimiser.

    Args:
      model: the Flax module (called as ``model.init(rngs, inputs,
        segment_ids=..., deterministic=True)``).
      tx: the optimiser.

    Returns:
      A pure function, to be jitted with :func:`state_shardings` as output shardings.
    """

    def init_fn(key, inputs, segment_ids):
        params_key, dropout_key = jax.random.split(key)
        variables = model.init(
            {"params": params_key, "dropout": dropout_key}, inputs, segment_ids=segment_ids, deterministic=True
        )
        return create_train_state(variables["params"], tx)

    return init_fn


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """Where each leaf of the train state lives: the one place that decides it.

    Args:
      abstract_state: the state's pytree (arrays or ``ShapeDtypeStruct``).
      mesh: the device mesh (axis ``data``).

    Returns:
      A pytree of ``NamedSharding`` of the same structure (all replicated for now).
    """
    rep = replicated(mesh)
    return jax.tree.map(lambda _: rep, abstract_state)


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
    """Batch arrays split over ``data`` on their first axis (scalars replicated).

    Args:
      batch: a batch pytree (arrays or ``ShapeDtypeStruct``).
      mesh: the device mesh.

    Returns:
      A pytree of ``NamedSharding`` matching ``batch``.
    """
    size = mesh.shape["data"]

    def one(x):
        shape = jnp.shape(x)
        if len(shape) == 0 or shape[0] % size:
            return replicated(mesh)
        return NamedSharding(mesh, PartitionSpec("data"))

    return jax.tree.map(one, batch)


__all__ = ["TrainState", "create_train_state", "make_init_fn", "replicated", "state_shardings", "batch_shardings"]
