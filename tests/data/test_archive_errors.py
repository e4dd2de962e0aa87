"""Bad data files: a missing, garbage or truncated LRA archive is one line naming the file, its size
and the manual folder (a ConfigError, so the command line exits with status 2), and a preparation
that was killed leaves nothing that the next one trips over.

The archives are written here in the official formats (:mod:`tests.data.lra_fixtures`), with
incompressible contents so that cutting the file in half cuts real member data.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from seqjax.data.builders import _base, _manual, lra_image, lra_listops, lra_retrieval, lra_text  # registers them
from seqjax.errors import ConfigError
from tests.data import lra_fixtures as fx

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _noise(rng, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def _write_real_format(name: str, path: pathlib.Path, rng) -> None:
    """A tiny archive of ``name``'s official format whose members are random bytes (~60 kB)."""
    if name == "lra_text":
        fx.write_imdb_archive(path, [("train", "pos", i, 9, _noise(rng, 15_000)) for i in range(4)])
    elif name == "lra_image":
        batches = {b: (rng.integers(0, 256, (2, 3072)), [1, 2]) for b in (*lra_image.TRAIN_BATCHES, "test_batch")}
        fx.write_cifar_binary(path, batches)
    else:
        noise = _noise(rng, 60_000).replace(b"\t", b" ").replace(b"\n", b" ")
        fx.write_aan_archive(path, {s: b"1\ta\tb\t" + noise + b"\tx\n" for s in ("train", "eval", "test")})


FILES = {"lra_text": lra_text.ARCHIVE, "lra_image": lra_image.ARCHIVES[1], "lra_retrieval": lra_retrieval.ARCHIVES[0]}
EXPECTED = {"lra_text": "84,125,825 bytes, about 80.2 MiB", "lra_image": "170,052,171 bytes, about 162 MiB",
            "lra_retrieval": "not recorded here"}


def _damage(kind: str, name: str, path: pathlib.Path, rng) -> None:
    if kind == "garbage":
        path.write_bytes(_noise(rng, 5_000))
    elif kind == "gzipped_garbage":
        path.write_bytes(gzip.compress(_noise(rng, 20_000)))
    else:  # truncated: an interrupted download of a real-format archive
        _write_real_format(name, path, rng)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _prepare(name, data_dir, manual):
    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return builder


