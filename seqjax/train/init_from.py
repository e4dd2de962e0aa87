"""``train.init_from``: start a new run from another run's parameters (self-pretraining).

Amos et al. 2023 ("Never Train from Scratch") pretrain a model on the task's
own inputs, then fine-tune it on the task; here the pretraining is any earlier
run, and ``config.train.init_from`` names it: a run folder, its
``checkpoints`` folder, or one ``checkpoints/<step>`` folder.

At the start of a *new* run (no checkpoint in its own workdir), the source's
newest checkpoint that restores (or the named step) is read with
:class:`~seqjax.train.checkpoint.Checkpointer` (read-only: nothing in the
source folder is created, cleaned up or moved) and copied into the freshly
initialised parameters by path (``backbone/block_0/mixer/A_log``):

- *matched*: in both, with equal shapes: the source's values;
- *new*: only in this model: they keep their initialisation;
- *dropped*: only in the source: not used;
- *skipped*: in both, but under a prefix of ``config.train.init_from_skip``
  (comma-separated path prefixes, e.g. ``"head"``): they keep their
  initialisation and their shapes are not compared (a pretrained LM head's
  ``head/logits`` has the vocabulary's width, a classifier's the classes').

The model's other variable collections (its model state: the ``routing``
mixer's centroids, ``longvq``'s codebook statistics, the random features in
``constants``) are copied the same way, as paths ``<collection>:<path>``
(``routing:backbone/block_0/mixer/centroids``): the source's parameters were
trained with them, so a copy of the parameters alone would pair them with a
fresh codebook or other random features. ``init_from_skip`` prefixes apply to
the path after the collection.

A matched path whose shapes differ is a :class:`~seqjax.errors.ConfigError`
naming the path and both shapes, raised from the checkpoints' metadata before
the workdir is created. The optimiser state starts fresh (step 0, zero
moments). A resumed run (its workdir holds checkpoints) ignores
``init_from`` and restores its own state. What was copied is printed, written
to ``train.log`` and kept in ``workdir/init_from.json``, which
``results.json`` repeats under ``"init_from"``.
"""

import dataclasses
from pathlib import Path
from typing import Any

import jax

from seqjax.errors import ConfigError
from seqjax.train.checkpoint import CORRUPT_DIR, CheckpointError, Checkpointer, failure_reason
from seqjax.train.results import INIT_FROM_FILE as RECORD_FILE
from seqjax.train.results import write_json_atomic

