"""Models: ``config.model`` -> a Flax network of mixer blocks (see ``docs/models.md``).

The model config (its fields, every check, the mixers' kwargs) lives in
:mod:`seqjax.models.config`; the network in ``model.py`` (embeddings, the
backbone of mixer blocks, heads); optimiser groups of its parameters in
``param_groups.py``; the recurrent state per layer (bytes per sequence, from
the config alone) in ``state.py``; greedy and beam-search generation through
the mixers' ``step`` in ``decode.py``; the encoder–decoder (seq2seq) model,
its config and its decoding in ``encoder_decoder.py``
(``seqjax.models.encoder_decoder.build``). ``build``, ``validate``,
``check_length`` and ``check_build`` dispatch on ``config.model.architecture``
(``architectures.py``: ``"sequence"`` by default, ``"encoder_decoder"``).
"""

from seqjax.models.architectures import ARCHITECTURES, architecture, build, check_build, check_length, validate
from seqjax.models.backbone import Backbone, Block, channel_hidden
from seqjax.models.config import (
    bidirectional_only, causal_only, default_config, layer_mixers, mixer_kwargs, sequence_parallel_mixers)
from seqjax.models.decode import generate, init_caches
from seqjax.models.distil import Distil, distil_mask, distilled_length
from seqjax.models.encoder_decoder import EncoderDecoder, generate_seq2seq
from seqjax.models.heads import pool
from seqjax.models.model import SequenceModel
from seqjax.models.state import layer_state_sizes

__all__ = [
    "build", "default_config", "validate", "layer_mixers", "mixer_kwargs", "check_length", "check_build",
    "causal_only", "bidirectional_only", "sequence_parallel_mixers", "SequenceModel", "Backbone", "Block",
    "channel_hidden", "pool", "layer_state_sizes", "Distil", "distil_mask", "distilled_length", "generate",
    "init_caches", "EncoderDecoder", "generate_seq2seq", "ARCHITECTURES", "architecture",
]
