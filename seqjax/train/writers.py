"""Metric writers: JSON lines, TensorBoard event files and a text log.

``workdir/metrics.jsonl``
  one JSON object per log call: ``{"step": int, "split": "train" | "eval", ...values}``.
``workdir/tb/events.out.tfevents.<time>.<host>.<pid>.<n>``
  TensorBoard scalars (tags ``split/name``), written by ``tensorboardX``'s
  ``SummaryWriter`` (pure Python and protobuf; no TensorFlow, no torch). It
  writes from a background thread and flushes every :data:`TB_FLUSH_SECONDS`,
  so a live TensorBoard lags by up to that much and a killed run loses at
  most that much of its event file (``metrics.jsonl`` is written at once and
  is what a resume trims). Each writer opens a new file; the name carries
  the process id and a counter because tensorboardX truncates an existing
  file of the same name, and two runs in one folder can start within the
  same second.
``workdir/train.log``
  human-readable lines (start, resume, divergence, end).

Only process 0 writes these files; the other processes of a multi-host run
get a :class:`NullWriter` with the same methods. Both writers are context
managers that close their files on exit.
"""

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter

_LOG = logging.getLogger("seqjax.train")

# Suffix of the event files this process opens (see the module docstring).
_EVENT_FILES = itertools.count()

TB_FLUSH_SECONDS = 10
"""How often tensorboardX's thread flushes the event file (its default, 120 s, hides a run's start)."""

# Events queued for that thread before a log call waits: a log writes about ten,
# so the loop never waits on the disk.
_TB_QUEUE = 1000


def _scalar(value: Any) -> float | None:
    """``value`` as a Python float when it is a real scalar, else None."""
    if isinstance(value, bool):
        return float(value)
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything non-numeric is just skipped
        return None
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        return None
    return float(arr)


def jsonable(value: Any) -> Any:
    """Converts NumPy/JAX scalars and arrays for ``json.dumps`` (NaN/Inf become strings).

    Args:
      value: a (nested) mapping, sequence, scalar or array.

    Returns:
      The same structure with plain Python values: ints, finite floats,
      ``"nan"``/``"inf"``/``"-inf"`` strings, lists for arrays, ``str(value)``
      for anything else.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, type(None), bool)):
        return value
    if isinstance(value, int):
        return value
    arr = np.asarray(value)
    if arr.shape == () and np.issubdtype(arr.dtype, np.integer):
        return int(arr)
    if arr.shape == () and np.issubdtype(arr.dtype, np.floating):
        f = float(arr)
        return f if math.isfinite(f) else str(f)
    if arr.dtype.kind in "biuf":
        return jsonable(arr.tolist())
    return str(value)


class MetricWriter:
    """Writes every log to ``metrics.jsonl``, TensorBoard and (for messages) ``train.log``.

    On resume (``resume_step`` given) lines of ``metrics.jsonl`` after that
    step, and a half-written last line left by a killed run, are dropped: the
    resumed run writes them again.

    Attributes:
      workdir: the run's directory.
      tensorboard: the ``tensorboardX.SummaryWriter`` of ``workdir/tb``.
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl_path = self.workdir / "metrics.jsonl"
        self._trim(resume_step or 0)
        self._jsonl = open(self._jsonl_path, "a")
        self._log = open(self.workdir / "train.log", "a")
        self.tensorboard = SummaryWriter(
            str(self.workdir / "tb"), max_queue=_TB_QUEUE, flush_secs=TB_FLUSH_SECONDS,
            filename_suffix=f".{os.getpid()}.{next(_EVENT_FILES)}")

    def _trim(self, keep_until: int) -> None:
        if not self._jsonl_path.exists():
            return
        kept = []
        for line in self._jsonl_path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= keep_until:
                kept.append(line)
        tmp = self._jsonl_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self._jsonl_path)

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        """Logs ``values`` at ``step`` under ``split`` ("train" / "eval").

        Args:
          step: the global step.
          split: the name of the split; TensorBoard tags are ``split/name``.
          values: metric name → value (non-scalar values go to JSON only).
        """
        record = {"step": int(step), "split": split, **jsonable(dict(values))}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        now = time.time()
        for name, value in values.items():
            f = _scalar(value)
            if f is not None:
                self.tensorboard.add_scalar(f"{split}/{name}", f, int(step), walltime=now)

    def message(self, text: str) -> None:
        """Appends a line to ``train.log`` and to the ``seqjax.train`` logger.

        Args:
          text: one line; a leading ``ERROR`` logs it at error level.
        """
        if text.startswith("ERROR"):
            _LOG.error(text)
        else:
            _LOG.info(text)
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self._log.flush()

    def close(self) -> None:
        """Closes every file (the event file after its queued events are written)."""
        for f in (self._jsonl, self._log):
            f.close()
        self.tensorboard.close()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullWriter:
    """The metric writer of processes other than 0: only process 0 writes the run's files."""

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        """Does nothing (see :meth:`MetricWriter.write`)."""
        del step, split, values

    def message(self, text: str) -> None:
        """Does nothing (see :meth:`MetricWriter.message`)."""
        del text

    def close(self) -> None:
        """Does nothing."""

    def __enter__(self) -> "NullWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_writer(workdir: str | os.PathLike, *, resume_step: int, primary: bool) -> MetricWriter | NullWriter:
    """The run's metric writer: a :class:`MetricWriter` on process 0, else a :class:`NullWriter`.

    Args:
      workdir: the run's directory.
      resume_step: the step the run starts from (later ``metrics.jsonl`` lines are dropped).
      primary: whether this is process 0.

    Returns:
      The writer; use it as a context manager.
    """
    return MetricWriter(workdir, resume_step=resume_step) if primary else NullWriter()


__all__ = ["MetricWriter", "NullWriter", "open_writer", "jsonable"]
