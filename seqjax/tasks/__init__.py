"""Tasks: each experiment family's data stream, loss and metrics (see ``base.py``).

``build(config.task)`` picks the task class by ``config.task.name``; the classes
are imported lazily so that importing one task never pulls in another's data
dependencies.
"""

import importlib

from seqjax.errors import ConfigError
from seqjax.tasks.base import Batch, DataIterator, Metrics, Task

_TASKS = {
    "csp": "seqjax.tasks.csp:CSPTask",
    "forecast": "seqjax.tasks.forecast:ForecastTask",
    "icl": "seqjax.tasks.icl:ICLTask",
    "icll": "seqjax.tasks.icll:ICLLTask",
    "lra": "seqjax.tasks.lra:LRATask",
    "mqar": "seqjax.tasks.mqar:MQARTask",
    "seq2seq": "seqjax.tasks.seq2seq:Seq2SeqTask",
    "video": "seqjax.tasks.video:VideoTask",
}


def names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_TASKS)


def build(task_config) -> Task:
    """Constructs the task named by ``task_config.name``.

    Args:
      task_config: ``config.task`` (an ml_collections ConfigDict with ``name``).

    Returns:
      The task instance.

    Raises:
      ConfigError: ``config.task.name`` is not a registered task.
    """
    name = task_config.get("name") if hasattr(task_config, "get") else None
    if name not in _TASKS:
        raise ConfigError(f"config.task.name={name!r} is not allowed; allowed: {', '.join(names())}")
    module, cls = _TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(task_config)


__all__ = ["Batch", "DataIterator", "Metrics", "Task", "build", "names"]
