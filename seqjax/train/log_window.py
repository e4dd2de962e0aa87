"""Train metrics averaged over each log window, and throughput without the compile step.

The training loop (:mod:`seqjax.train.loop`) feeds every step's metrics and
wall time to a :class:`LogWindow`, which returns the values to log every
``log_every`` steps and the run's examples per second for ``results.json``.
"""

import numpy as np


class LogWindow:
    """Train metrics averaged over each log window, and throughput without the compile step.

    The first step a process runs includes compilation, so it is left out of
    the throughput (unless it is the only step); a log window made of that
    step alone reports its (slow) rate rather than none.
    """

    def __init__(self, *, first_step: int, steps: int, log_every: int, batch_size: int, tokens_per_example: int):
        self.first_step, self.steps, self.log_every = first_step, steps, log_every
        self.batch_size, self.tokens_per_example = batch_size, tokens_per_example
        self.timed_steps, self.timed_seconds = 0, 0.0
        self._metrics, self._steps, self._seconds = [], 0, 0.0

    def add(self, s: int, metrics: dict, seconds: float) -> dict | None:
        """Records step ``s`` (0-based) and returns the window's values when a log is due.

        Args:
          s: the step's index (the state then holds ``s + 1`` updates).
          metrics: the step's metrics (device scalars; ``lr`` among them).
          seconds: the step's wall time.

        Returns:
          None, or (at every ``log_every``-th update and the last) the window's
          means, the last ``lr``, ``examples_per_s`` and ``tokens_per_s``.
        """
        self._metrics.append(metrics)
        if s > self.first_step or self.steps - self.first_step == 1:
            self.timed_steps, self.timed_seconds = self.timed_steps + 1, self.timed_seconds + seconds
            self._steps, self._seconds = self._steps + 1, self._seconds + seconds
        elif (s + 1) % self.log_every == 0:
            self._steps, self._seconds = 1, seconds
        done = s + 1
        if done % self.log_every and done != self.steps:
            return None
        window = self._metrics
        values = {k: float(np.mean([float(m[k]) for m in window])) for k in window[-1] if k != "lr"}
        values["lr"] = float(window[-1]["lr"])
        ex_s = self.batch_size * self._steps / max(self._seconds, 1e-9)
        values.update(examples_per_s=ex_s, tokens_per_s=ex_s * self.tokens_per_example)
        self._metrics, self._steps, self._seconds = [], 0, 0.0
        return values

    def examples_per_s(self) -> float | None:
        """Examples per second over the timed steps, or None when none was timed."""
        if self.timed_steps == 0:
            return None
        return self.batch_size * self.timed_steps / max(self.timed_seconds, 1e-9)


__all__ = ["LogWindow"]
