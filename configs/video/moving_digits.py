"""Next-frame video prediction: Moving Digits on CPU, Moving MNIST at the ConvS5 paper's model settings.

Usage: ``--config=configs/video/moving_digits.py:model=convs5,scale=cpu``.

  * ``model``: a preset (``seqjax.config.PRESETS``) or any registry mixer name
    (``transformer``: causal softmax attention with RoPE over the frames, each
    frame one token; ``convs5``: ConvS5 with frames as its 2-D state grid;
    ``lstm``: the registry's LSTM mixer over the flattened frames, the
    recurrent baseline of ``configs/tables/video.py``; ``convlstm``: ConvLSTM
    (Shi et al. 2015) on the same latent frames as ``convs5``, the
    convolutional recurrent baseline).
  * Wiring (both models): the frames are flattened to ``(b, T-1, H·W)``
    (``model.input = "continuous"``); the model's Dense read-in maps the
    ``H·W`` pixels to ``d_model`` and its regression head maps ``d_model``
    back to ``H·W`` pixels (frame ``t+1`` predicted at position ``t``). For
    ``convs5`` and ``convlstm`` ``d_model = h·w·U``: the read-in's output is
    read by the mixer as an ``h × w`` latent frame of ``U`` channels
    (``frame_height = h``, ``frame_width = w``).
  * ``scale=cpu``: Moving Digits (2 digits, 16×16, 20 frames, 10 context);
    ``convs5``: 2 layers, latent 16×16 × U = 4 (d_model 1,024), d_state 32,
    k_B = k_C = 3, MLP ratio 1; ``convlstm``: the same layout (2 layers,
    16×16 × 4, MLP ratio 1), kernel size 3, peepholes; other models: 2 layers,
    d_model 128, MLP ratio 4, 4 heads; Adam 1e-3 (warm-up 100, cosine), batch
    16, 1,000 steps;
    ``docs/video.md`` has the measured numbers on 2 CPU cores.
  * ``scale=paper`` (``convs5`` only; not run here): the model settings of the
    authors' Moving-MNIST configs as ``docs/mixers.md`` lists them: 16×16
    latent frames, U = 256, ``d_state`` (``ssm_size``) 256, 8 layers,
    k_B = k_C = 3, clip_eigs, Δ ∈ [0.001, 0.1], lr 1e-3, 300k steps, batch 8.
    Data: Moving MNIST's ``mnist_test_seq.npy`` from ``config.task.manual_dir``
    (default ``$SEQJAX_DATA/moving_mnist``, as the LRA archives'
    ``$SEQJAX_DATA/lra_manual``, so ``experiments.reproduce --table video
    --scale paper`` finds it; 64×64, 20 frames; the last 1,000 videos are the
    eval set).
    Not reproduced: the paper's convolutional encoder/decoder 64×64 → 16×16
    (here the Dense read-in of 4,096 pixels to 16·16·256 = 65,536 and the
    Dense head back, ~268M parameters each), its 300-frame training
    sequences on dynamically generated Moving MNIST, and the ``C_D``
    block of its layers (``channel = "none"``: no MLP between the layers).

``config.task`` holds every field of the ``video`` task (``docs/video.md``),
so each can be set on the command line, e.g. ``--config.task.context_frames=5``
or ``--config.task.rollout=false``.
"""

import os

from seqjax.config import apply_model_preset, base_config, parse_arg
from seqjax.errors import ConfigError
from seqjax.tasks.video import default_config as video_task_config

DEFAULTS = {"model": "convs5", "scale": "cpu"}
# The mixers that read the d_model row as an h × w latent frame of U channels.
FRAME_MODELS = ("convs5", "convlstm")


def get_config(arg: str | None = None):
    """The video config for ``arg`` (see the module docstring)."""
    args = parse_arg(arg, {"model": None, "scale": ["cpu", "paper"]}, DEFAULTS)
    paper = args["scale"] == "paper"
    convs5 = args["model"] == "convs5"
    if paper and not convs5:
        raise ConfigError(f"config argument model={args['model']!r} is not allowed with scale=paper; allowed: convs5 "
                          "(the paper setting is ConvS5's)")
    config = base_config()

    t = config.task = video_task_config()
    if paper:
        t.source, t.eval_examples, t.eval_batch_size = "moving_mnist", 1000, 8
        t.manual_dir = os.path.join(os.path.expanduser(os.environ.get("SEQJAX_DATA", "~/seqjax_data")), "moving_mnist")
        frame, frames = 64, 20  # the file's layout (mnist_test_seq.npy)
    else:
        t.source, t.num_digits, t.frame_size, t.num_frames, t.max_speed = "moving_digits", 2, 16, 20, 2
        t.eval_examples, t.eval_batch_size = 256, 64
        frame, frames = t.frame_size, t.num_frames
    t.context_frames = 10
    t.rollout = True
    t.eval_seed = 1234

    m = config.model
    m.input, m.input_dim = "continuous", frame * frame
    m.head, m.output_dim = "regression", frame * frame
    m.causal = True
    m.positions = "none"  # mha applies RoPE itself; the recurrent models need no positions
    m.max_length = frames - 1
    if args["model"] in FRAME_MODELS:
        latent, channels = 16, (256 if paper else 4)
        m.num_layers, m.d_model = (8 if paper else 2), latent * latent * channels
        m.channel = "none" if paper else "mlp"
        m.mlp_ratio = 1.0  # d_model is already 1,024 on CPU
        apply_model_preset(config, args["model"])
        if convs5:
            m.mixer_kwargs.convs5 = dict(frame_height=latent, frame_width=latent, d_state=256 if paper else 32,
                                         b_kernel_size=3, c_kernel_size=3, dt_min=0.001, dt_max=0.1,
                                         clip_eigs=paper)
        else:  # convlstm: the same latent frames, hidden channels = U (the output is H_t)
            m.mixer_kwargs.convlstm = dict(frame_height=latent, frame_width=latent, kernel_size=3, peephole=True)
    else:
        m.num_layers, m.d_model = 2, 128
        apply_model_preset(config, args["model"], num_heads=4)

    o = config.optim
    o.optimizer = "adam"
    o.learning_rate = 1e-3
    o.weight_decay = 0.0
    o.warmup_steps = 1000 if paper else 100
    o.schedule = "cosine"

    tr = config.train
    tr.steps = 300_000 if paper else 1000
    tr.batch_size = 8 if paper else 16
    tr.log_every = 1000 if paper else 100
    tr.eval_every = 0
    tr.checkpoint_every = 5000 if paper else 500
    config.seed = 0
    config.name = f"video-{t.source.replace('_', '-')}-{args['model']}-{args['scale']}"
    return config
