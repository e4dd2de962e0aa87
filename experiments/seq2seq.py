"""String transduction with an encoder–decoder: ``python -m experiments.seq2seq``.

With no flags it trains the CPU-scale reverse task (2 + 2 ``mha`` layers,
d 64, 2,000 steps; about a minute on 2 cores) and prints the teacher-forced
and greedy token accuracy and the exact-match rate on 512 held-out strings.
``--config=configs/seq2seq/strings.py:kind=copy,encoder=...,decoder=...``
picks the task and the mixers; ``--config.x=y`` overrides any field, e.g.
``--config.train.steps=200`` or ``--config.model.d_model=128``.
"""

import sys

from experiments import _flags


def run_summary(results: dict) -> str:
    """What ``python -m experiments.seq2seq`` prints: the run and its accuracies.

    Args:
      results: a run's ``results.json``.

    Returns:
      Two lines of text.
    """
    m = results["metrics"]
    model = results.get("config", {}).get("model", {})
    if model.get("architecture", "sequence") == "encoder_decoder":
        what = f"encoder {model.get('encoder_mixers', '?')} / decoder {model.get('decoder_mixers', '?')}"
    else:
        what = f"decoder-only LM ({model.get('mixers', '?')})"
    return (f"{m['kind']} task, {what}: {m['num_examples']} held-out strings, {m['num_positions']} "
            f"target tokens\n"
            f"teacher-forced token accuracy {m['token_accuracy']:.4f}  greedy token accuracy "
            f"{m['greedy_token_accuracy']:.4f}  exact match {m['exact_match']:.4f}  ce {m['ce']:.4f}")


if __name__ == "__main__":
    _flags.main(sys.argv, "experiments.seq2seq", __doc__, "configs/seq2seq/strings.py:kind=reverse,scale=cpu",
                lambda: run_summary)
