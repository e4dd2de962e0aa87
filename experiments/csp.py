"""Continuous sequence-to-sequence prediction (HiSS, CSP-Bench): ``python -m experiments.csp``.

With no flags it trains the CPU-scale HiSS run (2 layers × 64 on the generated
IMU odometry task: 50 Hz IMU → 5 Hz planar displacements) and prints the MSE on
standardised targets (the paper's metric) against the train-mean and
linear-readout baselines.
``--config=configs/csp/imu.py:model=...,scale=...`` picks the model and scale;
``--config.x=y`` overrides any field, e.g. ``--config.train.steps=20`` or
``--config.task.manual_dir=/data/csp_bench``.
"""

import sys

from experiments import _flags


def run_summary(results: dict) -> str:
    """What ``python -m experiments.csp`` prints: the run, its MSE and the baselines.

    Args:
      results: a run's ``results.json``.

    Returns:
      Two lines of text.
    """
    m = results["metrics"]
    cfg = results.get("config", {})
    model = cfg.get("model", {})
    mixers = model.get("mixers") or "/".join(str(model.get(k, {}).get("mixers", "?")) for k in ("low", "high"))
    per = ", ".join(f"{v:.4f}" for v in m["mse_per_target"])
    return "\n".join([
        f"{cfg.get('name', 'csp run')} (mixers: {mixers}; {m['num_targets']} "
        f"targets of {m['num_examples']} held-out sequences)",
        f"MSE (standardised) {m['mse']:.4f} (per target {per})   train-mean baseline {m['baseline_mean_mse']:.4f}   "
        f"linear-readout baseline {m['baseline_linear_mse']:.4f}"])


if __name__ == "__main__":
    _flags.main(sys.argv, "experiments.csp", __doc__, "configs/csp/imu.py:model=hiss,scale=cpu", lambda: run_summary)