FIELD = "config.train.init_from"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`plan` found in the source, before any array is read.

    Attributes:
      source: the path as given in the config.
      root: the source run folder (the one holding ``checkpoints/``).
      step: the pinned step (a ``checkpoints/<step>`` source), or None for the newest that restores.
      matched: paths in both trees with equal shapes, sorted (model state as ``<collection>:<path>``).
      new: paths only in the new model, sorted.
      dropped: paths only in the source, sorted.
      skipped: paths in both under an ``init_from_skip`` prefix (kept at their init), sorted.
      saved: the source's whole saved state tree (``ArrayMetadata`` leaves), the restore target's structure.
    """

    source: str
    root: Path
    step: int | None
    matched: tuple[str, ...]
    new: tuple[str, ...]
    dropped: tuple[str, ...]
    skipped: tuple[str, ...]
    saved: Any


def param_path(key_path) -> str:
    """``"a/b/c"`` for a ``jax.tree_util`` key path of a parameter tree."""
    parts = []
    for k in key_path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def flat_params(tree: Any) -> dict[str, Any]:
    """``{path: leaf}`` of a parameter tree (arrays, ``ShapeDtypeStruct`` or orbax metadata leaves)."""
    return {param_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flat_state(params: Any, model_state: Any = None) -> dict[str, Any]:
    """``{path: leaf}`` of the parameters and of the model state (``<collection>:<path>``)."""
    flat = flat_params(params)
    for collection, tree in (model_state or {}).items():
        flat.update({f"{collection}:{path}": v for path, v in flat_params(tree).items()})
    return flat


def _bare(path: str) -> str:
    """A path without its ``<collection>:`` (model state), as ``init_from_skip`` prefixes read it."""
    return path.split(":", 1)[-1]


def has_checkpoints(workdir: Path) -> bool:
    """Whether ``workdir`` holds a run to resume: a finalised step folder, or damaged ones moved aside.

    Such a run restores its own state (or stops, when none restores), so
    ``init_from`` does not apply; orbax's unfinalised ``*.orbax-checkpoint-tmp*``
    folders do not count.
    """
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        return False
    corrupt = directory / CORRUPT_DIR
    return any(p.name.isdigit() for p in directory.iterdir()) or (corrupt.is_dir() and any(corrupt.iterdir()))


def _resolve(source: str) -> tuple[Path, int | None]:
    """``(run folder, pinned step or None)`` of a source path; ConfigError when it is none of the three kinds."""
    path = Path(source).expanduser().absolute()
    if not path.exists():
        raise ConfigError(f"{FIELD}={source!r} does not exist; give a run folder or its checkpoints folder")
    if (path / "checkpoints").is_dir():
        return path, None
    if path.name == "checkpoints" and path.is_dir():
        return path.parent, None
    if path.name.isdigit() and path.parent.name == "checkpoints" and path.is_dir():
        return path.parent.parent, int(path.name)
    raise ConfigError(f"{FIELD}={source!r} is not a run folder (no checkpoints/ in it), a checkpoints folder or a "
                      "checkpoints/<step> folder")


def plan(config, workdir: Path, abstract_params: Any, abstract_model_state: Any = None) -> Plan | None:
    """Checks ``config.train.init_from`` against the new model's parameters and model state (metadata only).

    Args:
      config: the full config.
      workdir: this run's folder (need not exist).
      abstract_params: the new model's parameters (``ShapeDtypeStruct`` leaves).
      abstract_model_state: its other variable collections (``{collection: tree}``; None: none).

    Returns:
      The :class:`Plan`, or None when ``init_from`` is unset or this run resumes
      (its workdir holds checkpoints).

    Raises:
      ConfigError: the source is missing, holds no readable checkpoint, or a
        matched path's shapes differ (one line naming the path and both shapes).
    """
    source = config.train.get("init_from")
    if not source or has_checkpoints(workdir):
        return None
    root, pinned = _resolve(source)
    where = root / "checkpoints"
    if root.absolute() == Path(workdir).absolute():
        raise ConfigError(f"{FIELD}={source!r} is this run's own folder; give another run's folder")
    with Checkpointer(root, read_only=True) as ckpt:
        steps = ckpt.all_steps()
        if pinned is not None and pinned not in steps:
            raise ConfigError(f"{FIELD}={source!r}: step {pinned} is not a finished checkpoint in {where}")
        if not steps:
            raise ConfigError(f"{FIELD}={source!r}: no finished checkpoint in {where}")
        saved, reasons = None, []
        for step in [pinned] if pinned is not None else reversed(steps):
            try:
                saved = ckpt.state_metadata(step)
                break
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint cannot be read
                reasons.append(f"{step}: {failure_reason(e)}")
    if saved is None or not isinstance(saved, dict) or "params" not in saved:
        why = "; ".join(reasons) if reasons else "no params in the saved state"
        raise ConfigError(f"{FIELD}={source!r}: no checkpoint in {where} is readable ({why})")
    old = flat_state(saved["params"], saved.get("model_state"))
    new = flat_state(abstract_params, abstract_model_state)
    prefixes = skip_prefixes(config.train.get("init_from_skip"))
    both = sorted(set(old) & set(new))
    skipped = [p for p in both if any(_bare(p) == q or _bare(p).startswith(q + "/") for q in prefixes)]
    matched = [p for p in both if p not in skipped]
    for path in matched:
        if tuple(old[path].shape) != tuple(new[path].shape):
            what = "model state" if ":" in path else "parameter"
            raise ConfigError(f"{FIELD}={source!r}: {what} {path} has shape {tuple(old[path].shape)} in the "
                              f"source but {tuple(new[path].shape)} in this model")
    return Plan(source=str(source), root=root, step=pinned, matched=tuple(matched),
                new=tuple(sorted(set(new) - set(old))), dropped=tuple(sorted(set(old) - set(new))),
                skipped=tuple(skipped), saved=saved)


def skip_prefixes(value: str | None) -> tuple[str, ...]:
    """The path prefixes of ``config.train.init_from_skip`` (``"head, backbone/block_3"``), without slashes at the ends."""
    return tuple(q.strip().strip("/") for q in (value or "").split(",") if q.strip().strip("/"))


def _saved_path(key_path) -> str | None:
    """The flat path of a leaf of the saved state: a parameter, ``<collection>:<path>``, or None (the rest)."""
    keys = [getattr(k, "key", None) for k in key_path[:2]]
    if keys[:1] == ["params"]:
        return param_path(key_path[1:])
    if keys[:1] == ["model_state"] and len(key_path) > 2:
        return f"{keys[1]}:{param_path(key_path[2:])}"
    return None


def _target(the_plan: Plan, state: Any) -> Any:
    """The restore target: matched leaves in this run's dtypes and shardings, everything else as host arrays."""
    new = flat_state(state.params, state.model_state)
    matched = set(the_plan.matched)

    def leaf(key_path, meta):
        path = _saved_path(key_path)
        if path in matched:
            mine = new[path]
            return jax.ShapeDtypeStruct(mine.shape, mine.dtype, sharding=mine.sharding)
        # Not needed (the optimiser state, dropped params): restored to host memory and discarded.
        return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype)

    return jax.tree_util.tree_map_with_path(leaf, the_plan.saved)


