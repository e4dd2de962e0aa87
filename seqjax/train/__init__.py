"""The trainer: ``run(config, workdir)`` and the defaults of its config sections.

``seqjax.train`` owns the training run (``loop``: set-up, restore-or-init,
the loop, finish), its config sections (``config``), the optimiser
(``optim``; the parameter groups come from ``seqjax.models.param_groups``),
the train state (``state``), the jitted step (``step``), checkpoints
(``checkpoint``), the divergence guard and signal handling (``guards``),
``results.json`` (``results``) and metric writers (``writers``); the task owns data, loss
and metrics (``seqjax.tasks.base``). See docs/training.md for the config
fields, resuming and the files a run writes.
"""

from seqjax.train.checkpoint import CheckpointError
from seqjax.train.config import default_config
from seqjax.train.guards import TrainingDiverged, TrainingInterrupted
from seqjax.train.loop import run

__all__ = ["run", "default_config", "TrainingDiverged", "TrainingInterrupted", "CheckpointError"]
