"""The trainer: ``run(config, workdir)`` and the defaults of its config sections.

``seqjax.train`` owns the model's parameters, the optimiser (``optim``),
the train state (``state``), checkpoints (``checkpoint``) and metric writers
(``writers``); the task owns data, loss and metrics (``seqjax.tasks.base``).
See docs/training.md for the config fields, resuming and the files a run writes.
"""

from seqjax.train.loop import TrainingDiverged, default_config, run

__all__ = ["run", "default_config", "TrainingDiverged"]
