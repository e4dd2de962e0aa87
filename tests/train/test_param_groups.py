"""Tests of seqjax.models.param_groups: the groups come from the model's structure and the mixers' declarations.

The oracle is the rule ``seqjax.train.optim`` used before (a global table of
leaf names), copied here: on every registered mixer the new labels must equal
it, and one case shows where the name rule was wrong.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from seqjax import mixers, models
from seqjax.models import param_groups
from seqjax.models.param_groups import GROUPS, param_labels

# --- the former rule (seqjax/train/optim.py before param_groups), verbatim ------------

_OLD_SSM_PARAMS = {"A_log", "dt_bias", "log_step", "Lambda_log_re", "Lambda_im", "Lambda_re", "P", "B", "nu_log",
                   "theta_log", "gamma_log", "B_re", "B_im"}
_OLD_NO_DECAY_NAMES = frozenset({"bias", "scale", "norm", "embedding", "D"})


def _old_leaf_name(path):
    for entry in reversed(path):
        if isinstance(entry, jax.tree_util.DictKey):
            return str(entry.key)
        if isinstance(entry, jax.tree_util.GetAttrKey) and entry.name != "value":
            return entry.name
    return None


def _old_group_of(name, ndim):
    if name in _OLD_SSM_PARAMS:
        return "ssm"
    if ndim <= 1 or name in _OLD_NO_DECAY_NAMES or (
            name is not None and (name.endswith("bias") or name.startswith("norm"))):
        return "no_decay"
    return "decay"


def old_param_labels(params):
    return jax.tree_util.tree_map_with_path(lambda p, x: _old_group_of(_old_leaf_name(p), len(x.shape)), params)


# --- models ------------------------------------------------------------------------

LENGTH = 8


def _config(mixer_pattern, num_layers=1, **fields):
    """A small model config: tokens in, learned positions (a table in ``embed``), LM head."""
    cfg = models.default_config()
    cfg.update(dict(mixers=mixer_pattern, num_layers=num_layers, d_model=16, vocab_size=11, max_length=LENGTH,
                    positions="learned"))
    names = models.layer_mixers(cfg)
    if any(models.bidirectional_only(n) for n in names):
        cfg.causal = False
    cfg.update(fields)
    return cfg


def _boxed_shapes(cfg):
    """The model's params, boxed, as ShapeDtypeStructs (no computation)."""
    model = models.build(cfg)
    pair = (2,) if cfg.head == "retrieval" else ()  # retrieval reads (batch, 2, length) document pairs
    if cfg.input == "tokens":
        x = jnp.zeros((1, *pair, LENGTH), jnp.int32)
    else:
        x = jnp.zeros((1, *pair, LENGTH, cfg.input_dim), jnp.float32)
    return jax.eval_shape(lambda k: model.init(k, x), jax.random.key(0))["params"]


