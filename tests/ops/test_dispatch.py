"""The ops' front door: one vocabulary, the registry, the auto table."""

import pytest

from seqjax.ops import dispatch


def test_every_op_registers_only_vocabulary_words():
    ops = ("linear_scan", "selective_scan", "ssd", "attention", "linear_attention", "fft_conv", "vandermonde_kernel")
    for op in ops:
        impls = dispatch.implementations(op)
        assert impls[0] == "auto" and len(impls) >= 3, (op, impls)
        assert set(impls) <= set(dispatch.VOCABULARY)
    for op in ("linear_scan", "selective_scan", "ssd", "attention", "linear_attention"):
        assert callable(dispatch.sequence_parallel(op))


def test_auto_resolves_on_cpu_as_documented():
    assert dispatch.resolve("linear_scan", "auto") == "sequential"  # ~3x associative on CPU
    # The per-position scan wins at every size on CPU (the 2**19 row is for other platforms).
    assert dispatch.resolve("selective_scan", "auto", state=2**19) == "sequential"
    assert dispatch.resolve("selective_scan", "auto", state=2**25) == "sequential"
    assert dispatch.resolve("ssd", "auto", length=64, chunk_size=64) == "reference"
    assert dispatch.resolve("ssd", "auto", length=65, chunk_size=64) == "chunked"
    assert dispatch.resolve("attention", "auto", scores=256 * 256 - 1) == "reference"
    assert dispatch.resolve("attention", "auto", scores=256 * 256) == "blockwise"
    assert dispatch.resolve("ssd", "sequential", length=65, chunk_size=64) == "sequential"  # explicit wins
    # Narrow heads with a per-channel decay scan; wide ones, and scalar or no decays, chunk.
    assert dispatch.resolve("linear_attention", "auto", per_channel=1, dv=32) == "sequential"
    assert dispatch.resolve("linear_attention", "auto", per_channel=1, dv=64) == "chunked"
    assert dispatch.resolve("linear_attention", "auto", per_channel=0, dv=16) == "chunked"
    for rule in dispatch.AUTO_TABLE:
        assert rule.why, f"auto row without its measurement: {rule}"


def test_errors_name_the_op_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"ssd: impl='flash' is not one of 'auto', 'reference', 'sequential', 'chunked'"):
        dispatch.resolve("ssd", "flash", length=1, chunk_size=1)
    with pytest.raises(ValueError, match="impl must be one of"):
        dispatch.register("ssd", "turbo")
    with pytest.raises(NotImplementedError, match="fft_conv: no sequence-parallel variant"):
        dispatch.sequence_parallel("fft_conv")


def test_a_new_implementation_joins_without_touching_the_op(monkeypatch):
    """What seqjax.kernels will do: register impl="pallas" and put auto rows on top."""
    monkeypatch.setattr(dispatch, "_IMPLS", {k: dict(v) for k, v in dispatch._IMPLS.items()})
    monkeypatch.setattr(dispatch, "AUTO_TABLE", dispatch.AUTO_TABLE)
    dispatch._IMPLS["ssd"].pop("pallas", None)  # seqjax.kernels registers one: start without it
    here = dispatch.platform()
    dispatch.add_rules(dispatch.Rule("ssd", here, "pallas", lambda s: s["length"] >= 128, why="test row"))
    # Not registered yet: the row is skipped.
    assert dispatch.resolve("ssd", "auto", length=256, chunk_size=64) == "chunked"
    dispatch.register("ssd", "pallas")(lambda *args: None)
    assert "pallas" in dispatch.implementations("ssd")
    assert dispatch.resolve("ssd", "auto", length=256, chunk_size=64) == "pallas"
    assert dispatch.resolve("ssd", "auto", length=100, chunk_size=64) == "chunked"  # condition false
    assert dispatch.resolve("linear_scan", "auto") == "sequential"  # other ops untouched
