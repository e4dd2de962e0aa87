"""The trainer's config sections: their defaults and the checks run before anything is built.

:func:`default_config` gives the sections the trainer owns (``seed``,
``optim``, ``train``, ``mesh``, ``distributed``); :func:`validate_config`,
:func:`check_lengths`, :func:`check_vocab` and :func:`check_workdir_config` raise a one-line
:class:`~seqjax.errors.ConfigError` naming the field. ``seqjax.train.run``
calls all of them before it creates the workdir, so a config that fails
leaves nothing behind.
"""

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
from ml_collections.config_dict import placeholder

from seqjax import models, parallel
from seqjax.errors import ConfigError
from seqjax.parallel import distributed
from seqjax.tasks.base import padded_batch_size
from seqjax.train import optim as optim_lib
from seqjax.train.guards import StopRule
from seqjax.train.writers import jsonable


def default_config() -> ml_collections.ConfigDict:
    """Defaults for the sections the trainer owns: ``seed``, ``optim``, ``train``, ``mesh``, ``distributed``.

    Returns:
      A ConfigDict; experiments add ``task`` and ``model`` and override fields.
    """
    return ml_collections.ConfigDict({
        "seed": 0,
        "optim": {
            "optimizer": "adamw",
            "learning_rate": 1e-3,
            "ssm_learning_rate": placeholder(float),  # None: the base rate
            "weight_decay": 0.01,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "schedule": "cosine",
            "warmup_steps": 0,
            "min_lr_ratio": 0.0,
            "clip_norm": 1.0,
        },
        "train": {
            "steps": 1000,
            "batch_size": 32,
            "log_every": 100,
            "eval_every": 0,  # 0: evaluate only at the end
            # Stop once an evaluation (of eval_every) meets e.g. "accuracy>0.99" (seqjax.train.guards.StopRule).
            "stop_at": "",
            "checkpoint_every": 1000,  # 0: checkpoint only at the end
            "keep_checkpoints": 2,
            # Stop when a loss exceeds this many times its running median (seqjax.train.guards); 0/None: off.
            "divergence_factor": 1e3,
            "progress": True,
            # A run folder (or checkpoints folder) whose parameters start a new run; see seqjax.train.init_from.
            "init_from": placeholder(str),
            "init_from_skip": "",  # comma-separated parameter path prefixes init_from does not copy (e.g. "head")
        },
        # -1: the devices the other axes leave; presets in seqjax/parallel/rules.py.
        "mesh": parallel.mesh.default_config().to_dict(),
        # Multi-host: None fields fall back to SEQJAX_* env vars or a detected cluster.
        "distributed": {
            "enabled": "auto",  # "auto", "True" or "False" (see seqjax.parallel.distributed.initialize)
            "coordinator_address": placeholder(str),
            "num_processes": placeholder(int),
            "process_id": placeholder(int),
            "local_device_ids": placeholder(tuple),
            "initialization_timeout": placeholder(int),
        },
    })


# --- validation ------------------------------------------------------------------


def _section(config, name: str):
    section = config.get(name)
    if section is None:
        raise ConfigError(f"config.{name} is missing; it must hold the {name} fields (see seqjax.train.default_config)")
    return section


