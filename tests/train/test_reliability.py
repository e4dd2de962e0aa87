"""Reliability of a real run through the command line: damaged checkpoints, kill -9, SIGTERM/SIGINT, divergence.

Each case runs ``python -m experiments.icl`` (a tiny model, 300 steps, checkpoints every 50)
in a subprocess, as a user would, and asserts the exit status, the one line the user is
told (and no traceback), and, where the run goes on, that its final metrics and loss equal
those of one uninterrupted run (shared by the module). The default suite runs one case of
each kind; the other kinds are marked slow.
"""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ml_collections import ConfigDict

from seqjax.errors import ConfigError
from seqjax.train import default_config
from seqjax.train import checkpoint
from seqjax.train.checkpoint import Checkpointer
from seqjax.train.config import validate_config
from seqjax.train.guards import DivergenceGuard, StopSignals

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS, EVERY = 300, 50
TINY = ["--config.task.dim=3", "--config.task.n_points=5", "--config.model.input_dim=3",
        "--config.model.max_length=10", "--config.model.num_layers=1", "--config.model.d_model=8",
        "--config.task.eval_batch_size=16", "--config.train.batch_size=8", "--config.train.log_every=1",
        "--noconfig.train.progress", "--config.optim.warmup_steps=1"]


def _command(workdir, *extra, steps=STEPS):
    return [sys.executable, "-m", "experiments.icl", *TINY, f"--config.train.steps={steps}",
            f"--config.train.checkpoint_every={EVERY}", *extra, f"--workdir={workdir}"]


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    return env


