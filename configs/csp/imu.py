"""Continuous sequence-to-sequence prediction (HiSS, Bhirangi et al. 2024): sensor streams → chunk-rate targets.

Usage: ``--config=configs/csp/imu.py:model=hiss,scale=cpu`` (``dataset=`` for ``scale=paper``).

  * ``model`` (the paper's comparison): ``hiss`` (the registry's HiSS mixer:
    a low-level diagonal SSM per chunk of ``k = 10`` sensor samples, a
    high-level one over the chunk features, in every layer), ``hiss_net``
    (the authors' construction, ``config.model.architecture =
    "hierarchical"``: an S4D network per chunk, read at the chunk's last
    sample, and an S4D network over the chunk features), the flat SSMs
    ``s4d`` and ``mamba``, ``lstm`` and ``transformer`` (causal softmax
    attention with RoPE). Every model is causal, reads the sensor samples
    through a Dense read-in (``model.input = "continuous"``) and is read by
    a Dense regression head at each chunk's last sample (the task).
  * ``scale=cpu``: the generated IMU odometry task (``seqjax.data.imu_odometry``:
    3 IMU channels at 50 Hz → 2 displacement targets at 5 Hz, 32 targets =
    320 samples per sequence); every model 2 layers × d_model 64 with a channel
    MLP (ratio 2); Adam 1e-3 (warm-up 20, cosine), batch 16, 200 steps, one
    seed (sized to the shared 2-core machine: ~1 step/s); ``docs/csp.md`` has the measured numbers and times.
  * ``scale=paper`` (not run here: needs the data and an accelerator): a
    CSP-Bench dataset (``dataset=marker_writing|joystick_control|ronin|vector``)
    from ``$SEQJAX_DATA/csp_bench`` (the authors' ``DATA_DIR`` layout,
    ``seqjax.data.csp_bench``), with the optimiser settings of the authors'
    ``conf/config.yaml`` (Adam 1e-4, batch 4, no schedule; their 300 epochs
    are ``train.steps`` here, to be set from the dataset's size) and the
    model sizes of their ``conf/model/*.yaml``: S4 6 × 128 (here ``s4d``),
    Mamba 2 × 64, LSTM 2 × 128, Transformer 6 × 128 with 2 heads, dropout
    0.1; ``hiss``: 6 layers × 128 of this repository's HiSS mixer, which is
    not the authors' two-network HiSS (``docs/csp.md``).

``config.task`` holds every field of the ``csp`` task (``docs/csp.md``), e.g.
``--config.task.noise_std=0.3`` or ``--config.task.num_chunks=64``.
"""

import os

import ml_collections

from seqjax.config import apply_model_preset, base_config, parse_arg
from seqjax.tasks.csp import default_config as csp_task_config

MODELS = ["hiss", "hiss_net", "s4d", "mamba", "lstm", "transformer"]
DATASETS = ["marker_writing", "joystick_control", "ronin", "vector"]
DEFAULTS = {"model": "hiss", "scale": "cpu", "dataset": "ronin"}
# (input, target) widths per CSP-Bench dataset, from the authors' task code; None: the tactile arrays' widths
# are not established here, so --config.model.input_dim must give them (config.model.input_dim=None fails).
PAPER_DIMS = {"ronin": (6, 2), "vector": (6, 3), "marker_writing": (None, 2), "joystick_control": (None, 3)}
CHUNK = 10  # sensor samples per target: 50 Hz / 5 Hz, as every CSP-Bench file
# The authors' model sizes (conf/model/*.yaml): (layers, width, heads).
PAPER_SIZES = {"hiss": (6, 128, None), "hiss_net": (6, 128, None), "s4d": (6, 128, None), "mamba": (2, 64, None),
               "lstm": (2, 128, None), "transformer": (6, 128, 2)}


def get_config(arg: str | None = None):
    """The csp config for ``arg`` (see the module docstring)."""
    args = parse_arg(arg, {"model": MODELS, "scale": ["cpu", "paper"], "dataset": DATASETS}, DEFAULTS)
    paper = args["scale"] == "paper"
    model = args["model"]
    config = base_config()

    t = config.task = csp_task_config()
    t.eval_seed = 1234
    if paper:
        t.source, t.dataset = "csp_bench", args["dataset"]
        t.manual_dir = os.path.join(os.path.expanduser(os.environ.get("SEQJAX_DATA", "~/seqjax_data")), "csp_bench")
        t.eval_batch_size = 4
    else:
        t.source, t.chunk, t.num_chunks = "imu_odometry", CHUNK, 32
        t.eval_examples, t.eval_batch_size = 256, 64

    m = config.model
    m.input, m.input_dim = "continuous", 3  # the generated IMU's channels
    m.head, m.output_dim = "regression", 2
    if paper:
        m.input_dim, m.output_dim = PAPER_DIMS[args["dataset"]]
    m.causal = True
    m.positions = "none"  # mha applies RoPE itself; the recurrent models need no positions
    m.max_length = None if paper else CHUNK * t.num_chunks
    layers, width, heads = PAPER_SIZES[model] if paper else (2, 64, 4)
    m.num_layers, m.d_model = layers, width
    m.channel, m.mlp_ratio = "mlp", (4.0 if paper else 2.0)
    m.dropout = 0.1 if paper else 0.0
    apply_model_preset(config, "s4d" if model == "hiss_net" else model,
                       num_heads=heads if model == "transformer" else None)
    if model == "hiss":
        m.mixer_kwargs.hiss = dict(chunk_size=CHUNK)
    if model == "hiss_net":
        # The authors' two networks (seqjax.models.hierarchical): S4D per chunk, S4D over the chunk features.
        # cpu: 1 + 1 layers × 64 (the flat models' depth of 2); paper: their RoNIN HiSS (conf/ronin_hiss_config:
        # low S4 6 × 256, high S4 6 × 128, features 128).
        level = {k: m[k] for k in ("channel", "mlp_ratio", "dropout", "positions")}
        low, high, feature = ((6, 256), (6, 128), 128) if paper else ((1, 64), (1, 64), 64)
        config.model = ml_collections.ConfigDict(dict(
            architecture="hierarchical", chunk=CHUNK, input_dim=m.input_dim, output_dim=m.output_dim,
            feature_dim=feature, low=dict(level, mixers="s4d", num_layers=low[0], d_model=low[1]),
            high=dict(level, mixers="s4d", num_layers=high[0], d_model=high[1])))

    o = config.optim
    o.optimizer = "adam"
    o.weight_decay = 0.0
    if paper:
        o.learning_rate, o.warmup_steps, o.schedule = 1e-4, 0, "constant"
    else:
        o.learning_rate, o.warmup_steps, o.schedule = 1e-3, 20, "cosine"

    tr = config.train
    tr.steps = 30_000 if paper else 200
    tr.batch_size = 4 if paper else 16
    tr.log_every = 1000 if paper else 100
    tr.eval_every = 0
    tr.checkpoint_every = 5000 if paper else 100
    config.seed = 0
    source = f"csp-bench-{args['dataset'].replace('_', '-')}" if paper else "imu"
    config.name = f"csp-{source}-{model}-{args['scale']}"
    return config
