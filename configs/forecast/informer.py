"""Long-sequence time-series forecasting: the Informer encoder–decoder, any mixer as its encoder, or no decoder.

Usage: ``--config=configs/forecast/informer.py:model=informer,dataset=co2,scale=cpu``.

  * ``model``: ``informer`` (ProbSparse self-attention in the encoder, with
    distilling, and masked ProbSparse in the decoder: the paper's model) or any
    registry mixer name: that mixer is the encoder (bidirectional where it can
    be) and the decoder's self-mixer (``mha`` when the mixer is
    bidirectional-only); ``mha`` is the full-attention encoder–decoder.
  * ``decoder``: ``yes`` (default; the generative decoder: ``label_len`` known
    values + ``pred_len`` zeros, one pass) or ``no`` (the decoder-less
    baseline: the encoder's last position → Dense to the whole horizon; e.g.
    ``model=lstm,decoder=no``).
  * ``dataset``: statsmodels' ``co2`` (weekly, default), ``elnino``
    (monthly), ``sunspots`` (yearly), ``macrodata`` (quarterly, 12 columns);
    at ``scale=paper`` the paper's ``ETTh1`` (default), ``ETTh2``, ``ETTm1``
    from ``$SEQJAX_DATA/informer`` (``config.task.manual_dir``; a missing
    file is one line naming it).
  * ``features``: ``S`` (univariate, default at CPU) or ``M`` (every column;
    default at paper scale and for ``macrodata``).
  * ``pred_len``: the horizon ("" = the dataset's default below).
  * ``scale=cpu``: windows per dataset (seq_len / label_len / pred_len):
    co2 104 / 52 / 26 (two years of weeks → half a year), elnino 48 / 24 / 12,
    sunspots 32 / 16 / 8, macrodata 16 / 8 / 4; d_model 64, 4 heads, 2 encoder
    + 1 decoder layers, MLP ratio 4, factor c = 5, dropout 0.05, Adam 1e-3
    (warm-up 50, cosine), batch 32, 600 steps; ``docs/forecast.md`` has the
    measured numbers on 2 CPU cores.
  * ``scale=paper`` (not run here; needs the CSV and an accelerator): the
    authors' ``main_informer.py`` defaults (d_model 512, 8 heads, 2 encoder + 1
    decoder layers, d_ff 2048 = MLP ratio 4, factor 5, dropout 0.05,
    distilling, timeF embedding, Adam 1e-4, batch 32, 6 epochs) and the
    (seq_len, label_len) of their ``scripts/ETTh1.sh`` for each ``pred_len``
    of the paper's grid {24, 48, 168, 336, 720}: multivariate (48, 48),
    (96, 48), (168, 168), (168, 168), (336, 336); univariate (720, 168),
    (720, 168), (720, 336), (720, 336), (720, 336). ETTh2 and ETTm1 use the
    same grid here (their scripts were not read). Departures: a cosine
    schedule (the authors halve the rate every epoch), no early stopping on
    the validation split (the authors' patience 3), one seed (the paper
    averages repeats).

The trainer passes the batch's ``decoder_inputs`` to the model
(``config.model.architecture = "informer"``).

``config.task`` holds every field of the ``forecast`` task (``docs/forecast.md``),
so each can be set on the command line, e.g. ``--config.task.pred_len=52``.
"""

import os

from seqjax import mixers
from seqjax.config import base_config, parse_arg, positive_int_arg
from seqjax.errors import ConfigError
from seqjax.models.informer import default_config as informer_config
from seqjax.tasks.forecast import default_config as forecast_task_config

DEFAULTS = {"model": "informer", "decoder": "yes", "dataset": "", "features": "", "pred_len": "", "scale": "cpu"}
CPU_DATASETS = ("co2", "elnino", "sunspots", "macrodata")
PAPER_DATASETS = ("ETTh1", "ETTh2", "ETTm1")
CPU_WINDOWS = {"co2": (104, 52, 26), "elnino": (48, 24, 12), "sunspots": (32, 16, 8), "macrodata": (16, 8, 4)}
"""seq_len, label_len, pred_len of each CPU dataset."""
PAPER_GRID = {"M": {24: (48, 48), 48: (96, 48), 168: (168, 168), 336: (168, 168), 720: (336, 336)},
              "S": {24: (720, 168), 48: (720, 168), 168: (720, 336), 336: (720, 336), 720: (720, 336)}}
