"""In-context language learning on RegBench (Akyürek et al. 2024).

Usage: ``--config=configs/icll/regbench.py:model=mamba,train_dfas=1000,scale=cpu``.

  * ``model``: a preset (``seqjax.config.PRESETS``) or any registry mixer name,
    optionally with ``+ngram`` (one layer of n-gram heads first).
  * ``train_dfas``: number of training languages (the paper sweeps 625 …
    40,000; default 5,000 at paper scale, 40,000 at CPU scale).
  * ``scale=cpu``: short prompts (5–10 strings of 1–12 letters, ≤ 160
    tokens), a 2-layer width-64 model, 4,000 steps of batch 32 (128k prompts:
    each of the 40,000 training languages is seen ~3 times, so a model
    cannot fit them one by one; with the earlier 1,000 DFAs and 2,000 steps
    every model memorised them and none learned in context,
    ``docs/regbench.md``); 7–20 minutes per model on 2 cores (measured 2026-12-04).
  * ``scale=paper``: the paper's prompts (10–19 strings of 1–49 letters, up
    to 4,096 characters), 200 epochs of batch 32, AdamW 5e-4, weight decay
    0.1, cosine schedule. Depth and width are not in REFERENCES.md: 4 layers
    of width 256 here (check against the paper before quoting a comparison).

The dataset is generated locally into ``$SEQJAX_DATA/regbench`` (default
``~/seqjax_data``) on first use; nothing is downloaded.
"""

import os

from seqjax.config import apply_model_preset, base_config, parse_arg, positive_int_arg
from seqjax.tasks.icll import default_config as icll_task_config

DEFAULTS = {"model": "transformer", "train_dfas": "", "scale": "cpu"}


def get_config(arg: str | None = None):
    """The ICLL config for ``arg`` (see the module docstring)."""
    args = parse_arg(arg, {"model": None, "train_dfas": None, "scale": ["cpu", "paper"]}, DEFAULTS)
    paper = args["scale"] == "paper"
    config = base_config()
    num_train = positive_int_arg(args, "train_dfas", 5000 if paper else 40000, "training languages")

    t = config.task = icll_task_config()
    t.data_dir = os.path.join(os.path.expanduser(os.environ.get("SEQJAX_DATA", "~/seqjax_data")), "regbench")
    t.num_train_dfas = num_train
    t.seed = 0
    t.num_strings = (10, 19) if paper else (5, 10)
    t.string_length = (1, 49) if paper else (1, 12)
    t.max_length = 4096 if paper else 160
    t.eval_split = "test"
    t.eval_examples = 0 if paper else 250

    m = config.model
    m.num_layers, m.d_model = (4, 256) if paper else (2, 64)
    m.input, m.vocab_size = "tokens", 20
    m.head = "lm"
    m.causal = True
    m.positions = "none"
    apply_model_preset(config, args["model"], num_heads=4)
    m.max_length = t.max_length  # the model passes it to mixers with a max_length field

    o = config.optim
    o.optimizer = "adamw"
    o.learning_rate = 5e-4 if paper else 2e-3
    o.weight_decay = 0.1
    o.warmup_steps = 500 if paper else 100
    o.schedule = "cosine"

    tr = config.train
    tr.batch_size = 32
    tr.steps = (200 * num_train) // 32 if paper else 4000
    tr.log_every = 100
    tr.eval_every = 0
    tr.checkpoint_every = 2000 if paper else 1000
    config.seed = 0
    config.name = f"icll-{args['model']}-{num_train}-{args['scale']}"
    return config
