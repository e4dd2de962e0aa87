"""Shared Long Range Arena config logic: one table of per-task facts and settings.

Every ``configs/lra/<task>.py`` is ``get_config(arg) = make("<task>", arg)``
with ``arg`` = ``model=<name>,scale=cpu|paper[,stage=scratch|pretrain|finetune][,steps=N]``
(``steps`` replaces the scale's training steps, warm-up a tenth of them; the
run's name gets ``-<N>steps``); it loads this file by path
(``seqjax.config.load_module``), so no ``configs`` package needs to be importable.

Paper settings (``scale=paper``), from the papers' public configs:

* ``transformer``: the LRA paper's configs (Tay et al. 2020, public
  ``lra_benchmarks/*/configs``): depth, width, heads, MLP width, batch, steps,
  weight decay, dropout, pooling. Their schedule is ``0.05 · warm-up ·
  rsqrt-decay``; seqjax has warm-up + cosine, so the peak rate here is the
  rsqrt schedule's peak ``0.05 / sqrt(warmup)`` (1.6e-3 with 1,000 warm-up
  steps, 5.6e-4 with 8,000), then cosine. Retrieval warms up for 8,000 of its
  5,000 steps, so its rate never peaks: there the warm-up spans the run and
  ends at 5/8 of that peak (the paper's ramp). Rotary positions replace
  learned ones (``mha``'s default).
* ``s4``, ``s4d`` (and ``lssl``): the S4 repository's LRA configs (HTTYH
  paper, also used by S4D): depth, width, d_state 64, dropout, lr, SSM lr
  0.001, weight decay, batch, epochs; bidirectional.
* ``s5``: the S5 paper's run scripts: depth, H, P (``d_state``), J
  (``blocks``), lr = ssm_lr_base · lr_factor, SSM lr, weight decay, dropout,
  batch, epochs; bidirectional.
* any other registry mixer (``mamba``, ``gla``, …): the S4 settings (no paper
  ran them on LRA with these exact settings; a documented choice).

Departures (all ``scale=paper``): the S4/S5 configs use BatchNorm (and S4's
ListOps/CIFAR post-norm); seqjax's backbone is pre-norm LayerNorm only, so
LayerNorm pre-norm is used everywhere. S5's ``half_glu2`` activation and its
C-initialisation are the ``s5`` mixer's own. Check these before quoting a
comparison with the papers' numbers.

CPU settings (``scale=cpu``) are small models on short or small data that
finish in minutes on 2 cores; ``lra_listops`` uses a shorter-length variant
(the issue allows it) generated locally; the archive-backed tasks read the
official archives from ``$SEQJAX_DATA/lra_manual`` and use fewer steps.
"""

import math
import os

from ml_collections import ConfigDict

from seqjax.config import NGRAM_SUFFIX, apply_model_preset, base_config, parse_arg, positive_int_arg
from seqjax.errors import ConfigError
from seqjax.tasks.lra import default_config as lra_task_config

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")

# task -> (builder, paper builder_config, paper max_length, train examples)
# Train sizes: ListOps 96k, IMDB 25k, AAN 147,086 pairs, CIFAR-10 45k (90%), Pathfinder 160k (80%).
FACTS = {
    "listops": ("lra_listops", None, 2048, 96_000),
    "text": ("lra_text", None, 4096, 25_000),
    "retrieval": ("lra_retrieval", None, 4000, 147_086),
    "image": ("lra_image", None, 1024, 45_000),
    "pathfinder": ("lra_pathfinder", "32_hard", 1024, 160_000),
    "pathx": ("lra_pathfinder", "128_hard", 16384, 160_000),
}

