"""Next-frame video prediction (Moving Digits, Moving MNIST): ``python -m experiments.video``.

With no flags it trains the CPU-scale ConvS5 run (2 layers on 16×16 Moving
Digits, 20 frames) and prints the per-pixel errors on the frames after the
context, against the copy-last-frame baseline.
``--config=configs/video/moving_digits.py:model=...,scale=...`` picks the model
and scale; ``--config.x=y`` overrides any field, e.g.
``--config.train.steps=20`` or ``--config.task.manual_dir=/data/moving_mnist``.
"""

import sys

from experiments import _flags


def run_summary(results: dict) -> str:
    """What ``python -m experiments.video`` prints: the run, its teacher-forced and rollout errors and the baselines.

    Args:
      results: a run's ``results.json``.

    Returns:
      Two or three lines of text.
    """
    m = results["metrics"]
    cfg = results.get("config", {})
    lines = [f"{cfg.get('name', 'video run')} (mixers: {cfg.get('model', {}).get('mixers', '?')}; "
             f"{m['num_predicted_frames']} frames predicted per video, {m['num_examples']} held-out videos)",
             f"teacher-forced MSE {m['mse']:.5f}  MAE {m['mae']:.5f}   copy-last-frame MSE {m['baseline_mse']:.5f}  "
             f"MAE {m['baseline_mae']:.5f}"]
    if "rollout_mse" in m:
        lines.append(f"rollout MSE {m['rollout_mse']:.5f}  MAE {m['rollout_mae']:.5f}   repeat-last-context-frame "
                     f"MSE {m['baseline_rollout_mse']:.5f}")
    return "\n".join(lines)


if __name__ == "__main__":
    _flags.main(sys.argv, "experiments.video", __doc__, "configs/video/moving_digits.py:model=convs5,scale=cpu",
                lambda: run_summary)
