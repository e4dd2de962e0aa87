"""Reports of the recall synthetics (``seqjax.tasks.mqar``): what one run prints."""


def run_summary(results: dict) -> str:
    """What ``python -m experiments.mqar`` prints: the run, its accuracy at the scored positions and its CE."""
    m = results["metrics"]
    cfg = results.get("config", {})
    task = cfg.get("task", {})
    if m.get("kind", task.get("kind")) == "set_disjointness":
        setting = f"sets of {task.get('size_a', '?')} then {task.get('size_b', '?')}, answer={task.get('answer', '?')}"
    else:
        setting = f"{task.get('num_kv_pairs', '?')} key-value pairs in {task.get('seq_len', '?')} tokens"
    return "\n".join([
        f"{cfg.get('name', 'mqar run')} (mixers: {cfg.get('model', {}).get('mixers', '?')}; {setting})",
        f"accuracy {m['accuracy']:.4f}   sequence accuracy {m['sequence_accuracy']:.4f}   CE {m['ce']:.4f}   "
        f"({m['num_positions']} scored positions in {m['num_examples']} held-out examples)",
    ])