def _replace(tree: Any, copied: dict, prefix: str = "") -> Any:
    """``tree`` with the leaves whose path (``prefix`` + path) is in ``copied`` replaced."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree_util.tree_unflatten(treedef, [copied.get(prefix + param_path(p), v) for p, v in leaves])


def load(the_plan: Plan, state: Any, *, report=None) -> tuple[Any, dict]:
    """Copies the source's matched parameters and model state into a freshly initialised state.

    Args:
      the_plan: :func:`plan`'s result.
      state: the fresh :class:`~seqjax.train.state.TrainState` (in its shardings).
      report: receives the one-line warning of each source checkpoint that does not restore.

    Returns:
      ``(state, record)``: the state with the matched parameters and model state replaced
      (same shardings and dtypes; optimiser state and step untouched) and the
      record (``source``, ``step``, ``matched``, ``new``, ``dropped``, ``skipped``, ``message``).

    Raises:
      ConfigError: no checkpoint of the source restores.
    """
    target = _target(the_plan, state)
    where = the_plan.root / "checkpoints"
    with Checkpointer(the_plan.root, read_only=True) as ckpt:
        try:
            if the_plan.step is not None:
                step = the_plan.step
                try:
                    restored, _ = ckpt.restore(step, target)
                except Exception as e:  # noqa: BLE001 - reported in one line
                    raise CheckpointError(f"checkpoint {step} does not restore ({failure_reason(e)})") from e
            else:
                found = ckpt.restore_latest(target, report=report, move=False)
                if found is None:
                    raise CheckpointError(f"no finished checkpoint in {where}")
                step, restored, _ = found
        except CheckpointError as e:
            raise ConfigError(f"{FIELD}={the_plan.source!r}: {str(e).split('; delete')[0]}") from None
    source = flat_state(restored["params"], restored.get("model_state"))
    copied = {path: source[path] for path in the_plan.matched}
    params = _replace(state.params, copied)
    model_state = {c: _replace(tree, copied, f"{c}:") for c, tree in state.model_state.items()}
    record = {"source": str(the_plan.root), "step": int(step), "matched": list(the_plan.matched),
              "new": list(the_plan.new), "dropped": list(the_plan.dropped), "skipped": list(the_plan.skipped)}
    record["message"] = message(the_plan.source, record)
    return state.replace(params=params, model_state=model_state), record


def apply(the_plan: Plan | None, state: Any, workdir: Path, *, primary: bool, say) -> tuple[Any, dict | None]:
    """:func:`load`, then (process 0) prints the report and writes ``workdir/init_from.json``.

    Args:
      the_plan: :func:`plan`'s result; None leaves ``state`` as it is.
      state: the fresh train state.
      workdir: this run's folder.
      primary: whether this is process 0.
      say: ``say(line, err=False)`` prints a line for the person at the terminal.

    Returns:
      ``(state, record)``, record None when there was no plan.
    """
    if the_plan is None:
        return state, None
    state, record = load(the_plan, state, report=lambda line: say(line, err=True) if primary else None)
    if primary:
        write_record(workdir, record)
        say(record["message"])
    return state, record


def _some(paths, shown: int = 3) -> str:
    more = f", +{len(paths) - shown} more" if len(paths) > shown else ""
    return f" ({', '.join(paths[:shown])}{more})" if paths else ""


def message(source: str, record: dict) -> str:
    """``init_from <source> (step N): 24 matched, 2 new (head/bias, head/kernel), 1 dropped (...)[, 2 skipped (...)]``."""
    skipped = record.get("skipped") or []
    return (f"init_from {source} (step {record['step']}): {len(record['matched'])} matched, "
            f"{len(record['new'])} new{_some(record['new'])}, {len(record['dropped'])} dropped{_some(record['dropped'])}"
            + (f", {len(skipped)} skipped{_some(skipped)}" if skipped else ""))


def write_record(workdir: Path, record: dict) -> None:
    """Writes ``workdir/init_from.json`` (process 0), which later resumes of the run keep."""
    write_json_atomic(Path(workdir) / RECORD_FILE, record)


__all__ = ["Plan", "plan", "load", "apply", "message", "has_checkpoints", "flat_params", "flat_state", "skip_prefixes",
           "param_path", "write_record", "RECORD_FILE"]
