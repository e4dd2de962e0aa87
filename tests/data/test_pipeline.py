"""grain pipeline: padding, deterministic shuffling, exact resume, disjoint host shards."""

import json

import numpy as np
import pytest

from seqjax.data.pipeline import make_loader
from seqjax.errors import ConfigError


class Source:
    """Random-access source of variable-length examples; ``idx`` identifies the record.

    Attributes:
      rows: the examples (dicts of numpy arrays).
    """

    def __init__(self, rng, n=29):
        self.rows = []
        for i in range(n):
            length = int(rng.integers(1, 12))
            self.rows.append({
                "inputs": rng.integers(1, 20, size=length).astype(np.int32),
                "targets": rng.integers(1, 20, size=length).astype(np.int32),
                "transitions": rng.integers(-1, 5, size=(int(rng.integers(1, 6)), 20)).astype(np.int32),
                "idx": np.int64(i),
            })

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _ids(batches):
    return [b["idx"].tolist() for b in batches]


def test_batches_are_padded_and_cut(rng):
    src = Source(rng)
    loader = make_loader(src, batch_size=4, seed=0, shuffle=False, pad_to=8, pad_id=0, shard=(0, 1),
                         extra_pad={"transitions": (6, -1)}, keep=("idx",))
    batch = next(loader)
    assert set(batch) == {"inputs", "targets", "transitions", "idx"}
    assert batch["inputs"].shape == batch["targets"].shape == (4, 8) and batch["inputs"].dtype == np.int32
    assert batch["transitions"].shape == (4, 6, 20)
    for r, i in enumerate(batch["idx"]):
        row = src[int(i)]
        n = min(len(row["inputs"]), 8)
        np.testing.assert_array_equal(batch["inputs"][r, :n], row["inputs"][:n])
        assert (batch["inputs"][r, n:] == 0).all()
        s = row["transitions"].shape[0]
        np.testing.assert_array_equal(batch["transitions"][r, :s], row["transitions"])
        assert (batch["transitions"][r, s:] == -1).all()
    # Unlisted features are dropped.
    assert set(next(make_loader(src, batch_size=2, seed=0, pad_to=8, shard=(0, 1)))) == {"inputs", "targets"}


def test_shuffle_deterministic_and_epochs_cover_all(rng):
    src = Source(rng)

    def run(seed, shuffle=True):
        it = make_loader(src, batch_size=4, seed=seed, shuffle=shuffle, pad_to=4, shard=(0, 1), keep=("idx",),
                         num_epochs=1)
        return _ids(list(it))

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert run(1, shuffle=False)[0] == [0, 1, 2, 3]
    flat = sum(a, [])
    assert len(flat) == 28 and len(set(flat)) == 28  # one epoch, remainder dropped
    # Repeated epochs use a fresh permutation each time.
    it = make_loader(src, batch_size=29, seed=1, pad_to=4, shard=(0, 1), keep=("idx",))
    e1, e2 = next(it)["idx"].tolist(), next(it)["idx"].tolist()
    assert sorted(e1) == sorted(e2) == list(range(29)) and e1 != e2


@pytest.mark.parametrize("shard", [(0, 1), (1, 3)])
def test_resume_equals_uninterrupted(rng, shard):
    src = Source(rng)
    kwargs = dict(batch_size=3, seed=7, pad_to=5, shard=shard, keep=("idx",))
    ref = make_loader(src, **kwargs)
    for _ in range(4):
        next(ref)
    state = json.loads(json.dumps(ref.get_state()))  # JSON round trip
    expected = [next(ref) for _ in range(6)]  # crosses an epoch boundary for shard (1, 3)
    resumed = make_loader(src, **kwargs)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(6)]
    assert _ids(got) == _ids(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g["inputs"], e["inputs"])


def test_host_shards_are_disjoint(rng):
    src = Source(rng)
    seen = []
    for index in range(3):
        it = make_loader(src, batch_size=3, seed=3, pad_to=4, shard=(index, 3), keep=("idx",), num_epochs=1)
        seen.append(set(sum(_ids(list(it)), [])))
    for i in range(3):
        assert len(seen[i]) == 9  # 29 // 3 records per host, batches of 3
        for j in range(i + 1, 3):
            assert not seen[i] & seen[j]


def test_bad_arguments(rng):
    src = Source(rng)
    with pytest.raises(ConfigError, match="batch_size"):
        make_loader(src, batch_size=0, seed=0, pad_to=4, shard=(0, 1))
    with pytest.raises(ConfigError, match="shard"):
        make_loader(src, batch_size=2, seed=0, pad_to=4, shard=(3, 3))
    with pytest.raises(ConfigError, match="pad_to"):
        make_loader(src, batch_size=2, seed=0, pad_to=None, shard=(0, 1))