def _flat(tree):
    return {"/".join(str(k.key) for k in p if isinstance(k, jax.tree_util.DictKey)): v
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_same_as_old(cfg, declared=None):
    """The labels equal the former name rule's; ``declared`` maps mixer-relative names to their declared group.

    A mixer newer than the name rule may declare leaves it never knew
    (``ssm_params`` / ``no_decay_params``); those must get the declared group.
    """
    boxed = _boxed_shapes(cfg)
    unboxed = nn.meta.unbox(boxed)
    new, old = _flat(param_labels(unboxed, cfg)), _flat(old_param_labels(unboxed))
    declared = declared or {}
    for k in new:
        relative = k.split("/mixer/")[1] if "/mixer/" in k else None
        if relative in declared:
            assert new[k] == declared[relative], (k, new[k], declared[relative])
            old[k] = new[k]
    assert new == old, {k: (new[k], old[k]) for k in new if new[k] != old[k]}
    # Boxed trees get the same labels, inside the same boxes.
    labels_boxed = param_labels(boxed, cfg)
    assert jax.tree_util.tree_structure(labels_boxed) == jax.tree_util.tree_structure(boxed)
    assert _flat(nn.meta.unbox(labels_boxed)) == new
    return new


@pytest.mark.parametrize("mixer", mixers.names())
def test_labels_equal_the_former_name_rule_for_every_mixer(mixer):
    declared = {**{n: "no_decay" for n in param_groups.no_decay_params(mixer)},
                **{n: "ssm" for n in param_groups.ssm_params(mixer)}}
    labels = _assert_same_as_old(_config(mixer), declared)
    assert set(labels.values()) <= set(GROUPS)
    declared = param_groups.ssm_params(mixer)
    got_ssm = {k.split("/mixer/")[1] for k, v in labels.items() if v == "ssm"}
    # Every declared name is a parameter of that mixer (a typo would silently decay it).
    assert got_ssm == set(declared), (got_ssm, declared)
    assert labels["embed/embedding"] == labels["embed/positions/embedding"] == "no_decay"


@pytest.mark.parametrize(
    "pattern,layers,fields",
    [
        ("mamba,mha,s5,lru", 4, {}),  # a hybrid: each layer reads its own mixer's declarations
        ("mha", 1, {"mixer_kwargs": {"mha": {"positions": "learned"}}}),  # mha's own position table
        ("sliding_window", 1, {"mixer_kwargs": {"sliding_window": {"positions": "learned"}}}),
        ("s4d", 1, {"input": "continuous", "input_dim": 3, "head": "regression"}),  # read_in is a decayed matrix
        ("hydra,mha", 2, {"head": "classification", "num_classes": 3, "pooling": "cls"}),  # CLS vector
        ("gru", 2, {"channel": "glu", "norm": "rmsnorm"}),
        ("s4", 1, {"head": "retrieval", "num_classes": 2, "causal": False}),
    ],
)
def test_labels_equal_the_former_name_rule_for_variants(pattern, layers, fields):
    labels = _assert_same_as_old(_config(pattern, layers, **fields))
    if fields.get("input") == "continuous":
        assert labels["embed/read_in/kernel"] == "decay"
    if "mixer_kwargs" in fields:
        assert labels["backbone/block_0/mixer/pos_embedding/embedding"] == "no_decay"


# Mixers whose declared no-decay parameters exist only in a non-default kind.
KIND_WITH_DECLARED = {"mom": {"memory": "gla"}}


def test_declared_no_decay_names_are_parameters():
    """The no_decay declarations name real parameters of rank > 1 (else the rank rule would do)."""
    for name in mixers.names():
        declared = param_groups.no_decay_params(name)
        if not declared:
            continue
        kwargs = dict(KIND_WITH_DECLARED.get(name, {}))
        if "positions" in {f for f in mixers.get(name).__dataclass_fields__}:
            kwargs["positions"] = "learned"
        cfg = _config(name, mixer_kwargs={name: kwargs} if kwargs else {})
        shapes = _flat(nn.meta.unbox(_boxed_shapes(cfg)))
        mixer = {k.split("/mixer/")[1]: v for k, v in shapes.items() if "/mixer/" in k}
        for relative in declared:
            assert relative in mixer and len(mixer[relative].shape) > 1, (name, relative)


def test_a_B_outside_an_ssm_mixer_is_not_ssm():
    """The former rule matched leaf names anywhere: a LoRA adapter's ``B`` (or any ``B``) became "ssm".

    It then trained with ``ssm_learning_rate`` and without weight decay. The new
    rule only looks for ``B`` inside the layers whose mixer declares it.
    """
    cfg = _config("s5,mha", 2)
    params = dict(nn.meta.unbox(_boxed_shapes(cfg)))
    d, rank = 16, 4
    params["adapter"] = {"A": jax.ShapeDtypeStruct((d, rank), jnp.float32),
                         "B": jax.ShapeDtypeStruct((rank, d), jnp.float32)}
    # A parameter called like an SSM's inside a layer whose mixer is not that SSM.
    block1 = dict(params["backbone"]["block_1"])
    block1["mixer"] = {**block1["mixer"], "P": jax.ShapeDtypeStruct((d, d), jnp.float32)}
    params["backbone"] = {**params["backbone"], "block_1": block1}
    old, new = _flat(old_param_labels(params)), _flat(param_labels(params, cfg))
    assert old["adapter/B"] == "ssm" and new["adapter/B"] == "decay"
    assert old["backbone/block_1/mixer/P"] == "ssm" and new["backbone/block_1/mixer/P"] == "decay"
    assert new["backbone/block_0/mixer/B"] == old["backbone/block_0/mixer/B"] == "ssm"  # s5's own B
    assert {k: v for k, v in new.items() if k not in ("adapter/B", "backbone/block_1/mixer/P")} == \
        {k: v for k, v in old.items() if k not in ("adapter/B", "backbone/block_1/mixer/P")}


def test_layers_from_a_built_model():
    """labeler(layers=layer_names(model)) (what run() uses) equals param_labels(params, config.model)."""
    cfg = _config("s5,mha,mamba", 3)
    model = models.build(cfg)
    assert param_groups.layer_names(model) == tuple(models.layer_mixers(cfg))
    params = nn.meta.unbox(_boxed_shapes(cfg))
    by_model = param_groups.labeler(layers=param_groups.layer_names(model))(params)
    assert by_model == param_labels(params, cfg)
    assert param_groups.layer_names(nn.Dense(3)) == ()


def test_without_a_model_config_only_rank_and_embedding_rules():
    """A custom model (no mixer layers in the config): nothing is "ssm", however it is named."""
    params = {"embed": {"embedding": jnp.zeros((5, 4))}, "A_log": jnp.zeros((4, 2)), "bias": jnp.zeros(4),
              "dense": {"kernel": jnp.zeros((4, 4))}}
    assert param_labels(params, None) == {"embed": {"embedding": "no_decay"}, "A_log": "decay", "bias": "no_decay",
                                          "dense": {"kernel": "decay"}}


def test_train_package_holds_no_parameter_names():
    """seqjax/train/ names no parameter: the groups come from the models package."""
    from pathlib import Path

    import seqjax.train

    names = set(_OLD_SSM_PARAMS) | {"embedding", "kernel", "scale", "A_log", "dt_bias", "read_in", "recurrent_bias"}
    for path in Path(seqjax.train.__file__).parent.glob("*.py"):
        text = path.read_text()
        found = sorted(n for n in names if f'"{n}"' in text or f"'{n}'" in text)
        assert not found, (path.name, found)


def _mixer_leaves(flat: dict) -> dict:
    """Leaves below a module named ``mixer``: path after it → group, per mixer path."""
    out = {}
    for path, group in flat.items():
        keys = path.split("/")
        if "mixer" in keys[:-1]:
            j = keys.index("mixer")
            out.setdefault("/".join(keys[:j + 1]), {})["/".join(k for k in keys[j + 1:] if k != "value")] = group
    return out


@pytest.mark.parametrize("arch", ["encoder_decoder", "informer", "hierarchical"])
def test_ssm_group_inside_the_other_architectures(arch):
    """An s4d mixer's dynamics are "ssm" inside an encoder–decoder, an Informer and a hierarchical model too."""
    from seqjax.experiment import load_config
    from seqjax.train.init_from import flat_params

    if arch == "encoder_decoder":
        cfg = load_config("configs/seq2seq/strings.py", "encoder=s4d,decoder=mha").model
        args, kw = (jnp.ones((1, 8), jnp.int32),), {"decoder_inputs": jnp.ones((1, 8), jnp.int32)}
    elif arch == "informer":
        cfg = load_config("configs/forecast/informer.py", "model=informer").model
        cfg.encoder_mixers, cfg.mixer_kwargs = "s4d", {}
        c = models.build(cfg).channels
        args, kw = (jnp.ones((1, 24, c)),), {"decoder_inputs": jnp.ones((1, 12, c))}
    else:
        cfg = load_config("configs/csp/imu.py", "model=hiss_net").model
        args, kw = (jnp.ones((1, 20, cfg.input_dim)),), {}
    model = models.build(cfg)
    params = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw))["params"])
    by_mixer = _mixer_leaves(flat_params(param_groups.labeler(layers=param_groups.layer_names(model))(params)))
    s4d = set(mixers.get("s4d").ssm_params)
    s4d_paths = [p for p, leaves in by_mixer.items() if set(leaves) >= s4d]
    assert len(s4d_paths) >= 2, by_mixer.keys()
    for path, leaves in by_mixer.items():
        expect = s4d if path in s4d_paths else set()
        assert {k for k, g in leaves.items() if g == "ssm"} == expect, path
