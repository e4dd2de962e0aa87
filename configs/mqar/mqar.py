"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology", arXiv 2312.04927).

Usage: ``--config=configs/mqar/mqar.py:model=transformer,seq_len=64,scale=cpu``.

  * ``model``: a preset (``seqjax.config.PRESETS``) or any registry mixer name.
  * ``seq_len``, ``num_kv_pairs``, ``d_model``, ``lr``: one cell of the grid
    (empty: the scale's default; at paper scale ``num_kv_pairs`` follows
    ``seq_len`` as in the paper: 64→4, 128→8, 256→16, 512→64).
  * ``steps``: another training budget (empty: 1,000 at ``cpu``, 64 epochs at
    ``paper``). An explicit ``steps`` at ``cpu`` scale also evaluates every
    500 steps and stops above 0.99 held-out accuracy, Zoology's rule (as at
    ``paper`` scale): a budget long enough for attention to leave its plateau
    (about 3,000 steps at width 32) ends early for the mixers that solve the
    task and runs in full for those that do not. The name gains ``-s<steps>``.
  * ``scale=cpu``: seq_len 64, 4 pairs, vocab 64 (random filler), a 2-layer
    width-128 model without MLP (``mha``: 2 heads, RoPE), Adam 3e-3 (warm-up
    100, cosine), 1,000 steps of batch 64 on fresh examples; ``docs/mqar.md``
    has the measured accuracy and time on 2 CPU cores.
  * ``scale=paper``: Zoology's Figure 2 grid, from its public config
    (``zoology/experiments/paper_configs/iclr24_zoology_figure2/configs.py``)
    and trainer (``zoology/train.py``): vocab 8,192; (seq_len, pairs) =
    (64, 4), (128, 8), (256, 16), (512, 64) (the last is commented out in the
    public config); 2 layers, d_model 64/128/256/512, no MLP (the state mixer
    is the identity); attention with 1 head and learned absolute positions
    (other mixers get none); 100,000 training examples, 3,000 test; 64
    epochs of batch 512 (seq_len 64, 128), 256 (256) or 128 (512); AdamW
    (PyTorch's default weight decay 0.01), cosine decay to 0, no warm-up;
    learning rate swept over logspace(-4, -2, 4) = 1e-4, 4.6e-4, 2.2e-3, 1e-2
    (``lr=``; the paper reports the best); filler positions 0
    (``random_non_queries=False``); an evaluation after every epoch that
    stops the run once held-out accuracy is above 0.99 (``zoology/train.py``:
    ``early_stopping_threshold``; ``train.stop_at="accuracy>0.99"``). Not
    reproduced: Zoology's dropout (0.1 on the embeddings and on the attention
    weights; seqjax's ``model.dropout`` is residual dropout, left at 0), and
    its cosine steps once per epoch (here per step, over the same epochs).

``config.task`` holds every field of the ``mqar`` task (``docs/mqar.md``), so
each can be set on the command line, e.g. ``--config.task.num_kv_pairs=8``,
``--config.task.power_a=1.0``, ``--config.task.num_train_examples=100000``.
"""

import math
import pathlib

from seqjax.config import apply_model_preset, base_config, load_module, parse_arg
from seqjax.tasks.mqar import default_config as mqar_task_config

# Loaded by path: config files need no importable ``configs`` package.
number = load_module(pathlib.Path(__file__).with_name("_common.py")).number

DEFAULTS = {"model": "transformer", "seq_len": "", "num_kv_pairs": "", "d_model": "", "lr": "", "steps": "",
            "scale": "cpu"}
CPU_STEPS, CPU_EVAL_EVERY = 1000, 500
PAPER_PAIRS = {64: 4, 128: 8, 256: 16, 512: 64}
PAPER_BATCH = {64: 512, 128: 512, 256: 256, 512: 128}


def get_config(arg: str | None = None):
    """The MQAR config for ``arg`` (see the module docstring)."""
    args = parse_arg(arg, {"model": None, "seq_len": None, "num_kv_pairs": None, "d_model": None, "lr": None,
                           "steps": None, "scale": ["cpu", "paper"]}, DEFAULTS)
    paper = args["scale"] == "paper"
    seq_len = number(args, "seq_len", int, 64)
    pairs = number(args, "num_kv_pairs", int, PAPER_PAIRS.get(seq_len, seq_len // 8) if paper else 4)
    config = base_config()

    t = config.task = mqar_task_config()
    t.kind = "mqar"
    t.seq_len, t.num_kv_pairs = seq_len, pairs
    t.vocab_size = 8192 if paper else 64
    t.power_a = 0.01
    t.random_fill = not paper
    t.num_train_examples = 100_000 if paper else 0
    t.eval_examples = 3000 if paper else 1000
    t.eval_batch_size = 32 if paper else 250
    t.eval_seed = 1234

    m = config.model
    m.num_layers, m.d_model = 2, number(args, "d_model", int, 128)
    m.input, m.vocab_size, m.head, m.causal = "tokens", t.vocab_size, "lm", True
    m.channel = "none"  # Zoology's blocks have no MLP (the state mixer is the identity)
    apply_model_preset(config, args["model"], num_heads=1 if paper else 2)
    attention = m.mixers == "mha"
    m.positions = "learned" if paper and attention else "none"
    if paper and attention:
        m.mixer_kwargs.mha.positions = "none"  # the paper's learned table instead of RoPE
    m.max_length = seq_len

    o = config.optim
    o.optimizer = "adamw"
    o.learning_rate = number(args, "lr", float, 2.2e-3 if paper else 3e-3)
    o.weight_decay = 0.01 if paper else 0.0
    o.warmup_steps = 0 if paper else 100
    o.schedule = "cosine"

    tr = config.train
    tr.batch_size = PAPER_BATCH.get(seq_len, 128) if paper else 64
    epoch = math.ceil(t.num_train_examples / tr.batch_size)
    tr.steps = number(args, "steps", int, 64 * epoch if paper else CPU_STEPS)
    tr.log_every = 100
    # Zoology evaluates after every epoch and stops above 0.99 held-out accuracy; a CPU run
    # with its own budget does the same every 500 steps (the 1,000-step table runs to the end).
    stops = paper or bool(args["steps"])
    tr.eval_every = epoch if paper else CPU_EVAL_EVERY if stops else 0
    tr.stop_at = "accuracy>0.99" if stops else ""
    tr.checkpoint_every = 2000 if paper else 500
    config.seed = 0
    # An explicit lr is part of the name: the paper's grid sweeps it, and each cell needs its own name.
    lr = f"-lr{o.learning_rate:g}" if args["lr"] else ""
    steps = f"-s{tr.steps}" if args["steps"] else ""
    config.name = f"mqar-{args['model']}-L{seq_len}-kv{pairs}-d{m.d_model}{lr}{steps}-{args['scale']}"
    return config