# LRA paper transformer: layers, width, heads, mlp, batch, steps, warmup, wd, dropout, pooling.
TRANSFORMER = {
    "listops": dict(layers=6, width=512, heads=8, mlp=2048, batch=32, steps=5000, warmup=1000, wd=0.1, dropout=0.1,
                    pooling="cls"),
    "text": dict(layers=4, width=256, heads=4, mlp=1024, batch=32, steps=20000, warmup=8000, wd=0.1, dropout=0.1,
                 pooling="cls"),
    "retrieval": dict(layers=4, width=128, heads=4, mlp=512, batch=32, steps=5000, warmup=8000, wd=0.1,
                      dropout=0.1, pooling="cls"),
    # CIFAR-10: 1 layer, width 32, 1 head, lr 5e-4 cosine, 200 epochs of batch 256, dropout 0.3.
    "image": dict(layers=1, width=32, heads=1, mlp=64, batch=256, steps=175 * 200, warmup=175, wd=0.0, dropout=0.3,
                  pooling="cls", lr=5e-4),
    # Pathfinder-32 transformer_base: 1 layer, width 128, 4 heads, mlp 128, batch 512, lr 1e-3 cosine, mean pool.
    "pathfinder": dict(layers=1, width=128, heads=4, mlp=128, batch=512, steps=312 * 200, warmup=312, wd=0.0,
                       dropout=0.2, pooling="mean", lr=1e-3),
    "pathx": dict(layers=1, width=32, heads=2, mlp=32, batch=64, steps=2500 * 200, warmup=2500, wd=0.0,
                  dropout=0.1, pooling="mean", lr=1e-3),
}

# S4 repository (HTTYH) LRA configs: layers, width, dropout, lr, ssm_lr, wd, batch, epochs, pooling.
S4 = {
    "listops": dict(layers=8, width=128, dropout=0.0, lr=0.01, ssm_lr=0.001, wd=0.05, batch=50, epochs=40),
    "text": dict(layers=6, width=256, dropout=0.0, lr=0.01, ssm_lr=0.001, wd=0.05, batch=16, epochs=32),
    "retrieval": dict(layers=6, width=256, dropout=0.0, lr=0.01, ssm_lr=0.001, wd=0.05, batch=64, epochs=20),
    "image": dict(layers=6, width=512, dropout=0.1, lr=0.01, ssm_lr=0.001, wd=0.05, batch=50, epochs=200),
    "pathfinder": dict(layers=6, width=256, dropout=0.0, lr=0.004, ssm_lr=0.001, wd=0.03, batch=64, epochs=200),
    "pathx": dict(layers=6, width=256, dropout=0.0, lr=0.0005, ssm_lr=0.0005, wd=0.05, batch=16, epochs=50),
}

# S5 run scripts: layers, H, P, J, dropout, lr (= ssm_lr_base * lr_factor), ssm_lr, wd, batch, epochs.
S5 = {
    "listops": dict(layers=8, width=128, P=16, J=8, dropout=0.0, lr=0.003, ssm_lr=0.001, wd=0.04, batch=50,
                    epochs=40),
    "text": dict(layers=6, width=256, P=192, J=12, dropout=0.1, lr=0.004, ssm_lr=0.001, wd=0.07, batch=50,
                 epochs=35),
    "retrieval": dict(layers=6, width=128, P=256, J=16, dropout=0.0, lr=0.002, ssm_lr=0.001, wd=0.05, batch=32,
                      epochs=20),
    "image": dict(layers=6, width=512, P=384, J=3, dropout=0.1, lr=0.0045, ssm_lr=0.001, wd=0.07, batch=50,
                  epochs=250),
    "pathfinder": dict(layers=6, width=192, P=256, J=8, dropout=0.05, lr=0.0045, ssm_lr=0.0009, wd=0.03, batch=64,
                       epochs=200),
    "pathx": dict(layers=6, width=128, P=256, J=16, dropout=0.0, lr=0.0018, ssm_lr=0.0006, wd=0.06, batch=32,
                  epochs=75),
}

