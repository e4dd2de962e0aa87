"""How a run stops early: the divergence guard and SIGINT/SIGTERM.

:class:`DivergenceGuard` decides, from each step's loss and gradient norm,
whether training has diverged: a NaN/Inf loss or gradient norm, or a loss
above ``config.train.divergence_factor`` times a reference that follows the
run (:meth:`DivergenceGuard.limit`). Its history travels in the checkpoint
meta, so a resumed run decides exactly as an uninterrupted one.

:class:`StopRule` ends a run that has reached its goal: ``config.train.stop_at``
(``"accuracy>0.99"``) read at each evaluation of ``eval_every``, as Zoology
stops its MQAR runs above 0.99 validation accuracy; the run then finishes
normally at that step, without the remaining steps.

:class:`StopSignals` turns the first SIGINT or SIGTERM into a request that
the loop honours at the end of the current step (checkpoint, then
:class:`TrainingInterrupted`); a second signal of the same kind acts as it
would without the trainer (``KeyboardInterrupt``, or termination).
"""

import collections
import dataclasses
import math
import re
import signal
import threading
from typing import Any

import numpy as np

from seqjax.errors import ConfigError

# Losses in the running median: long enough that one noisy batch does not move
# it, short enough that a loss which falls over training is compared with its
# recent values.
MEDIAN_WINDOW = 100


class TrainingDiverged(RuntimeError):
    """Training diverged; the last good state was checkpointed and ``results.json`` says ``"diverged"``.

    Attributes:
      step: the updates in the last good state (the failing step's index).
      cause: what was seen, e.g. ``"loss is nan"``.
    """

    def __init__(self, message: str, *, step: int | None = None, cause: str | None = None):
        super().__init__(message)
        self.step, self.cause = step, cause


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a step; its state is checkpointed.

    Attributes:
      step: the updates in the checkpoint written.
      signum: the signal received.
    """

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted at step {step}; rerun the same command to resume")
        self.step, self.signum = step, signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by the signal: 128 + its number (130, 143)."""
        return 128 + self.signum


class DivergenceGuard:
    """Flags a NaN/Inf loss or gradient norm, or a loss far above where the run has been.

    The reference of the relative rule is the larger of the median of the
    last :data:`MEDIAN_WINDOW` losses and the run's first loss. The median
    alone would be over-sensitive once a loss approaches zero (a spike from
    1e-4 to 1); the first loss (an untrained model's) is a scale no healthy
    run exceeds ``factor`` times. The rule applies from the second step on,
    without a warm-up: the median of the losses so far lags a runaway loss
    (one growing 10x per step is caught at its 7th step), and not while the
    reference is <= 0.

    Attributes:
      factor: ``config.train.divergence_factor``; None or 0 turns the relative rule off.
    """

    def __init__(self, factor: float | None):
        self.factor = factor or None
        self._first: float | None = None
        self._window: collections.deque = collections.deque(maxlen=MEDIAN_WINDOW)

    def reference(self) -> float | None:
        """The loss scale the relative rule compares with, or None before the first loss."""
        if self._first is None:
            return None
        return max(float(np.median(self._window)), self._first)

    def limit(self) -> float:
        """The largest loss the next step may have (inf when the rule is off or has no positive reference).

        Rounded to float32, the dtype the step compares in, so that the host
        and the device agree on every loss.
        """
        ref = self.reference()
        # A reference <= 0 (a loss that can be negative) gives no scale to compare with.
        if self.factor is None or ref is None or ref <= 0:
            return math.inf
        return float(np.float32(self.factor * ref))

    def cause(self, loss: float, grad_norm: float, limit: float) -> str | None:
        """Why the step with this loss and gradient norm diverged, or None when it did not.

        Args:
          loss: the step's loss.
          grad_norm: the global norm of its gradient.
          limit: :meth:`limit` as it was passed to the step.

        Returns:
          A short phrase (``"loss is nan"``, ``"gradient norm is inf"``,
          ``"loss 5.8e+06 is above 1000 x its running median 3.3"``) or None.
        """
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        if loss > limit:
            return (f"loss {loss:.3g} is above config.train.divergence_factor={self.factor:g} x its "
                    f"running median {self.reference():.3g}")
        return None

    def add(self, loss: float) -> None:
        """Records an accepted step's loss."""
        if self._first is None:
            self._first = loss
        self._window.append(loss)

    def state(self) -> dict:
        """The history, for the checkpoint meta (JSON)."""
        return {"first": self._first, "window": list(self._window)}

    def set_state(self, state: dict | None) -> None:
        """Restores :meth:`state`'s history (None: a checkpoint from before the guard, start empty)."""
        if state:
            self._first = state["first"]
            self._window.clear()
            self._window.extend(state["window"])


STOP_AT_FORM = "'<eval metric><op><number>' with <op> one of >=, >, <=, < (e.g. 'accuracy>0.99'), or '' (never)"
_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


@dataclasses.dataclass(frozen=True)
class StopRule:
    """``config.train.stop_at``: stop once an evaluation's metric reaches a value.

    Attributes:
      text: the rule as written, e.g. ``"accuracy>=0.99"``.
      metric: the name in the task's evaluation metrics.
      op: ``">="``, ``">"``, ``"<="`` or ``"<"``.
      value: the threshold.
    """

    text: str
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text) -> "StopRule | None":
        """The rule of ``config.train.stop_at`` (None for ``""``/None); ConfigError naming the form otherwise."""
        if text is None or text == "":
            return None
        match = re.fullmatch(r"\s*([A-Za-z_][\w/.-]*)\s*(>=|>|<=|<)\s*(\S+)\s*", text) if isinstance(text, str) else None
        try:
            value = float(match.group(3)) if match else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"config.train.stop_at={text!r} must be {STOP_AT_FORM}")
        return cls(text=text.strip(), metric=match.group(1), op=match.group(2), value=value)

    def reached(self, metrics: dict) -> bool:
        """Whether ``metrics`` (one evaluation's) meets the rule; ConfigError when it lacks the metric."""
        if self.metric not in metrics:
            names = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
            raise ConfigError(f"config.train.stop_at={self.text!r}: the evaluation has no metric {self.metric!r}; "
                              f"allowed: {names}")
        got = float(metrics[self.metric])
        return _OPS[self.op](got, self.value)


class StopSignals:
    """SIGINT and SIGTERM, while the ``with`` block runs, only set :attr:`received`.

    Handlers are installed only in the main thread (Python delivers signals
    there); leaving the block puts the previous handlers back. A second
    signal of a kind already received runs that previous handler, so a
    second Ctrl-C still stops a run stuck in a long step.

    Attributes:
      received: the first signal's number, or None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, previous)
        if callable(previous):
            previous(signum, frame)
        else:
            signal.raise_signal(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                previous = signal.signal(signum, self._handle)
                # None: a handler not installed from Python; the default is the nearest.
                self._previous[signum] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


__all__ = ["DivergenceGuard", "StopRule", "StopSignals", "STOP_AT_FORM", "TrainingDiverged", "TrainingInterrupted", "MEDIAN_WINDOW"]
