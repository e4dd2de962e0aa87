"""String transduction with an encoder–decoder: copy or reverse a string of symbols (CPU scale).

Usage: ``--config=configs/seq2seq/strings.py:kind=reverse,encoder=mha,decoder=mha,layout=encoder_decoder``.

  * ``kind``: ``reverse`` (Sutskever et al. 2014's test of a seq2seq model's
    long-range dependencies) or ``copy``.
  * ``encoder``: any registry mixer (run bidirectionally where it can be);
    ``decoder``: any causal registry mixer (the decoder's self-mixer).
  * The model (``config.model``, ``seqjax.models.encoder_decoder``): 2 encoder +
    2 decoder layers, d_model 64, 4 cross-attention heads, MLP ratio 4; sources
    of 1–8 symbols of 10; AdamW 3e-3 (warm-up 100, cosine, weight decay 0.01),
    batch 64, 2,000 steps (docs/models.md has the measured runs).
  * ``layout=decoder_only``: the comparison of Fu et al. 2023 ("Decoder-Only
    or Encoder-Decoder?"): a causal LM of 4 ``decoder`` layers (as many as
    the encoder–decoder's 2 + 2), d_model 64, reads source, BOS and target as
    one sequence (``seqjax.tasks.seq2seq``); ``encoder`` is unused.
  * Evaluation: 512 held-out strings, teacher-forced and greedy (free-running)
    token accuracy and exact match (``seqjax.tasks.seq2seq``).

There is no ``scale=paper``: the papers' translation tasks (WMT'14) need data
and compute this config does not pretend to.
"""

from seqjax.config import base_config, parse_arg
from seqjax.models.encoder_decoder import default_config as encdec_config
from seqjax.tasks.seq2seq import default_config as seq2seq_task_config

DEFAULTS = {"kind": "reverse", "encoder": "mha", "decoder": "mha", "layout": "encoder_decoder", "scale": "cpu"}
_MIXER_KWARGS = {"mha": {"num_heads": 4}, "mamba2": {"d_state": 16, "headdim": 16, "chunk_size": 8}}


def get_config(arg: str | None = None):
    """The seq2seq config for ``arg`` (see the module docstring)."""
    args = parse_arg(arg, {"kind": ["copy", "reverse"], "encoder": None, "decoder": None,
                           "layout": ["encoder_decoder", "decoder_only"], "scale": ["cpu"]}, DEFAULTS)
    config = base_config()
    t = config.task = seq2seq_task_config()
    t.kind, t.num_symbols, t.min_length, t.max_length = args["kind"], 10, 1, 8
    t.layout = args["layout"]
    t.eval_examples, t.eval_batch_size, t.eval_seed = 512, 128, 1234

    if args["layout"] == "encoder_decoder":
        m = config.model = encdec_config()
        m.encoder_mixers, m.decoder_mixers = args["encoder"], args["decoder"]
        m.num_encoder_layers = m.num_decoder_layers = 2
        m.d_model, m.num_heads = 64, 4
        m.mixer_kwargs = {"mamba2": _MIXER_KWARGS["mamba2"]}
    else:
        m = config.model
        m.mixers, m.num_layers, m.d_model, m.causal, m.head = args["decoder"], 4, 64, True, "lm"
        m.max_length = 2 * t.max_length + 1
        m.mixer_kwargs = {k: v for k, v in _MIXER_KWARGS.items() if k == args["decoder"]}
    m.vocab_size = t.num_symbols + 3

    o = config.optim
    o.optimizer, o.learning_rate, o.weight_decay = "adamw", 3e-3, 0.01
    o.warmup_steps, o.schedule = 100, "cosine"

    tr = config.train
    tr.steps = 2000
    tr.batch_size = 64
    tr.log_every = 100
    tr.eval_every = 0
    tr.checkpoint_every = 500
    config.seed = 0
    parts = [args["encoder"], args["decoder"]] if args["layout"] == "encoder_decoder" else ["lm", args["decoder"]]
    config.name = "-".join(["seq2seq", args["kind"], *parts])
    return config
