"""The train state (step, params, optimiser state, model state), its creation and its sharding.

The state is one pytree so that the jitted train step can take it, donate it
and return the next one, and so that a checkpoint is a single save of it.
Where the state lives on the mesh is decided in :func:`state_shardings` only:
parameters by their logical axis names and the rules of ``config.mesh.preset``
(:mod:`seqjax.parallel.rules`), optimiser moments like their parameters, the
step counter and the model state replicated.

The model state is every variable collection the model's ``init`` returns
besides ``"params"`` (e.g. the k-means centroids of the ``routing`` mixer, in
``"routing"``): the train step applies the model with those collections
mutable and keeps what it returns; no optimiser and no gradient touch them,
and they are checkpointed with the rest of the state.
"""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Per application (the train step adds what the mixers sow to the loss), never part of the train state.
from seqjax.mixers.base import AUX_LOSSES


@flax.struct.dataclass
class TrainState:
    """Everything the train step updates.

    Attributes:
      step: number of optimiser updates applied so far (int32 scalar).
      params: the model's ``"params"`` collection (unboxed).
      opt_state: the optax state of ``params``.
      model_state: the model's other variable collections (``{collection:
        tree}``, unboxed; ``{}`` for most models), updated by the model itself.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any = flax.struct.field(default_factory=dict)


def create_train_state(params: Any, tx: optax.GradientTransformation, model_state: Any = None) -> TrainState:
    """A fresh state at step 0.

    Args:
      params: the parameter pytree (boxed Flax partitioning metadata is removed).
      tx: the optimiser.
      model_state: the model's other variable collections (None: none).

    Returns:
      The :class:`TrainState`.
    """
    params = nn.meta.unbox(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=nn.meta.unbox(dict(model_state or {})))


def split_variables(variables: Any) -> tuple[Any, dict]:
    """``(params, model_state)`` of a model's variables: ``"params"`` and every other collection
    (but :data:`AUX_LOSSES`, which is per application)."""
    return variables["params"], {k: v for k, v in variables.items() if k not in ("params", AUX_LOSSES)}


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation) -> Callable:
    """``(key, inputs, segment_ids, extra=None) -> TrainState``: initialises the model and the optimiser.

    Args:
      model: the Flax module (called as ``model.init(rngs, inputs,
        segment_ids=..., deterministic=True, **extra)``; ``extra`` holds the
        other inputs the model's parameters depend on, e.g. an
        encoder–decoder's ``decoder_inputs``).
      tx: the optimiser.

    Returns:
      A pure function, to be jitted with :func:`state_shardings` as output shardings.
    """

    def init_fn(key, inputs, segment_ids, extra=None):
        params_key, dropout_key = jax.random.split(key)
        variables = model.init({"params": params_key, "dropout": dropout_key}, inputs,
                               **_init_kwargs(segment_ids, extra), deterministic=True)
        params, model_state = split_variables(variables)
        return create_train_state(params, tx, model_state)

    return init_fn


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def _init_kwargs(segment_ids: Any, extra: dict | None) -> dict:
    """The keyword inputs of ``model.init``: ``segment_ids`` (a SequenceModel takes None) and ``extra``.

    An encoder–decoder takes no ``segment_ids``; it is passed only when set or when nothing else is.
    """
    if extra:
        return dict(extra, **({"segment_ids": segment_ids} if segment_ids is not None else {}))
    return {"segment_ids": segment_ids}


def abstract_variables(model: nn.Module, inputs: Any, segment_ids: Any = None, extra: dict | None = None) -> Any:
    """All the model's variable collections as ``ShapeDtypeStruct`` leaves (boxes kept); nothing is computed.

    Args:
      model: the Flax module.
      inputs: example inputs (only shapes and dtypes are used).
      segment_ids: example segment ids, or None.
      extra: other example inputs passed as keywords (e.g. ``decoder_inputs``), or None.

    Returns:
      ``{collection: tree}``, ``"params"`` among them.
    """
    def init(key):
        return model.init({"params": key, "dropout": key}, inputs, **_init_kwargs(segment_ids, extra),
                          deterministic=True)

    return jax.eval_shape(init, jax.random.key(0))


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
    return abstract_variables(model, inputs, segment_ids)["params"]


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
      moments), everything else (the step, ``model_state``) replicated.
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
        model_state=jax.tree.map(lambda _: rep, abstract_state.model_state),
    )


__all__ = ["TrainState", "create_train_state", "split_variables", "make_init_fn", "replicated", "state_shardings",
           "abstract_variables", "boxed_param_shapes"]