# CPU scale: small data variants and models that finish in minutes on 2 cores.
# ListOps: 10k train trees of 100-300 tokens (the paper's are 500-2000).
CPU_DATA = {
    "listops": dict(builder_kwargs=dict(num_train=10_000, num_validation=1_000, num_test=1_000,
                                        min_length=100, max_length=300, seed=0), max_length=320),
    "text": dict(max_length=1024),
    "retrieval": dict(max_length=1024),
    "image": dict(max_length=1024),
    "pathfinder": dict(builder_kwargs=dict(size=32, difficulty="hard", num_examples=20_000, seed=0), max_length=1024),
    "pathx": dict(builder_kwargs=dict(size=64, difficulty="hard", num_examples=20_000, seed=0), max_length=4096),
}
CPU_MODEL = dict(layers=2, width=64, heads=4, batch=32, steps=3000, lr=2e-3, ssm_lr=1e-3, wd=0.05, dropout=0.0)
# Batch and steps per CPU task, so the slowest table model (transformer, then mamba) finishes a cell in
# under 20 minutes on 2 cores (train step, width 64, 2 layers, measured 2026-12-04: ListOps 320 tokens
# × 32: transformer 361 ms, mamba 446 ms, s4d 146 ms; Pathfinder-32 1,024 tokens × 16: transformer
# 869 ms, mamba 742 ms, s4d 247 ms). Pathfinder's 1,000 × 16 is one epoch of its 16k training images.
CPU_STEPS = {"listops": dict(batch=32, steps=2000), "pathfinder": dict(batch=16, steps=1000)}
DEFAULTS = {"model": "s4d", "scale": "cpu", "stage": "scratch", "steps": ""}

# Self-pretraining (Amos et al. 2023, "Never Train from Scratch"): ``stage=pretrain`` trains the
# backbone with a denoising objective on the task's own inputs (masked_lm: the LRA models are
# bidirectional) for half the run's steps; ``stage=finetune`` trains the classifier for the other
# half from those parameters (the table sets ``train.init_from`` to the pretrain cell's folder),
# so SPT and ``stage=scratch`` use the same total steps. Both stages add a mask id past the data's
# tokens to the vocabulary, so the embedding has one shape in both.
STAGES = ["scratch", "pretrain", "finetune"]


def _ssm_kwargs(base: str, d_state: int | None = None, blocks: int | None = None) -> dict:
    kw = {}
    if base in ("s4", "s4d", "lssl", "s5") and d_state is not None:
        kw["d_state"] = d_state
    if base == "s5" and blocks is not None:
        kw["blocks"] = blocks
    return {base: kw} if kw else {}