def _check_int(field: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{field}={value!r} must be an int >= {minimum}")


def validate_config(config, num_devices: int | None = None) -> dict[str, int]:
    """Checks the trainer's sections of ``config``.

    Args:
      config: the full config.
      num_devices: devices available (default: ``jax.device_count()``).

    Returns:
      The mesh axis sizes (``{"data": ..., "fsdp": ..., "sequence": ..., "tensor": ...}``).

    Raises:
      ConfigError: one line naming the first bad field.
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    _check_int("config.seed", config.get("seed"), 0)
    train = _section(config, "train")
    _check_int("config.train.steps", train.get("steps"), 1)
    _check_int("config.train.batch_size", train.get("batch_size"), 1)
    _check_int("config.train.log_every", train.get("log_every"), 1)
    _check_int("config.train.eval_every", train.get("eval_every"), 0)
    _check_int("config.train.checkpoint_every", train.get("checkpoint_every"), 0)
    _check_int("config.train.keep_checkpoints", train.get("keep_checkpoints"), 1)
    if StopRule.parse(train.get("stop_at")) is not None and not train.get("eval_every"):
        raise ConfigError(f"config.train.stop_at={train.get('stop_at')!r} needs config.train.eval_every > 0 (the rule "
                          "is read at those evaluations)")
    factor = train.get("divergence_factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not (factor == 0 or 1 < factor < float("inf"))):
        raise ConfigError(f"config.train.divergence_factor={factor!r} must be a number > 1, or 0 or None to turn the "
                          "divergence rule off")
    if not isinstance(train.get("progress"), bool):
        raise ConfigError(f"config.train.progress={train.get('progress')!r} must be True or False")
    init_from = train.get("init_from")
    if init_from is not None and not isinstance(init_from, str):
        raise ConfigError(f"config.train.init_from={init_from!r} must be a path (a run folder, its checkpoints folder "
                          "or a checkpoints/<step> folder), or None / '' for a fresh start")
    skip = train.get("init_from_skip")
    if skip is not None and not isinstance(skip, str):
        raise ConfigError(f"config.train.init_from_skip={skip!r} must be a string of comma-separated parameter path "
                          "prefixes (e.g. 'head'), or ''")
    optim_lib.validate(_section(config, "optim"), train.steps)
    mesh_cfg = _section(config, "mesh")
    sizes = parallel.mesh_shape(mesh_cfg, num_devices)
    preset = mesh_cfg.get("preset", "dp")
    parallel.check_preset(preset, sizes)
    # A batch that data x fsdp do not divide is padded by the trainer with rows of
    # loss weight 0 (set_up); each process must still read whole rows.
    procs = jax.process_count()
    padded = padded_batch_size(train.batch_size, sizes["data"] * sizes["fsdp"])
    if train.batch_size % procs or padded % procs:
        raise ConfigError(
            f"config.train.batch_size={train.batch_size} must split evenly over the {procs} processes, before "
            f"and after padding to the batch split config.mesh.data={sizes['data']} x config.mesh.fsdp={sizes['fsdp']}"
        )
    model = config.get("model")
    axis = model.get("sequence_axis") if model is not None else None
    if sizes["sequence"] > 1 and axis != "sequence":
        raise ConfigError(
            f"config.mesh.sequence={sizes['sequence']} splits the length, so the mixers must know it: set "
            f"config.model.sequence_axis='sequence' (got {axis!r})"
        )
    if procs > 1 and jax.local_device_count() % (sizes["sequence"] * sizes["tensor"]):
        raise ConfigError(
            f"config.mesh.sequence x config.mesh.tensor = {sizes['sequence'] * sizes['tensor']} must divide the "
            f"{jax.local_device_count()} devices of one host: a host reads whole sequences"
        )
    return sizes


def batch_padding(config, sizes: dict[str, int], task) -> str | None:
    """How the trainer splits a batch that ``data x fsdp`` do not divide; the one place of that rule.

    Such a batch (the LRA papers' 50 on 4 or 8 devices) is padded to the next
    multiple with rows of loss weight 0, so loss, gradient and metrics are the
    real batch's; the task must weigh rows (``weighted_rows``).

    Args:
      config: the full config (``config.train.batch_size``).
      sizes: the mesh axis sizes from :func:`validate_config`.
      task: the built task.

    Returns:
      One ``note:`` line when the batch is padded, else None.

    Raises:
      ConfigError: the batch needs padding and the task cannot weigh rows.
    """
    ways, batch = sizes["data"] * sizes["fsdp"], config.train.batch_size
    padded = padded_batch_size(batch, ways)
    if padded == batch:
        return None
    if not getattr(task, "weighted_rows", False):
        raise ConfigError(
            f"config.train.batch_size={batch} is not divisible by the batch split {ways} "
            f"(config.mesh.data={sizes['data']} x config.mesh.fsdp={sizes['fsdp']}), and task {task.name!r} "
            "cannot weigh rows to pad it; allowed: a batch size the split divides")
    return (f"note: config.train.batch_size={batch} does not split {ways} ways (mesh data x fsdp); "
            f"each step pads it to {padded} rows, {padded - batch} of loss weight 0, so the loss and "
            f"gradient are the {batch}-row batch's")


def check_lengths(config, task) -> None:
    """Raises when the task's sequences are longer than the model's learned positions allow.

    Args:
      config: the full config (reads ``config.model.positions`` and ``max_length``).
      task: the task object (its ``max_length`` and ``name``).

    Raises:
      ConfigError: naming ``config.model.max_length`` and the task's length.
    """
    model = config.get("model")
    if model is None or model.get("positions") != "learned" or model.get("max_length") is None:
        return
    if task.max_length > model.max_length:
        raise ConfigError(
            f"config.model.max_length={model.max_length}: sequence longer than the model allows "
            f"(task {task.name!r} feeds length {task.max_length}; learned positions need max_length >= it)"
        )


def check_vocab(config, task) -> None:
    """Raises when a task feeds or scores token ids that the model's vocabulary does not hold.

    Only tasks that declare ``vocab_size`` (their ids are below it) are checked:
    an id past the embedding table or the LM head would not raise (JAX fills or clamps
    out-of-range gathers), it would train on garbage.

    Args:
      config: the full config (reads ``config.model.input``, ``head`` and ``vocab_size``).
      task: the task object (its ``vocab_size``, if any, and ``name``).

    Raises:
      ConfigError: naming ``config.model.vocab_size`` and the task's vocabulary.
    """
    vocab, model = getattr(task, "vocab_size", None), config.get("model")
    if vocab is None or model is None:
        return
    uses_ids = model.get("input", "tokens") == "tokens" or model.get("head", "lm") == "lm"
    have = model.get("vocab_size")
    if uses_ids and isinstance(have, int) and have < vocab:
        raise ConfigError(f"config.model.vocab_size={have} is smaller than the vocabulary of task {task.name!r} "
                          f"(ids below {vocab}); allowed: config.model.vocab_size >= {vocab}")


# --- one run per folder --------------------------------------------------------------

# Fields that may change between invocations in the same folder: they change
# bookkeeping or placement, not what is trained (train.init_from is read only
# by a run's first start; a resume restores its own state) (train.steps may grow to
# extend a run; the mesh and the processes may change, since 8 devices train
# as 1 does and checkpoints restore into any sharding).
RESUMABLE_FIELDS = (
    "train.steps", "train.progress", "train.log_every", "train.eval_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.divergence_factor", "train.init_from", "train.init_from_skip", "mesh.data", "mesh.fsdp", "mesh.sequence", "mesh.tensor", "mesh.preset",
    "model.sequence_axis", *(f"distributed.{k}" for k in distributed.FIELDS),
)


def _flatten(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _plain(config) -> Any:
    """``config`` as the JSON values ``config.json`` holds (tuples as lists, ...)."""
    return json.loads(json.dumps(jsonable(config.to_dict())))


def check_workdir_config(config, workdir: Path) -> None:
    """Checks ``config`` against ``workdir/config.json`` when the folder has one.

    :func:`run` writes that file once the config has passed every check, so a
    config that failed (say, a too-long sequence) can be fixed in place.

    Args:
      config: the full config.
      workdir: the run folder.

    A field the run's file lacks (one added to seqjax after the run started)
    counts as unchanged when the config holds its default, so runs resume
    across upgrades that add trainer or model fields.

    Raises:
      ConfigError: the folder holds a run of another config (names up to three
        differing fields with both values).
    """
    path = workdir / "config.json"
    if not path.exists():
        return
    old, new = _flatten(json.loads(path.read_text())), _flatten(_plain(config))
    defaults = _flatten(_plain(default_config())) | _flatten(_plain(models.default_config()), "model.")
    diffs = [k for k in sorted(set(old) | set(new))
             if k not in RESUMABLE_FIELDS and old.get(k) != new.get(k)
             and not (k not in old and k in defaults and new.get(k) == defaults[k])]
    if diffs:
        shown = ", ".join(f"config.{k}={new.get(k)!r} (run has {old.get(k)!r})" for k in diffs[:3])
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise ConfigError(
            f"{workdir} holds a run of a different config: {shown}{more}; pass another --workdir or delete the folder"
        )


__all__ = ["default_config", "validate_config", "check_lengths", "check_vocab", "check_workdir_config", "RESUMABLE_FIELDS"]
