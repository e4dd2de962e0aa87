"""LRA end to end on tiny data: every task's config (with its real builder:
generated data, or tiny archives of the official formats in a manual folder)
trains a few steps through the trainer and evaluates.

On ListOps (short sequences) one hybrid model covers three mixer families at
once: softmax attention (``mha``), a convolutional SSM (``s4d``) and a
selective SSM (``mamba``); ``s5`` and ``lstm`` get their own run there. The
other tasks, whose point is their builder, config and task code at lengths up
to 4096, train one ``s4d`` layer (attention and Mamba at those lengths cost
most of the suite's time on CPU and are covered by the ListOps run).
"""

import math

import numpy as np
import pytest

from seqjax import train
from seqjax.experiment import load_config
from tests.data import lra_fixtures as fx


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lra")
    manual = root / "manual"
    manual.mkdir()
    rng = np.random.default_rng(0)
    words = [b"great", b"awful", b"plot", b"caf\xc3\xa9", b"film", b"bad", b"good"]

    def text(n):
        return b" ".join(words[i] for i in rng.integers(0, len(words), n))

    reviews = [(split, lab, i, 8 if lab == "pos" else 2, text(int(rng.integers(5, 30))))
               for split in ("train", "test") for lab in ("pos", "neg") for i in range(6)]
    fx.write_imdb_archive(manual / "aclImdb_v1.tar.gz", reviews)
    rows = {s: fx.aan_tsv([(f"{i % 2}.0", f"a{i}", f"b{i}", text(20), text(25)) for i in range(12)])
            for s in ("train", "eval", "test")}
    fx.write_aan_archive(manual / "lra_release.gz", rows)
    batch = lambda n: (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n))  # noqa: E731
    fx.write_cifar_python(manual / "cifar-10-python.tar.gz",
                          {**{f"data_batch_{k}": batch(4) for k in range(1, 6)}, "test_batch": batch(8)})
    return root


TINY_DATA = {
    "listops": dict(builder_kwargs=dict(num_train=24, num_validation=8, num_test=8, min_length=10, max_length=60,
                                        seed=1), max_length=64),
    "text": dict(max_length=64),
    "retrieval": dict(max_length=64),
    "image": dict(max_length=1024),
    "pathfinder": dict(builder_kwargs=dict(size=32, difficulty="easy", num_examples=40, seed=1), max_length=1024),
    "pathx": dict(builder_kwargs=dict(size=64, difficulty="hard", num_examples=20, seed=1), max_length=4096),
}


def _tiny(task, dirs, mixers="mha,s4d,mamba"):
    c = load_config(f"configs/lra/{task}.py", "model=s4d,scale=cpu")
    c.task.data_dir, c.task.manual_dir = str(dirs / "tfds"), str(dirs / "manual")
    c.task.builder_kwargs = TINY_DATA[task].get("builder_kwargs")
    c.task.max_length = c.model.max_length = TINY_DATA[task]["max_length"]
    c.task.eval_examples, c.task.eval_batch_size = 8, 4
    c.model.mixers, c.model.num_layers, c.model.d_model = mixers, len(mixers.split(",")), 16
    c.model.mixer_kwargs = {"s4d": {"d_state": 8}, "mha": {"num_heads": 2}}
    c.train.steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 2, 4, 1, 2
    c.train.progress = False
    c.optim.warmup_steps = 1
    c.mesh.data = 1
    return c


# pathx is pathfinder's builder at a larger size (13 s): slow.
@pytest.mark.parametrize("task", ["listops", "text", "retrieval", "image", "pathfinder",
                                  pytest.param("pathx", marks=pytest.mark.slow)])
def test_task_trains_and_evaluates(task, dirs, tmp_path):
    res = train.run(_tiny(task, dirs, "mha,s4d,mamba" if task == "listops" else "s4d"), str(tmp_path / task))
    assert res["finished"] and math.isfinite(res["train"]["loss"])
    for split in ("validation", "test"):
        m = res["metrics"][split]
        assert m["num_examples"] > 0 and 0.0 <= m["accuracy"] <= 1.0 and math.isfinite(m["ce"])
        assert sum(m["label_counts"]) == m["num_examples"]


@pytest.mark.parametrize("mixers", ["s5", "lstm"])
def test_other_families_on_listops(mixers, dirs, tmp_path):
    res = train.run(_tiny("listops", dirs, mixers=mixers), str(tmp_path / mixers))
    assert res["finished"] and math.isfinite(res["train"]["loss"])
