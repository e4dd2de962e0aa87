"""Whole models with the length split over the ``sequence`` mesh axis equal the unsharded model.

Each model is built from config with ``model.sequence_axis="sequence"`` and run
twice on the same parameters: without a mesh (the mixers call their ops
directly) and inside ``seqjax.parallel.activate`` on a data x sequence mesh of
the 8 host devices (the mixers' cores run in ``shard_map`` on length shards:
ring attention, the sequence-parallel scans). Outputs and parameter gradients
must agree to float32 tolerance, with packed segments whose boundaries fall
inside and across shards.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models, parallel
from seqjax.errors import ConfigError

VOCAB, LENGTH, BATCH = 11, 32, 4

# Small widths; chunk sizes below the shard length so chunked paths cross chunks.
MIXER_KWARGS = {
    "mha": {"num_heads": 2},
    "mamba": {"d_state": 4, "chunk_size": 4, "impl": "chunked"},
    "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4},
    "s5": {"d_state": 8},
    "gla": {"num_heads": 2, "chunk_size": 4},
    "gated_deltanet": {"num_heads": 2, "chunk_size": 4},
    "mom": {"num_heads": 2, "num_memories": 3, "top_k": 2, "chunk_size": 4},
}


def _model(name, **extra):
    cfg = models.default_config()
    cfg.mixers, cfg.vocab_size, cfg.d_model, cfg.num_layers = name, VOCAB, 16, 1
    cfg.mixer_kwargs = {name: MIXER_KWARGS[name]}
    cfg.sequence_axis = "sequence"
    for k, v in extra.items():
        setattr(cfg, k, v)
    return models.build(cfg)


def _inputs(rng):
    x = jnp.asarray(rng.integers(0, VOCAB, (BATCH, LENGTH)), jnp.int32)
    # Segment starts at 5 and 13 (inside shards) and 24 (a shard boundary for P=4 and P=8).
    seg = np.zeros((BATCH, LENGTH), np.int32)
    for start in (5, 13, 24):
        seg[:, start:] += 1
    seg[1] = 0  # one row without boundaries
    return x, jnp.asarray(seg)


def _run(model, params, x, seg):
    def loss(p):
        y = model.apply(p, x, segment_ids=seg)
        return jnp.mean(jnp.sin(y) * y), y  # not a plain sum: gradients differ per position

    (_, y), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return y, g


def _max_rel(a, b):
    errs = [np.abs(np.asarray(u) - np.asarray(v)).max() / (np.abs(np.asarray(u)).max() + 1e-12)
            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return max(errs)


# mha splits the length over all 8 devices (no batch axis); the others run on
# a data=2 x sequence=4 mesh (batch and length split).
MESHES = {"mha": {"data": 1, "sequence": 8}}


# Slow to compile on 2 cores (~1 min): the op's own test (tests/ops/test_delta_rule_sp.py) runs by default.
SLOW = {"gated_deltanet", "mom"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(MIXER_KWARGS)])
def test_sequence_sharded_model_equals_unsharded(name, rng):
    model = _model(name)
    x, seg = _inputs(rng)
    params = model.init(jax.random.key(int(rng.integers(1 << 30))), x)
    y0, g0 = _run(model, params, x, seg)
    mesh = parallel.make_mesh({**MESHES.get(name, {"data": 2, "sequence": 4}), "preset": "fsdp+sequence"})
    with parallel.activate(mesh, parallel.get_rules("fsdp+sequence")):
        y1, g1 = _run(model, params, x, seg)
        hlo = jax.jit(lambda p: model.apply(p, x, segment_ids=seg)).lower(params).as_text()
    # The mixers really ran on shards: their cores hold collectives over the sequence axis.
    assert "collective_permute" in hlo or "all_gather" in hlo, "no sequence-axis communication in the lowered model"
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), rtol=2e-5, atol=2e-5)
    assert _max_rel(g0, g1) < 2e-5, _max_rel(g0, g1)


def test_shards_that_ignored_each_other_would_be_caught(rng):
    """The comparison can fail: per-shard models (no ring) differ from the whole-sequence model."""
    model = _model("mha")
    x, _ = _inputs(rng)
    params = model.init(jax.random.key(4), x)
    apply = jax.jit(model.apply)
    whole = apply(params, x)
    # Shard 2 of 4 run alone is what a mixer that forgot the ring would compute there.
    alone = apply(params, x[:, 8:16])
    assert np.abs(np.asarray(whole[:, 8:16]) - np.asarray(alone)).max() > 1e-3


def test_length_not_divisible_names_the_axis(rng):
    model = _model("s5")
    x = jnp.asarray(rng.integers(0, VOCAB, (2, 30)), jnp.int32)
    params = model.init(jax.random.key(0), x)
    mesh = parallel.make_mesh({"data": 1, "sequence": 4, "preset": "fsdp+sequence"})
    with parallel.activate(mesh, parallel.get_rules("fsdp+sequence")):
        with pytest.raises(ConfigError, match=r"length 30 is not divisible by the 'sequence' mesh axis"):
            jax.jit(model.apply)(params, x)


def test_unsupported_mixer_and_cls_are_config_errors():
    cfg = models.default_config()
    cfg.mixers, cfg.vocab_size, cfg.sequence_axis = "lstm", VOCAB, "sequence"
    with pytest.raises(ConfigError, match=r"config.model.sequence_axis='sequence' but mixer 'lstm'.*allowed mixers: "
                                          r"deltanet, gated_deltanet, gla, mamba, mamba2, mha, mlp, mom, retnet, s5"):
        models.build(cfg)
    cfg.mixers, cfg.causal, cfg.head, cfg.num_classes, cfg.pooling = "mha", False, "classification", 2, "cls"
    with pytest.raises(ConfigError, match=r"pooling='cls'"):
        models.build(cfg)
    cfg.pooling, cfg.mixer_kwargs = "mean", {"mha": {"positions": "alibi"}}
    with pytest.raises(ConfigError, match=r"mixer_kwargs\.mha\.sequence_axis='sequence'.*alibi"):  # at build
        models.build(cfg)
