"""Meshes from config, logical-axis rules and presets, sharded parameter creation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from seqjax import models, parallel
from seqjax.errors import ConfigError
from seqjax.parallel import rules as rules_lib
from seqjax.train.state import boxed_param_shapes, make_init_fn, state_shardings

SP_MIXERS = ("mha", "mamba", "mamba2", "s5", "gla")


def _mesh(**sizes):
    preset = sizes.pop("preset", "fsdp")
    return parallel.make_mesh({"data": 1, **sizes, "preset": preset})


# --- mesh -------------------------------------------------------------------------


def test_mesh_axes_and_minus_one():
    mesh = parallel.make_mesh({"data": -1, "fsdp": 2, "sequence": 2, "tensor": 1, "preset": "fsdp+sequence"})
    assert mesh.axis_names == parallel.AXES and dict(mesh.shape) == {"data": 2, "fsdp": 2, "sequence": 2, "tensor": 1}
    assert parallel.make_mesh().shape["data"] == jax.device_count()  # default: data over every device
    assert parallel.make_mesh({"data": 2}).size == 2  # fewer devices than available: the first ones


@pytest.mark.parametrize(
    "section, message",
    [
        ({"data": -1, "fsdp": -1}, r"at most one axis may be -1"),
        ({"data": 3, "fsdp": 3}, r"config.mesh.data=3 x config.mesh.fsdp=3 needs 9 devices; 8 available"),
        ({"data": 0}, r"config.mesh.data=0 must be -1"),
        ({"data": -1, "fsdp": 3}, r"config.mesh.data=-1: the other axes \(3 devices\) do not divide the 8 devices"),
        ({"data": 1, "pipeline": 2}, r"config.mesh.pipeline is not a mesh field; allowed: data, fsdp"),
    ],
)
def test_bad_mesh_configs(section, message):
    with pytest.raises(ConfigError, match=message):
        parallel.make_mesh(section)


def test_presets_must_use_the_axes_the_mesh_splits():
    with pytest.raises(ConfigError, match=r"config.mesh.preset='tp' is not allowed; allowed: dp, fsdp, fsdp\+sequence"):
        parallel.get_rules("tp")
    with pytest.raises(ConfigError, match=r"config.mesh.sequence=2 but config.mesh.preset='fsdp' does not use .*"
                                          r"use one of: fsdp\+sequence"):
        parallel.check_preset("fsdp", {"data": 4, "fsdp": 1, "sequence": 2, "tensor": 1})
    with pytest.raises(ConfigError, match=r"config.mesh.fsdp=2 but config.mesh.preset='dp'"):
        parallel.check_preset("dp", {"data": 4, "fsdp": 2, "sequence": 1, "tensor": 1})
    for preset in parallel.PRESETS:  # an all-ones mesh suits every preset
        parallel.check_preset(preset, {"data": 8, "fsdp": 1, "sequence": 1, "tensor": 1} if preset == "dp" else
                              {"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1})


# --- logical -> mesh ------------------------------------------------------------------


def test_logical_to_spec_priority_divisibility_and_reuse():
    mesh = _mesh(data=2, fsdp=2, tensor=2, preset="fsdp+tensor")
    rules = parallel.get_rules("fsdp+tensor")
    # Dense (embed, mlp): mlp -> tensor first, then embed -> fsdp.
    assert parallel.logical_to_spec(("embed", "mlp"), (16, 64), mesh, rules) == P("fsdp", "tensor")
    # Activations: batch takes (data, fsdp), so embed cannot reuse fsdp.
    spec = parallel.logical_to_spec(("batch", "length", "embed"), (8, 4, 16), mesh, rules)
    assert spec == P(("data", "fsdp"), None, None)
    # A batch of 2 is split over data only; of 1 not at all.
    assert parallel.logical_to_spec(("batch", "length"), (2, 4), mesh, rules) == P("data", None)
    assert parallel.logical_to_spec(("batch", "length"), (1, 4), mesh, rules) == P(None, None)
    # Indivisible dims fall through to the next rule: heads=3 stays whole, embed takes fsdp.
    assert parallel.logical_to_spec(("heads", "embed"), (3, 16), mesh, rules) == P(None, "fsdp")
    assert parallel.logical_to_spec(None, (3, 5), mesh, rules) == P()
    # Size-1 axes are left out of specs.
    spec = parallel.logical_to_spec(("embed", "mlp"), (16, 64), _mesh(fsdp=1), parallel.get_rules("fsdp"))
    assert spec == P(None, None)


@pytest.mark.parametrize("name", SP_MIXERS)
def test_every_parameter_has_logical_names(name):
    """FSDP can only split what is named: every parameter of these models carries names."""
    cfg = models.default_config()
    cfg.mixers, cfg.vocab_size, cfg.d_model = name, 16, 32
    model = models.build(cfg)
    boxed = boxed_param_shapes(model, jnp.zeros((1, 8), jnp.int32))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct) or hasattr(x, "names"))
    unnamed = [leaf for leaf in leaves if not hasattr(leaf, "names")]
    assert not unnamed, f"{len(unnamed)} unnamed params in {name}"
    assert all(len(leaf.names) == len(leaf.value.shape) for leaf in leaves)


def _lm(name="mha", d=32):
    cfg = models.default_config()
    cfg.mixers, cfg.vocab_size, cfg.d_model, cfg.num_layers = name, 16, d, 2
    return models.build(cfg)


@pytest.mark.parametrize("preset, sizes, split_axis", [
    ("fsdp", {"fsdp": 8}, "fsdp"),
    ("fsdp+tensor", {"fsdp": 2, "tensor": 4}, "tensor"),
])
def test_params_are_created_sharded(preset, sizes, split_axis):
    model, tx = _lm(), optax.adam(1e-3)
    mesh = _mesh(**sizes, preset=preset)
    rules = parallel.get_rules(preset)
    x = jnp.zeros((1, 8), jnp.int32)
    init_fn = make_init_fn(model, tx)
    abstract = jax.eval_shape(init_fn, jax.random.key(0), x, None)
    specs = parallel.param_specs(boxed_param_shapes(model, x), mesh, rules)
    shardings = state_shardings(abstract, mesh, specs)
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(0), x, None)
    total = sum(p.size for p in jax.tree.leaves(state.params))
    per_device = sum(p.addressable_shards[0].data.size for p in jax.tree.leaves(state.params))
    # Nearly everything is split 8 ways (norm scales/biases of width 32 split too; only tiny leftovers whole).
    assert per_device < total / 6, (per_device, total)
    kernel = state.params["backbone"]["block_0"]["channel"]["wi"]["kernel"]  # (embed, mlp)
    assert split_axis in str(kernel.sharding.spec)
    # Adam's moments live exactly like their parameters; the step counter is replicated.
    mu = state.opt_state[0].mu["backbone"]["block_0"]["channel"]["wi"]["kernel"]
    assert mu.sharding == kernel.sharding
    assert state.step.sharding.is_fully_replicated
    # The values equal an unsharded init (same key): placement, not different numbers.
    plain = jax.jit(init_fn)(jax.random.key(0), x, None)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_never_holds_a_full_copy_on_one_device():
    """The compiled init's per-device output is the shard size: nothing materialises whole first."""
    model, tx = _lm(d=64), optax.adam(1e-3)
    mesh = _mesh(fsdp=8)
    x = jnp.zeros((1, 8), jnp.int32)
    init_fn = make_init_fn(model, tx)
    abstract = jax.eval_shape(init_fn, jax.random.key(0), x, None)
    specs = parallel.param_specs(boxed_param_shapes(model, x), mesh, parallel.get_rules("fsdp"))
    sharded = jax.jit(init_fn, out_shardings=state_shardings(abstract, mesh, specs)).lower(jax.random.key(0), x, None)
    replicated = jax.jit(init_fn, out_shardings=state_shardings(abstract, mesh)).lower(jax.random.key(0), x, None)
    mem_s = sharded.compile().memory_analysis()
    mem_r = replicated.compile().memory_analysis()
    assert mem_s.output_size_in_bytes < mem_r.output_size_in_bytes / 5
    assert mem_s.temp_size_in_bytes < mem_r.output_size_in_bytes / 2


def test_constrain_is_a_noop_without_a_mesh():
    x = jnp.arange(12.0).reshape(2, 3, 2)
    assert parallel.constrain(x, ("batch", "length", "embed")) is x


def test_tree_shardings_like_params_matches_paths_and_shapes():
    mesh = _mesh(fsdp=2)
    specs = {"a": {"kernel": P("fsdp", None)}, "b": P()}
    opt = {"mu": {"a": {"kernel": jnp.zeros((4, 3))}, "b": jnp.zeros(3)}, "count": jnp.zeros(())}
    out = rules_lib.tree_shardings_like_params(opt, specs, mesh)
    assert out["mu"]["a"]["kernel"].spec == P("fsdp", None)
    assert out["count"].spec == P() and out["mu"]["b"].spec == P()