def _cli(workdir, *extra, steps=STEPS):
    return subprocess.run(_command(workdir, *extra, steps=steps), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _stderr_lines(r) -> list[str]:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return [line for line in r.stderr.splitlines() if line.strip()]


def _results(workdir) -> dict:
    return json.loads((pathlib.Path(workdir) / "results.json").read_text())


def _steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run; its folder (checkpoints 250 and 300) and results."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    r = _cli(workdir)
    assert r.returncode == 0 and _stderr_lines(r) == [], r.stderr[-3000:]
    assert r.stdout.splitlines()[:2] == [f"workdir: {workdir}", "starting; compiling the train step..."]
    results = _results(workdir)
    assert results["status"] == "finished" and results["finished"] is True
    assert _steps(workdir) == [STEPS - EVERY, STEPS]
    # The same command again: said to be finished, the results reprinted.
    again = _cli(workdir)
    assert again.returncode == 0 and again.stdout.splitlines()[0] == f"already finished: {workdir}"
    return workdir, results


def _assert_same_as(workdir, reference):
    got, want = _results(workdir), reference[1]
    assert got["status"] == "finished"
    assert got["metrics"] == want["metrics"]
    assert got["train"]["loss"] == want["train"]["loss"]


def _copy_unfinished(reference, tmp_path):
    """The reference folder without results.json: its rerun restores checkpoint 300 and evaluates."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    (workdir / "results.json").unlink()
    return workdir


# --- damaged checkpoints ------------------------------------------------------------------------


def _garbage(path: pathlib.Path) -> None:
    path.write_bytes(os.urandom(max(path.stat().st_size, 64)))


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _array_data(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


# kind of damage -> (what is done to checkpoints/<step>, the reason printed)
DAMAGE = {
    "garbage array data": (lambda d: [_garbage(p) for p in _array_data(d)], "array data: a file is "),
    "truncated array data": (lambda d: [_truncate(p) for p in _array_data(d)], "array data: a file is "),
    "deleted array data": (lambda d: [p.unlink() for p in _array_data(d)], "array data: a file is missing (NOT_FOUND)"),
    "truncated array index": (lambda d: _truncate(d / "state" / "manifest.ocdbt"), "array data: a file is "),
    "garbage state metadata": (lambda d: _garbage(d / "state" / "_METADATA"), "a metadata file is not valid JSON"),
    "truncated array metadata": (lambda d: _truncate(d / "state" / "array_metadatas" / "process_0"),
                                 "a metadata file is not valid JSON"),
    "deleted meta": (lambda d: (d / "meta" / "metadata").unlink(), "missing file meta/metadata"),
    "garbage meta": (lambda d: _garbage(d / "meta" / "metadata"), "a metadata file is not valid JSON"),
    "deleted state folder": (lambda d: shutil.rmtree(d / "state"), "its state folder is missing"),
}
FAST_DAMAGE = "garbage array data"


@pytest.mark.parametrize("kind", [pytest.param(k, marks=() if k == FAST_DAMAGE else pytest.mark.slow,
                                               id=k.replace(" ", "_")) for k in DAMAGE])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(reference, tmp_path, kind):
    workdir = _copy_unfinished(reference, tmp_path)
    ckpts = workdir / "checkpoints"
    damage, reason = DAMAGE[kind]
    damage(ckpts / str(STEPS))
    r = _cli(workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _stderr_lines(r)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: checkpoint {STEPS} in {ckpts} does not restore ({reason}")
    assert lines[0].endswith(f"); moved to {ckpts / 'corrupt' / str(STEPS)}, trying the next older one")
    assert f"resuming from step {STEPS - EVERY}" in r.stdout
    assert (ckpts / "corrupt" / str(STEPS)).is_dir() and _steps(workdir) == [STEPS - EVERY, STEPS]
    _assert_same_as(workdir, reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["_CHECKPOINT_METADATA", "commit_success.txt"])
def test_damage_orbax_does_not_need_is_tolerated(reference, tmp_path, name):
    """The step folder's own files: orbax restores without them, so nothing is moved aside."""
    workdir = _copy_unfinished(reference, tmp_path)
    (workdir / "checkpoints" / str(STEPS) / name).unlink()
    r = _cli(workdir)
    assert r.returncode == 0 and _stderr_lines(r) == [], r.stderr[-3000:]
    assert not (workdir / "checkpoints" / "corrupt").exists()
    _assert_same_as(workdir, reference)


def test_no_restorable_checkpoint_stops_with_exit_2(reference, tmp_path):
    workdir = _copy_unfinished(reference, tmp_path)
    ckpts = workdir / "checkpoints"
    for step in (STEPS - EVERY, STEPS):
        DAMAGE[FAST_DAMAGE][0](ckpts / str(step))
    r = _cli(workdir)
    assert r.returncode == 2
    *warnings, last = _stderr_lines(r)
    assert [w.split(" does not restore")[0] for w in warnings] == [
        f"warning: checkpoint {s} in {ckpts}" for s in (STEPS, STEPS - EVERY)]
    assert last == (f"error: no checkpoint in {ckpts} restores (steps {STEPS}, {STEPS - EVERY} moved to "
                    f"{ckpts / 'corrupt'}); delete {ckpts / 'corrupt'} to start the run over, or pass another --workdir")
    assert not (workdir / "results.json").exists() and _steps(workdir) == []
    # Again: the same stop, not a silent start from step 0.
    again = _cli(workdir)
    assert again.returncode == 2 and _stderr_lines(again) == [
        f"error: no checkpoint in {ckpts} restores (damaged ones are in {ckpts / 'corrupt'}); delete "
        f"{ckpts / 'corrupt'} to start the run over, or pass another --workdir"]


def test_unfinalised_checkpoints_are_never_the_latest(reference, tmp_path):
    """A save cut short leaves ``<step>.orbax-checkpoint-tmp-<time>``: not listed, and deleted on open."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    tmp = workdir / "checkpoints" / f"{STEPS + EVERY}.orbax-checkpoint-tmp"
    shutil.copytree(workdir / "checkpoints" / str(STEPS), tmp)
    with Checkpointer(workdir) as ckpt:
        assert ckpt.latest_step() == STEPS and ckpt.all_steps() == [STEPS - EVERY, STEPS]
    deadline = time.time() + 30  # orbax deletes it in a background thread
    while tmp.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not tmp.exists()


# --- kill -9 and signals --------------------------------------------------------------------------


def _start_and_stop_at(workdir, step: int, signum: int, after_checkpoint: int | None = None):
    """Starts the run, sends ``signum`` once ``metrics.jsonl`` has reached ``step`` (and checkpoint
    ``after_checkpoint``, saved in the background, is on disk); the finished process."""
    proc = subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 240
    saved = workdir / "checkpoints" / str(after_checkpoint)
    try:
        while not (metrics.exists() and metrics.read_text().count("\n") >= step
                   and (after_checkpoint is None or saved.is_dir())):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the run did not reach the step"
            time.sleep(0.002)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_rerun_equals_uninterrupted(reference, tmp_path, rng):
    workdir = tmp_path / "run"
    at = int(rng.integers(EVERY + 5, 2 * EVERY + 40))
    r = _start_and_stop_at(workdir, at, signal.SIGKILL, after_checkpoint=EVERY)
    assert r.returncode == -signal.SIGKILL and not (workdir / "results.json").exists()
    done = _cli(workdir)
    assert done.returncode == 0 and _stderr_lines(done) == [], done.stderr[-3000:]
    assert "resuming from step" in done.stdout and "resuming from step 0" not in done.stdout
    _assert_same_as(workdir, reference)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_the_step_and_the_rerun_equals_uninterrupted(reference, tmp_path, rng, signum, code):
    workdir = tmp_path / "run"
    at = int(rng.integers(10, EVERY + 40))
    r = _start_and_stop_at(workdir, at, signum)
    assert r.returncode == code, r.stderr[-3000:]
    (line,) = _stderr_lines(r)
    step = int(line.split()[3].rstrip(";"))
    assert line == f"interrupted at step {step}; rerun the same command to resume"
    assert at <= step < STEPS and step in _steps(workdir)  # the current step's state, not the last periodic one
    done = _cli(workdir)
    assert done.returncode == 0 and _stderr_lines(done) == [], done.stderr[-3000:]
    assert f"resuming from step {step}" in done.stdout
    _assert_same_as(workdir, reference)


def test_run_puts_the_signal_handlers_back(tmp_path):
    """The trainer is also a library (tests, ``reproduce``): its handlers last only as long as the run."""
    from seqjax.train import run
    from tests.train.toy import ToyModel, ToyTask, make_config

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    run(make_config(steps=2, checkpoint_every=0), tmp_path, task=ToyTask(), model=ToyModel())
    assert {s: signal.getsignal(s) for s in before} == before


# --- divergence -----------------------------------------------------------------------------------

# (learning rate, warm-up steps, the step it diverges at, the cause printed)
DIVERGE = {
    "nan": ("1e4", 1, 1, "loss is nan"),
    "huge": ("30", 20, 2, "loss 1.8e+04 is above config.train.divergence_factor=1000 x its running median 11.3"),
}


@pytest.mark.parametrize("kind", ["nan", pytest.param("huge", marks=pytest.mark.slow)])
def test_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, kind):
    lr, warmup, step, cause = DIVERGE[kind]
    workdir = tmp_path / "run"
    r = _cli(workdir, f"--config.optim.learning_rate={lr}", f"--config.optim.warmup_steps={warmup}", steps=40)
    assert r.returncode == 3, r.stderr[-3000:]
    ckpts = workdir / "checkpoints"
    assert _stderr_lines(r) == [f"error: training diverged at step {step}: {cause}; kept checkpoint {step} in {ckpts}"]
    results = _results(workdir)
    assert results["status"] == "diverged" and results["finished"] is False
    assert results["diverged"]["step"] == step and results["diverged"]["cause"] == cause
    assert _steps(workdir) == [step]  # the state before the failing update, not the diverged one
    meta = json.loads((ckpts / str(step) / "meta" / "metadata").read_text())
    assert meta["step"] == step and all(abs(x) < 1e3 for x in meta["divergence"]["window"])


def test_divergence_factor_is_checked():
    config = default_config()
    for bad in (0.5, 1, -3.0, "big", True, float("inf")):
        config.train = ConfigDict({**config.train.to_dict(), "divergence_factor": bad})
        with pytest.raises(ConfigError, match=r"^config\.train\.divergence_factor=.* must be a number > 1, or 0 or "
                                              r"None to turn the divergence rule off$"):
            validate_config(config, 1)
    for off_or_on in (0, None, 10.0, 1e3):
        config.train = ConfigDict({**config.train.to_dict(), "divergence_factor": off_or_on})
        validate_config(config, 1)


# --- the guard and the signal handlers in-process ----------------------------------------------------


def test_the_guard_fires_on_nan_inf_and_a_runaway_loss_only(rng):
    guard = DivergenceGuard(1e3)
    assert guard.limit() == float("inf")  # no history: only NaN/Inf can fire
    assert guard.cause(float("nan"), 1.0, guard.limit()) == "loss is nan"
    assert guard.cause(1.0, float("inf"), guard.limit()) == "gradient norm is inf"
    first = 3.0 + rng.random()
    guard.add(first)
    losses = first * np.exp(rng.normal(0.0, 1.0, size=300))  # noisy, within e^3 of the first
    for loss in losses:
        assert guard.cause(float(loss), 1.0, guard.limit()) is None
        guard.add(float(loss))
    ref = max(float(np.median(losses[-100:])), first)
    assert guard.reference() == pytest.approx(ref)
    assert guard.cause(1.01e3 * ref, 1.0, guard.limit()).startswith(f"loss {1.01e3 * ref:.3g} is above ")
    assert guard.cause(0.99e3 * ref, 1.0, guard.limit()) is None
    # The history round-trips through the checkpoint meta (JSON).
    again = DivergenceGuard(1e3)
    again.set_state(json.loads(json.dumps(guard.state())))
    assert again.limit() == guard.limit()
    # Off (0 or None), or a reference <= 0: only NaN/Inf.
    for off in (DivergenceGuard(0), DivergenceGuard(None)):
        off.add(1.0)
        assert off.limit() == float("inf") and off.cause(1e30, 1.0, off.limit()) is None
    negative = DivergenceGuard(1e3)
    negative.add(-2.0)
    assert negative.limit() == float("inf")


def test_a_run_that_runs_away_from_its_first_step_is_caught():
    """No warm-up: the median of the losses so far lags a loss growing 10x per step, which is caught at step 6."""
    guard, loss, caught = DivergenceGuard(1e3), 3.0, None
    for step in range(20):
        caught = guard.cause(loss, 1.0, guard.limit())
        if caught:
            break
        guard.add(loss)
        loss *= 10
    assert step == 6 and caught.startswith("loss 3e+06 is above config.train.divergence_factor=1000 x its running "
                                           "median 1.65e+03")


def test_stop_signals_defer_the_first_signal_and_put_the_handlers_back():
    before = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # delivered at the next bytecode boundary
        assert signals.received == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before


def _task_error_record(filename: str) -> logging.LogRecord:
    # asyncio's report of a garbage-collected task whose exception nobody retrieved,
    # raised from code that lives in ``filename``.
    code = compile("def read():\n    raise ValueError('DATA_LOSS: damaged')\n", filename, "exec")
    scope = {}
    exec(code, scope)
    try:
        scope["read"]()
    except ValueError:
        exc_info = sys.exc_info()
    return logging.LogRecord("asyncio", logging.ERROR, filename, 1,
                             "Task exception was never retrieved\nfuture: <Task finished>", None, exc_info)


def test_unretrieved_orbax_read_errors_are_dropped_and_others_kept(monkeypatch):
    # A failed restore leaves other reads' errors in unretrieved tasks; asyncio logs each
    # with a traceback when the task is collected, maybe after the run's one-line error.
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # installs afresh, undone after
    logger = logging.getLogger("asyncio")
    before = list(logger.filters)
    try:
        checkpoint._drop_stray_errors()
        orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py")
        assert not logger.filter(_task_error_record(orbax_file))
        assert logger.filter(_task_error_record(os.path.join(os.sep, "home", "user", "mine.py")))
        other = logging.LogRecord("asyncio", logging.ERROR, orbax_file, 1, "Executing <Task> took 1 s", None, None)
        assert logger.filter(other)
        # A future that tensorstore completed: no frames, the message names the spec.
        spec_error = ValueError("DATA_LOSS: Error reading [tensorstore_spec='{\"driver\":\"zarr\"}']")
        future = logging.LogRecord("asyncio", logging.ERROR, "", 1, "Future exception was never retrieved\nfuture: <Future>",
                                   None, (ValueError, spec_error, None))
        assert not logger.filter(future)
        plain = logging.LogRecord("asyncio", logging.ERROR, "", 1, "Future exception was never retrieved\nfuture: <Future>",
                                  None, (ValueError, ValueError("mine"), None))
        assert logger.filter(plain)
    finally:
        logger.filters[:] = before