@pytest.mark.parametrize("kind", ["garbage", "gzipped_garbage", "truncated"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_a_damaged_archive_names_the_file_its_size_and_the_folder(name, kind, tmp_path, monkeypatch, rng):
    fx.no_network(monkeypatch)
    tfds.disable_progress_bar()
    manual = tmp_path / "manual"
    manual.mkdir()
    path = manual / FILES[name].name
    _damage(kind, name, path, rng)
    with pytest.raises(_manual.DamagedArchiveError) as err:
        _prepare(name, tmp_path / "tfds", manual)
    message = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in message
    assert message.startswith(f"{name}: the archive {path} is damaged or incomplete (")
    assert (f"it has {path.stat().st_size:,} bytes, the real one: {EXPECTED[name]}. Download it again from "
            f"{FILES[name].url} into the manual folder {manual}, unchanged and not extracted") in message
    assert not list((tmp_path / "tfds").rglob("incomplete.*"))


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_missing_archive_is_one_line(name, tmp_path, monkeypatch):
    fx.no_network(monkeypatch)
    with pytest.raises(_manual.MissingArchiveError) as err:
        _prepare(name, tmp_path / "tfds", tmp_path / "manual")
    message = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in message
    assert message.startswith(f"{name}: no archive in the manual folder {tmp_path / 'manual'}; download ")
    assert FILES[name].name in message and FILES[name].url in message


def test_the_command_line_prints_the_damaged_archive_line_and_exits_2(tmp_path, rng):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "aclImdb_v1.tar.gz").write_bytes(_noise(rng, 5_000))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(
        [sys.executable, "-m", "experiments.lra", "--config=" + str(ROOT / "configs/lra/text.py") + ":scale=cpu",
         f"--config.task.manual_dir={manual}", f"--config.task.data_dir={tmp_path / 'tfds'}",
         "--config.train.steps=1", "--config.optim.warmup_steps=0", f"--workdir={tmp_path / 'w'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: lra_text: the archive {manual / 'aclImdb_v1.tar.gz'} is damaged or incomplete (ReadError: "
        f"invalid header); it has 5,000 bytes, the real one: 84,125,825 bytes, about 80.2 MiB. Download it again "
        f"from {lra_text.ARCHIVE.url} into the manual folder {manual}, unchanged and not extracted")


# --- an interrupted preparation ---------------------------------------------------------------

_TINY = dict(seed=3, min_length=10, max_length=60)
_KILLED = """
import os, signal
import tensorflow_datasets as tfds
import seqjax.data.builders
from seqjax.data.builders import lra_listops

if __name__ == "__main__":
    original = lra_listops.LraListops._generate_examples

    def examples(self, rows):  # killed (no clean-up runs) while tfds writes the first split
        for i, example in enumerate(original(self, rows)):
            if i == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            yield example

    lra_listops.LraListops._generate_examples = examples
    config = lra_listops.make_config(20, 4, 4, **TINY)
    builder = tfds.builder("lra_listops", config=config, data_dir=DATA_DIR, progress=False, num_workers=1)
    builder.download_and_prepare(file_format="array_record")
"""


def _listops(data_dir):
    config = lra_listops.make_config(20, 4, 4, **_TINY)
    builder = tfds.builder("lra_listops", config=config, data_dir=str(data_dir), progress=False, num_workers=1)
    builder.download_and_prepare(file_format="array_record")
    return builder


def _records(builder, split):
    source = builder.as_data_source(split)
    return sorted((tuple(np.asarray(source[i]["inputs"]).tolist()), int(source[i]["label"]))
                  for i in range(len(source)))


def test_a_killed_preparation_is_cleaned_up_and_the_next_one_completes(tmp_path, capfd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    script = tmp_path / "killed.py"
    script.write_text(f"TINY = {_TINY!r}\nDATA_DIR = {str(tmp_path / 'tfds')!r}\n" + _KILLED)
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    left = list((tmp_path / "tfds").rglob("incomplete.*"))
    assert len(left) == 1  # what tfds leaves when it is killed
    capfd.readouterr()
    builder = _listops(tmp_path / "tfds")
    err = capfd.readouterr().err
    assert (f"lra_listops: removed {left[0].name} in {left[0].parent}, left by an interrupted preparation; "
            "preparing again from the start") in err
    assert not list((tmp_path / "tfds").rglob("incomplete.*"))
    fresh = _listops(tmp_path / "fresh")
    for split in ("train", "validation", "test"):
        assert _records(builder, split) == _records(fresh, split)


def test_a_preparation_in_another_process_keeps_its_folder(tmp_path):
    """The clean-up waits for the lock that a running preparation holds; only then is a leftover stale."""
    import fcntl

    folder = tmp_path / "lra_listops" / "cfg"
    (folder / "incomplete.ABCDEF_1.0.0").mkdir(parents=True)
    (folder / "incomplete.ABCDEF_2.0.0").mkdir()  # another version's: never touched
    removed = []
    with open(folder / ".prepare.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)

        def clean():
            with open(folder / ".prepare.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                removed.extend(_base.remove_interrupted(folder, "1.0.0", "lra_listops"))

        thread = threading.Thread(target=clean)
        thread.start()
        time.sleep(0.5)
        assert (folder / "incomplete.ABCDEF_1.0.0").is_dir() and not removed
    thread.join(timeout=30)
    assert removed == ["incomplete.ABCDEF_1.0.0"]
    assert sorted(p.name for p in folder.iterdir()) == [".prepare.lock", "incomplete.ABCDEF_2.0.0"]
