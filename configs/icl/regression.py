"""In-context learning of function classes (Garg et al. 2022; Akyürek et al. 2022).

Usage: ``--config=configs/icl/regression.py:fc=linear,model=transformer,scale=cpu``.

  * ``fc``: the function class (``seqjax.data.icl.FUNCTION_CLASSES``).
  * ``model``: a preset (``seqjax.config.PRESETS``) or any registry mixer name.
  * ``scale=cpu``: d = 5, 11 points, a 3-layer width-64 model; Adam 3e-3, 4,500 steps of
    batch 128; ~7 minutes on 2 cores (the README's main command).
  * ``label_noise=p``: a fraction ``p`` of the in-context labels randomised,
    in training and evaluation (``task.train_label_noise`` and
    ``task.eval_label_noise``; Campbell et al.'s randomised-label experiment,
    docs/icl.md); the run's name gets ``-labelnoise<p>``.
  * ``scale=paper``: Garg et al.'s setting: d = 20, 41 points, 12 layers,
    width 256, 8 heads, batch 64, Adam 1e-4, 500k steps, curriculum d 5→20
    (+1 every 2,000 steps) and points 11→41 (+2 every 2,000).

``config.task`` holds every field of the ``icl`` task (``docs/icl.md``), so each
can be set on the command line: ``--config.task.ilwd_batch_size=0``,
``--config.task.baselines=least_squares,ridge``, ``--config.task.ridge_lambda=0.5``,
and the class's keyword arguments, e.g. ``fc=sliding_window`` with
``--config.task.task_kwargs.window=5``.
"""

from seqjax.config import apply_model_preset, base_config, parse_arg
from seqjax.errors import ConfigError
from seqjax.tasks.icl import default_config as icl_task_config

FUNCTION_CLASSES = [
    "linear", "sparse_linear", "noisy_linear", "quadratic", "linear_classification",
    "relu2nn", "decision_tree", "fourier", "sliding_window", "fourier_mixture",
    "linear_mixture", "class_mixture",
]  # fmt: skip
DEFAULTS = {"fc": "linear", "model": "transformer", "scale": "cpu", "label_noise": "0"}


def get_config(arg: str | None = None):
    """The ICL config for ``arg`` (see the module docstring)."""
    args = parse_arg(arg, {"fc": FUNCTION_CLASSES, "model": None, "scale": ["cpu", "paper"], "label_noise": None},
                     DEFAULTS)
    try:
        label_noise = float(args["label_noise"])
    except ValueError:
        raise ConfigError(f"config argument label_noise={args['label_noise']!r} must be a number in [0, 1]") from None
    paper = args["scale"] == "paper"
    config = base_config()
    dim, n_points = (20, 41) if paper else (5, 11)
    if args["fc"] in ("fourier", "fourier_mixture"):
        dim = 1  # a 1-d series of x[0] (Panwar et al.); more coordinates would be ignored noise

    t = config.task = icl_task_config(args["fc"])
    t.dim = dim
    t.n_points = n_points
    t.noise_std = 0.5 if args["fc"] == "noisy_linear" else 0.0
    # Campbell et al.'s randomised-label experiment: the same fraction in training and evaluation.
    t.train_label_noise = t.eval_label_noise = label_noise
    c = t.curriculum
    c.enabled, c.dim_start, c.dim_end, c.dim_inc = paper, min(5, dim), dim, 1
    c.points_start, c.points_end, c.points_inc, c.interval = 11, n_points, 2, 2000
    t.eval_batch_size = 1280 if paper else 640
    t.eval_seed = 1234

    m = config.model
    m.num_layers, m.d_model = (12, 256) if paper else (3, 64)
    m.input, m.input_dim = "continuous", dim
    m.head, m.output_dim = "regression", 1
    m.causal = True
    m.positions = "none"  # mha applies RoPE itself; recurrent models need no positions
    m.max_length = 2 * n_points
    apply_model_preset(config, args["model"], num_heads=8 if paper else 4)

    o = config.optim
    o.optimizer = "adam"
    # CPU: a short run wants a high rate; a 2,000-step sweep at batch 64 gave
    # error/d at 2d of 0.27 (1e-3) and 0.18 (3e-3).
    o.learning_rate = 1e-4 if paper else 3e-3
    o.weight_decay = 0.0
    o.warmup_steps = 1000 if paper else 200
    o.schedule = "constant" if paper else "cosine"

    tr = config.train
    # CPU: batch 128 gives ~1.25x the examples/s of batch 64 on 2 cores.
    tr.steps = 500_000 if paper else 4500
    tr.batch_size = 64 if paper else 128
    tr.log_every = 1000 if paper else 100
    tr.eval_every = 0
    tr.checkpoint_every = 5000 if paper else 1000
    config.seed = 0
    config.name = f"icl-{args['fc']}-{args['model']}-{args['scale']}"
    if label_noise:
        config.name += f"-labelnoise{args['label_noise']}"
    return config
