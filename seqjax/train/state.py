"""The train state (step, params, optimiser state), its creation and its sharding.

The state is one pytree so that the jitted train step can take it, donate it
and return the next one, and so that a checkpoint is a single save of it.
Where the state lives on the mesh is decided in :func:`state_shardings` only:
parameters by their logical axis names and the rules of ``config.mesh.preset``
(:mod:`seqjax.parallel.rules`), optimiser moments like their parameters, the
step counter replicated.
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


def boxed_param_shapes(model: nn.Module, inputs: Any, segment_ids: Any = None) -> Any:
    """The model's parameters as ``ShapeDtypeStruct`` leaves inside their logical-name boxes.

    Nothing is computed or allocated (``jax.eval_shape``).

    Args:
      model: the Flax module.
      inputs: example inputs (only shapes and dtypes are used).
      segment_ids: example segment ids, or None.

    Returns:
      The ``"params"`` collection with ``nn.LogicallyPartitioned`` boxes kept.
    """
    def init(key):
        return model.init({"params": key, "dropout": key}, inputs, segment_ids=segment_ids, deterministic=True)

    return jax.eval_shape(init, jax.random.key(0))["params"]


def state_shardings(abstract_state: Any, mesh: Mesh, param_specs: Any = None) -> Any:
    """Where each leaf of the train state lives: the one place that decides it.

    Args:
      abstract_state: the state's pytree (arrays or ``ShapeDtypeStruct``).
      mesh: the device mesh.
      param_specs: one PartitionSpec per parameter
        (:func:`seqjax.parallel.param_specs`); None replicates everything.

    Returns:
      A pytree of ``NamedSharding`` of the same structure: ``params`` by their
      specs, ``opt_state`` leaves like the parameter they mirror (Adam's
      moments), everything else replicated.
    """
    rep = replicated(mesh)
    if param_specs is None:
        return jax.tree.map(lambda _: rep, abstract_state)
    from seqjax.parallel.rules import tree_shardings_like_params

    params = jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs,
                          is_leaf=lambda x: isinstance(x, PartitionSpec))
    return TrainState(
        step=rep,
        params=params,
        opt_state=tree_shardings_like_params(abstract_state.opt_state, param_specs, mesh),
    )


__all__ = ["TrainState", "create_train_state", "make_init_fn", "replicated", "state_shardings",
           "boxed_param_shapes"]
