"""TFDS builder ``regbench``: RegBench prompts generated locally, stored as array_record.

Each example is one prompt of one DFA (train size = number of distinct
training DFAs, as in the paper's 625 … 40,000 sweep). Features:

- ``inputs``: int32 ``[l]`` = prompt[:-1]
- ``targets``: int32 ``[l]`` = prompt[1:]
- ``transitions``: int32 ``[num_states, 20]`` (−1 = no edge, state 0 =
  start), so metrics need only the example.

Splits ``train`` / ``validation`` / ``test``; the 500 held-out DFAs are split
in half (see :func:`seqjax.data.regbench.make_dfas`: for a given seed the
held-out DFAs do not depend on the train size). Prompt ``i`` of split ``s``
is sampled with ``np.random.default_rng([seed, s, i])``, so an example never
depends on how many others were generated; records are stored in generation
order (``disable_shuffling``), so record ``i`` can be regenerated from its
stored DFA (:func:`example_prompt`).

Configs: ``"625"``, ``"1250"``, ``"2500"``, ``"5000"`` (default),
``"10000"``, ``"20000"``, ``"40000"`` training DFAs with the paper's prompt
ranges and seed 0; :func:`make_config` builds any other (its name encodes
every parameter, so different settings never share a directory).

Working without TensorFlow (tfds 4.9.x, TF not installed):

- ``_info`` builds ``tfds.core.DatasetInfo`` directly; the usual
  ``dataset_info_from_configs`` reads package metadata files (a
  ``checksums.tsv``/``README`` folder next to the builder) and fails here.
- prepare with ``download_and_prepare(file_format="array_record")`` (the
  constructor defaults ``file_format`` to array_record too) and read with
  ``as_data_source(split)``: both use only numpy, protobuf and array_record.
  ``as_dataset`` (tf.data) is the one path that needs TF.
- ``code_path`` is overridden to this file: tfds' default resolves it via
  the ``importlib_resources`` backport (a lazy import, not installed here),
  and it is only used to look for a ``checksums.tsv`` next to the builder
  (there is none: no downloads).
- nothing is downloaded: ``_split_generators`` never touches ``dl_manager``,
  and tfds' GCS metadata lookup is disabled when TF is absent.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from seqjax.data import regbench as rb
from seqjax.data.builders._base import OfflineBuilder

PAPER_TRAIN_SIZES = (625, 1250, 2500, 5000, 10000, 20000, 40000)
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


class RegbenchConfig(tfds.core.BuilderConfig):
    """Parameters of one RegBench dataset.

    Attributes:
      num_train_dfas: distinct training DFAs (one prompt each).
      num_eval_dfas: held-out DFAs, split in half into validation / test.
      seed: seed of the DFAs and prompts.
      num_strings: inclusive range of strings per prompt.
      string_length: inclusive range of letters per string.
      max_chars: cap on the prompt length in tokens.
      num_states, alphabet_size, out_edges: ranges for ``sample_dfa``.
    """

    def __init__(self, *, num_train_dfas: int = 5000, num_eval_dfas: int = 500, seed: int = 0,
                 num_strings=(10, 19), string_length=(1, 49), max_chars: int = 4096,
                 num_states=(4, 12), alphabet_size=(4, 18), out_edges=(1, 3), **kwargs):
        kwargs.setdefault("version", tfds.core.Version("1.0.0"))
        super().__init__(**kwargs)
        self.num_train_dfas = int(num_train_dfas)
        self.num_eval_dfas = int(num_eval_dfas)
        self.seed = int(seed)
        self.num_strings = tuple(int(v) for v in num_strings)
        self.string_length = tuple(int(v) for v in string_length)
        self.max_chars = int(max_chars)
        self.num_states = tuple(int(v) for v in num_states)
        self.alphabet_size = tuple(int(v) for v in alphabet_size)
        self.out_edges = tuple(int(v) for v in out_edges)


# Paper configs are singletons: tfds rejects a config object that has the
# name of a registered one unless it IS that object.
_PAPER_CONFIGS: dict[str, RegbenchConfig] = {}
_PAPER_DEFAULTS = dict(num_eval_dfas=500, seed=0, num_strings=(10, 19), string_length=(1, 49), max_chars=4096,
                       num_states=(4, 12), alphabet_size=(4, 18), out_edges=(1, 3))


def make_config(num_train_dfas: int = 5000, *, num_eval_dfas: int = 500, seed: int = 0, num_strings=(10, 19),
                string_length=(1, 49), max_chars: int = 4096, num_states=(4, 12), alphabet_size=(4, 18),
                out_edges=(1, 3)) -> RegbenchConfig:
    """A config for any settings; the paper's settings get the paper config's name.

    Args:
      num_train_dfas: distinct training DFAs.
      num_eval_dfas: held-out DFAs (validation + test).
      seed: data seed.
      num_strings: inclusive range of strings per prompt.
      string_length: inclusive range of string lengths.
      max_chars: prompt cap in tokens.
      num_states: inclusive range of sampled states.
      alphabet_size: inclusive range of alphabet sizes.
      out_edges: inclusive range of out-edges per state.

    Returns:
      A :class:`RegbenchConfig` whose name encodes every parameter (for the
      paper's settings: the registered config object itself, e.g. ``"5000"``).
    """
    params = dict(num_eval_dfas=int(num_eval_dfas), seed=int(seed), num_strings=tuple(num_strings),
                  string_length=tuple(string_length), max_chars=int(max_chars), num_states=tuple(num_states),
                  alphabet_size=tuple(alphabet_size), out_edges=tuple(out_edges))
    if params == _PAPER_DEFAULTS and int(num_train_dfas) in PAPER_TRAIN_SIZES:
        name = str(int(num_train_dfas))
        if name not in _PAPER_CONFIGS:
            _PAPER_CONFIGS[name] = RegbenchConfig(name=name, num_train_dfas=num_train_dfas,
                                                  description="RegBench (see module docstring)", **params)
        return _PAPER_CONFIGS[name]
    else:
        r = lambda p: f"{p[0]}-{p[1]}"  # noqa: E731
        name = (f"n{int(num_train_dfas)}_e{params['num_eval_dfas']}_s{params['seed']}_k{r(num_strings)}"
                f"_l{r(string_length)}_c{params['max_chars']}_q{r(num_states)}_a{r(alphabet_size)}_o{r(out_edges)}")
    return RegbenchConfig(name=name, num_train_dfas=num_train_dfas, description="RegBench (see module docstring)",
                          **params)


class Regbench(OfflineBuilder):
    """RegBench prompts (Akyürek et al. 2024), generated locally.

    Attributes:
      VERSION: dataset version.
      BUILDER_CONFIGS: the paper's train sizes with the paper's prompt ranges.
      DEFAULT_BUILDER_CONFIG_NAME: ``"5000"``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [make_config(n) for n in PAPER_TRAIN_SIZES]
    DEFAULT_BUILDER_CONFIG_NAME = "5000"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="RegBench: prompts of strings from random DFAs (in-context language learning).",
            features=tfds.features.FeaturesDict({
                "inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "targets": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "transitions": tfds.features.Tensor(shape=(None, rb.VOCAB_SIZE), dtype=np.int32),
            }),
            supervised_keys=("inputs", "targets"),
            # Keep generation order: record i of a split is prompt i of DFA i,
            # so ``example_prompt`` can regenerate it (loaders shuffle anyway).
            disable_shuffling=True,
            homepage="https://arxiv.org/abs/2401.12973",
            citation="Akyürek, Wang, Kim, Andreas. In-Context Language Learning: Architectures and Algorithms. 2024.",
        )

    def _split_generators(self, dl_manager):
        # Local generation only: dl_manager is deliberately unused.
        del dl_manager
        c = self.builder_config
        train, val, test = rb.make_dfas(c.seed, c.num_train_dfas, c.num_eval_dfas, num_states=c.num_states,
                                        alphabet_size=c.alphabet_size, out_edges=c.out_edges)
        return {
            "train": self._generate_examples("train", train),
            "validation": self._generate_examples("validation", val),
            "test": self._generate_examples("test", test),
        }

    def _generate_examples(self, split: str, dfas):
        c = self.builder_config
        for i, dfa in enumerate(dfas):
            rng = np.random.default_rng([c.seed, _SPLIT_IDS[split], i])
            tokens = rb.sample_prompt(dfa, rng, num_strings=c.num_strings, string_length=c.string_length,
                                      max_chars=c.max_chars)
            yield i, {"inputs": tokens[:-1], "targets": tokens[1:], "transitions": dfa.transitions}


def example_prompt(config: RegbenchConfig, split: str, index: int, dfa: rb.DFA) -> np.ndarray:
    """Regenerates the stored prompt of example ``index`` from its DFA (for checks).

    Args:
      config: the builder config.
      split: ``"train"``, ``"validation"`` or ``"test"``.
      index: example index in the split (its tfds key).
      dfa: the example's DFA.

    Returns:
      int32 prompt tokens (``inputs`` + last target).
    """
    rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], index])
    return rb.sample_prompt(dfa, rng, num_strings=config.num_strings, string_length=config.string_length,
                            max_chars=config.max_chars)
