"""The tfds ``regbench`` builder: prepares offline as array_record and loads without TensorFlow."""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

import seqjax.data.builders  # noqa: F401  (registers the builders with tfds)
from seqjax.data import regbench as rb
from seqjax.data.builders.regbench import Regbench, example_prompt, make_config

TINY = dict(num_eval_dfas=6, seed=5, num_strings=(1, 3), string_length=(1, 6))


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("regbench builder touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    _no_network(mp)
    try:
        tfds.disable_progress_bar()
        config = make_config(20, **TINY)
        builder = tfds.builder("regbench", config=config, data_dir=str(tmp_path_factory.mktemp("tfds")))
        builder.download_and_prepare(file_format="array_record")
    finally:
        mp.undo()
    return builder, config


def test_registered_with_paper_configs(tmp_path):
    assert "regbench" in tfds.list_builders(with_community_datasets=False)
    names = [c.name for c in Regbench.BUILDER_CONFIGS]
    assert names == ["625", "1250", "2500", "5000", "10000", "20000", "40000"]
    assert Regbench.DEFAULT_BUILDER_CONFIG_NAME == "5000"
    assert make_config(5000).name == "5000" and make_config(5000, seed=1).name != "5000"
    # The paper's settings give the registered config object, which tfds accepts by identity.
    assert make_config(625) is Regbench.BUILDER_CONFIGS[0]
    assert Regbench(config=make_config(625), data_dir=str(tmp_path)).builder_config.name == "625"


def test_features_and_splits(prepared):
    builder, _ = prepared
    sizes = {split: len(builder.as_data_source(split)) for split in ("train", "validation", "test")}
    assert sizes == {"train": 20, "validation": 3, "test": 3}
    ex = builder.as_data_source("train")[0]
    assert set(ex) == {"inputs", "targets", "transitions"}
    for key in ex:
        assert ex[key].dtype == np.int32
    assert ex["inputs"].ndim == 1 and ex["transitions"].ndim == 2 and ex["transitions"].shape[1] == 20


def test_examples_reproducible_from_stored_transitions(prepared):
    builder, config = prepared
    expected = dict(zip(("train", "validation", "test"), rb.make_dfas(5, 20, 6)))
    keys = set()
    for split in ("train", "validation", "test"):
        src = builder.as_data_source(split)
        stored = []
        for i in range(len(src)):
            ex = src[i]
            np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])
            dfa = rb.DFA(ex["transitions"])
            np.testing.assert_array_equal(rb.minimize(dfa.transitions), dfa.transitions)  # canonical minimal
            prompt = example_prompt(config, split, i, dfa)
            if len(prompt) == 1:  # a one-letter prompt has nothing to predict
                assert ex["inputs"].size == ex["targets"].size == 0
            else:
                np.testing.assert_array_equal(ex["inputs"], prompt[:-1])
                np.testing.assert_array_equal(ex["targets"], prompt[1:])
            # Every letter target is a legal transition.
            legal = rb.legal_next(dfa, ex["inputs"])
            tgt = ex["targets"]
            assert legal[rb.scored(tgt), tgt[rb.scored(tgt)]].all()
            stored.append(dfa)
            keys.add(dfa.key())
        assert stored == expected[split]  # generation order is kept
    assert len(keys) == 26  # splits disjoint


def test_reuse_without_regenerating(prepared, monkeypatch):
    builder, config = prepared
    _no_network(monkeypatch)

    def fail(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(rb, "make_dfas", fail)
    again = Regbench(config=make_config(20, **TINY), data_dir=builder.data_dir_root)
    assert again.is_prepared()
    again.download_and_prepare(file_format="array_record")  # a no-op
    a, b = again.as_data_source("test")[1], builder.as_data_source("test")[1]
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