"""(seq_len, label_len) per pred_len, from the authors' scripts/ETTh1.sh."""
PAPER_BATCH, PAPER_EPOCHS = 32, 6


def paper_steps(dataset: str, seq_len: int, pred_len: int) -> int:
    """Steps of ``PAPER_EPOCHS`` epochs of batch 32 over an ETT training segment (the last partial batch dropped)."""
    months = 12 * 30 * 24 * (4 if dataset == "ETTm1" else 1)
    return PAPER_EPOCHS * ((months - seq_len - pred_len + 1) // PAPER_BATCH)


def get_config(arg: str | None = None):
    """The forecasting config for ``arg`` (see the module docstring)."""
    args = parse_arg(arg, {"model": None, "decoder": ["yes", "no"], "dataset": None, "features": ["", "S", "M"],
                           "pred_len": None, "scale": ["cpu", "paper"]}, DEFAULTS)
    paper = args["scale"] == "paper"
    datasets = PAPER_DATASETS if paper else CPU_DATASETS
    dataset = args["dataset"] or datasets[0]
    if dataset not in datasets:
        raise ConfigError(f"config argument dataset={dataset!r} is not allowed with scale={args['scale']}; allowed: "
                          f"{', '.join(datasets)}")
    model = args["model"]
    if model != "informer" and model not in mixers.names():
        raise ConfigError(f"config argument model={model!r} is not allowed; allowed: informer or a mixer "
                          f"({', '.join(mixers.names())})")
    features = args["features"] or ("M" if paper or dataset == "macrodata" else "S")
    if paper:
        grid = PAPER_GRID[features]
        pred_len = positive_int_arg(args, "pred_len", 24, "forecast horizon")
        if pred_len not in grid:
            raise ConfigError(f"config argument pred_len={pred_len} is not allowed with scale=paper; allowed: "
                              f"{', '.join(map(str, grid))}")
        (seq_len, label_len) = grid[pred_len]
    else:
        seq_len, label_len, pred_len = CPU_WINDOWS[dataset]
        pred_len = positive_int_arg(args, "pred_len", pred_len, "forecast horizon")
    config = base_config()

    t = config.task = forecast_task_config()
    t.dataset, t.features = dataset, features
    t.seq_len, t.label_len, t.pred_len = seq_len, label_len, pred_len
    if paper:
        t.manual_dir = os.path.join(os.path.expanduser(os.environ.get("SEQJAX_DATA", "~/seqjax_data")), "informer")
    t.eval_split, t.eval_batch_size, t.linear_baseline = "test", 64, True

    m = config.model = informer_config()
    m.pred_len = pred_len
    m.channels = 7 if paper and features == "M" else (12 if dataset == "macrodata" and features == "M" else 1)
    if model == "informer":
        m.encoder_mixers = m.decoder_mixers = "probsparse"
    else:
        m.encoder_mixers = model
        m.decoder_mixers = "mha" if mixers.get(model).causality == "bidirectional" else model
    m.num_encoder_layers, m.num_decoder_layers = 2, (1 if args["decoder"] == "yes" else 0)
    m.d_model, m.num_heads = (512, 8) if paper else (64, 4)
    m.mlp_ratio, m.dropout, m.distil = 4.0, 0.05, True
    m.mixer_kwargs = {"probsparse": {"factor": 5.0}}

    o = config.optim
    o.optimizer = "adam"
    o.learning_rate = 1e-4 if paper else 1e-3
    o.weight_decay = 0.0
    o.warmup_steps = 0 if paper else 50
    o.schedule = "cosine"

    tr = config.train
    tr.batch_size = PAPER_BATCH
    tr.steps = paper_steps(dataset, seq_len, pred_len) if paper else 600
    tr.log_every = 100
    tr.eval_every = 0
    tr.checkpoint_every = 1000 if paper else 300
    config.seed = 0
    config.name = f"forecast-{dataset}-{features}-{pred_len}-{model}{'' if args['decoder'] == 'yes' else '-nodec'}-" \
                  f"{args['scale']}"
    return config
