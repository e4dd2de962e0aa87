"""Long-sequence time-series forecasting (Informer): ``python -m experiments.forecast``.

With no flags it trains the CPU-scale Informer (ProbSparse encoder with
distilling, masked ProbSparse decoder, d_model 64) on statsmodels' weekly CO₂
series (104-week history, 26-week horizon) and prints its standardised test
MSE / MAE beside the repeat-last-value and least-squares linear baselines.
``--config=configs/forecast/informer.py:model=...,dataset=...,scale=...`` picks
the model, the series and the scale; ``--config.x=y`` overrides any field,
e.g. ``--config.train.steps=100`` or ``--config.task.pred_len=52``.
"""

import sys

from experiments import _flags


def run_summary(results: dict) -> str:
    """What ``python -m experiments.forecast`` prints: the run, its test errors and the baselines'.

    Args:
      results: a run's ``results.json``.

    Returns:
      Two lines of text.
    """
    m = results["metrics"]
    cfg = results.get("config", {})
    lines = [f"{cfg.get('name', 'forecast run')} ({m['dataset']}, features {m['features']}, horizon "
             f"{m['pred_len']}, {m['num_windows']} {m['eval_split']} windows; standardised scale)",
             f"MSE {m['mse']:.4f}  MAE {m['mae']:.4f}   repeat-last MSE {m['baseline_mse']:.4f}  MAE "
             f"{m['baseline_mae']:.4f}"
             + (f"   linear MSE {m['linear_mse']:.4f}  MAE {m['linear_mae']:.4f}" if "linear_mse" in m else "")]
    return "\n".join(lines)


if __name__ == "__main__":
    _flags.main(sys.argv, "experiments.forecast", __doc__, "configs/forecast/informer.py:model=informer,scale=cpu",
                lambda: run_summary)