def make(task: str, arg: str | None) -> ConfigDict:
    """The LRA config of ``task`` for ``arg`` (``model=...,scale=...``).

    Args:
      task: one of :data:`TASKS`.
      arg: the config argument string.

    Returns:
      The full config (task, model, optim, train, mesh, seed, name).
    """
    args = parse_arg(arg, {"model": None, "scale": ["cpu", "paper"], "stage": STAGES, "steps": None}, DEFAULTS)
    steps = positive_int_arg(args, "steps", what="training steps; default: the scale's own")
    if task == "retrieval" and args["stage"] != "scratch":
        raise ConfigError(f"config argument stage={args['stage']!r} with retrieval: its examples are document "
                          "pairs and the pretraining objectives take one sequence; allowed: scratch")
    paper = args["scale"] == "paper"
    builder, builder_config, paper_length, train_size = FACTS[task]
    config = base_config()

    t = config.task = lra_task_config()
    t.dataset = builder
    t.builder_config = builder_config if paper else None
    t.builder_kwargs = None if paper else CPU_DATA[task].get("builder_kwargs")
    root = os.path.expanduser(os.environ.get("SEQJAX_DATA", "~/seqjax_data"))
    t.data_dir = os.path.join(root, "lra")
    t.manual_dir = os.path.join(root, "lra_manual")
    t.max_length = paper_length if paper else CPU_DATA[task]["max_length"]
    t.pixels = "tokens"
    t.eval_splits = ("validation", "test")
    t.eval_examples = 0 if paper else 1000
    t.eval_batch_size = 32

    base = args["model"].removesuffix(NGRAM_SUFFIX)
    m = config.model
    m.input, m.vocab_size = "tokens", 256 if task in ("image", "pathfinder", "pathx") else 257
    if task == "listops":
        m.vocab_size = 20  # the ListOps vocabulary (17 ids) with room to spare
    m.head = "retrieval" if task == "retrieval" else "classification"
    m.num_classes = 10 if task in ("listops", "image") else 2
    m.causal = False
    m.positions = "none"
    m.pooling = "mean"
    m.max_length = t.max_length

    o = config.optim
    o.optimizer = "adamw"
    o.schedule = "cosine"
    tr = config.train
    tr.log_every = 100
    tr.eval_every = 0
    if not paper:
        c = CPU_MODEL
        m.num_layers, m.d_model, m.dropout = c["layers"], c["width"], c["dropout"]
        apply_model_preset(config, args["model"], num_heads=c["heads"])
        m.mixer_kwargs = {**m.mixer_kwargs.to_dict(), **_ssm_kwargs(base, d_state=16)}
        o.learning_rate, o.ssm_learning_rate, o.weight_decay = c["lr"], c["ssm_lr"], c["wd"]
        o.warmup_steps = 200
        c = {**c, **CPU_STEPS.get(task, {})}
        tr.batch_size, tr.steps, tr.checkpoint_every = c["batch"], c["steps"], 500
    elif base == "transformer":
        c = TRANSFORMER[task]
        m.num_layers, m.d_model, m.dropout, m.pooling = c["layers"], c["width"], c["dropout"], c["pooling"]
        m.mlp_ratio = c["mlp"] / c["width"]
        apply_model_preset(config, args["model"], num_heads=c["heads"])
        peak, warmup = c.get("lr", 0.05 / math.sqrt(c["warmup"])), c["warmup"]
        if warmup > c["steps"]:
            # Retrieval: 8,000 warm-up steps in a 5,000-step run, so the LRA rate rises
            # linearly all run and ends at 5/8 of its peak: the same ramp, as a warm-up
            # over the whole run to that rate (seqjax's warm-up cannot outlast the run).
            peak, warmup = peak * c["steps"] / warmup, c["steps"]
        o.learning_rate, o.weight_decay, o.warmup_steps = peak, c["wd"], warmup
        tr.batch_size, tr.steps, tr.checkpoint_every = c["batch"], c["steps"], 5000
    else:
        c = S5[task] if base == "s5" else S4[task]
        m.num_layers, m.d_model, m.dropout = c["layers"], c["width"], c["dropout"]
        apply_model_preset(config, args["model"], num_heads=4)
        kwargs = _ssm_kwargs(base, d_state=c.get("P", 64), blocks=c.get("J"))
        m.mixer_kwargs = {**m.mixer_kwargs.to_dict(), **kwargs}
        o.learning_rate, o.ssm_learning_rate, o.weight_decay = c["lr"], c["ssm_lr"], c["wd"]
        steps_per_epoch = train_size // c["batch"]
        tr.batch_size, tr.steps = c["batch"], steps_per_epoch * c["epochs"]
        o.warmup_steps = steps_per_epoch  # one epoch, as the S4/S5 configs
        tr.checkpoint_every = 5000
    if steps:
        # A shorter (or longer) budget at the same settings: warm-up keeps its
        # tenth of the run (the CPU runs' 200 of 2,000), capped at the scale's own.
        tr.steps = steps
        o.warmup_steps = max(1, min(o.warmup_steps, steps // 10))
        tr.checkpoint_every = min(tr.checkpoint_every, steps)
    config.seed = 0
    stage = args["stage"]
    if stage != "scratch":
        _self_pretraining(config, stage)
    suffix = {"scratch": "", "pretrain": "+pretrain", "finetune": "+spt"}[stage]
    budget = f"-{steps}steps" if steps else ""
    config.name = f"lra-{task}-{args['model']}{suffix}-{args['scale']}{budget}"
    return config


def _self_pretraining(config: ConfigDict, stage: str) -> None:
    """Turns a from-scratch LRA config into its ``stage`` (``pretrain`` or ``finetune``) of self-pretraining."""
    t, m, tr = config.task, config.model, config.train
    # The mask id: ListOps' vocabulary (20) already has unused ids above its 17 tokens; byte/pixel
    # tasks (ids 0..255) get id 256 and one more embedding row.
    t.mask_token_id = m.vocab_size - 1 if t.dataset == "lra_listops" else m.vocab_size
    m.vocab_size = t.mask_token_id + 1
    tr.steps = tr.steps // 2
    config.optim.warmup_steps = min(config.optim.warmup_steps, tr.steps)
    if stage == "pretrain":
        t.objective = "masked_lm"
        m.head = "lm"
    else:
        tr.init_from_skip = "head"  # the LM head's (vocab) rows are not a classifier
