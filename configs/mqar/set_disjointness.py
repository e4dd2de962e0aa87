"""Set disjointness (Arora et al. 2024, "Just read twice", arXiv 2407.05483).

Usage: ``--config=configs/mqar/set_disjointness.py:model=mamba,size_a=4,size_b=16,scale=cpu``.

  * ``model``: a preset (``seqjax.config.PRESETS``) or any registry mixer name.
  * ``size_a``, ``size_b``: the sizes of the first and the second set (the
    paper's point: recurrent models need memory for the set that comes first).
  * ``answer``: ``element`` (default: the one shared element, the paper's
    synthetic) or ``label`` (do the sets share an element: YES/NO, balanced;
    one bit per example: at CPU scale it stayed at chance, 0.51 held-out
    accuracy after 5,000 steps).
  * ``scale=cpu``: sets of 4 and 16 (default), vocab 64, the MQAR CPU model
    (2 layers × 128, no MLP, ``mha`` with 2 heads), Adam 3e-3 (warm-up 100,
    cosine), 1,000 steps of batch 64 on fresh examples (``docs/mqar.md`` has
    the measured accuracy).
  * ``scale=paper``: the paper's synthetic from its public code
    (``synthetic/zoology/experiments/causal.py`` and ``synthetic/zoology/config.py``
    of HazyResearch/prefix-linear-attention): vocab 2,048; 20,000 training
    examples per (size_a, size_b) pair (the paper trains on 12 pairs at once,
    (4, 16) … (256, 4); one pair per run here), 1,000 test; 4 layers, 2 heads,
    no MLP; batch 128, 48 epochs; AdamW, weight decay 0.1, learning rate swept
    over 1e-4, 5e-4, 8e-4 (``lr=``, default 5e-4); d_model 128 (the paper sweeps
    36–128 for Based).

``config.task`` holds every field of the ``mqar`` task (``docs/mqar.md``).
"""

import math
import pathlib

from seqjax.config import apply_model_preset, base_config, load_module, parse_arg
from seqjax.tasks.mqar import default_config as mqar_task_config

# Loaded by path: config files need no importable ``configs`` package.
number = load_module(pathlib.Path(__file__).with_name("_common.py")).number

DEFAULTS = {"model": "transformer", "size_a": "4", "size_b": "16", "answer": "element", "lr": "", "scale": "cpu"}


def get_config(arg: str | None = None):
    """The set-disjointness config for ``arg`` (see the module docstring)."""
    args = parse_arg(arg, {"model": None, "size_a": None, "size_b": None, "answer": ["element", "label"],
                           "lr": None, "scale": ["cpu", "paper"]}, DEFAULTS)
    paper = args["scale"] == "paper"
    size_a, size_b = number(args, "size_a", int, 4), number(args, "size_b", int, 16)
    config = base_config()

    t = config.task = mqar_task_config()
    t.kind = "set_disjointness"
    t.size_a, t.size_b = size_a, size_b
    t.answer = args["answer"]
    t.seq_len = size_a + size_b + 3
    t.vocab_size = 2048 if paper else 64
    t.num_train_examples = 20_000 if paper else 0
    t.eval_examples = 1000
    t.eval_batch_size = 100 if paper else 250
    t.eval_seed = 1234

    m = config.model
    m.num_layers, m.d_model = (4, 128) if paper else (2, 128)
    m.input, m.vocab_size, m.head, m.causal = "tokens", t.vocab_size, "lm", True
    m.channel = "none"
    m.positions = "none"
    apply_model_preset(config, args["model"], num_heads=2)
    m.max_length = t.seq_len

    o = config.optim
    o.optimizer = "adamw"
    o.learning_rate = number(args, "lr", float, 5e-4 if paper else 3e-3)
    o.weight_decay = 0.1 if paper else 0.0
    o.warmup_steps = 0 if paper else 100
    o.schedule = "cosine"

    tr = config.train
    tr.batch_size = 128 if paper else 64
    tr.steps = 48 * math.ceil(t.num_train_examples / tr.batch_size) if paper else 1000
    tr.log_every = 100
    tr.eval_every = 0
    tr.checkpoint_every = 2000 if paper else 500
    config.seed = 0
    config.name = f"sd-{args['model']}-a{size_a}-b{size_b}-{t.answer}-{args['scale']}"
    return config
