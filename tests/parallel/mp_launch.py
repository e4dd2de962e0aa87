"""Starts N local JAX processes (CPU, K host devices each) for multi-host tests.

``run_processes("tests.parallel.mp_worker_primitives", [...])`` runs
``python -m <module> <args>`` N times from the repository root with

- ``JAX_PLATFORMS=cpu`` and ``XLA_FLAGS=--xla_force_host_platform_device_count=K``
  (other XLA flags of the parent are kept);
- for N > 1: ``SEQJAX_COORDINATOR_ADDRESS=localhost:<free port>``,
  ``SEQJAX_NUM_PROCESSES=N``, ``SEQJAX_PROCESS_ID=i``, which
  ``seqjax.parallel.distributed.initialize()`` reads; for N = 1 none of them,
  so the same worker runs single-process (e.g. 1 × 8 devices to compare with 2 × 4).

If any process fails or the timeout passes, all are killed and
:class:`MultiProcessError` reports every process's stderr tail. Workers print
results as ``RESULT {json}`` lines; :func:`results` parses them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_PREFIX = "RESULT "

# Variables of an outer launcher (or of the parent test process) that must not
# leak into the workers: they would change what initialize() or JAX detect.
_SCRUB = (
    "SEQJAX_COORDINATOR_ADDRESS",
    "SEQJAX_NUM_PROCESSES",
    "SEQJAX_PROCESS_ID",
    "JAX_COORDINATOR_ADDRESS",
    "JAX_LOCAL_DEVICE_IDS",
    "JAX_NUM_CPU_DEVICES",
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "OMPI_MCA_orte_hnp_uri",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
)


class MultiProcessError(RuntimeError):
    """A worker process failed or timed out; the message holds every stderr tail."""


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(num_processes: int, devices_per_process: int, process_id: int, port: int | None, extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    if num_processes > 1:
        env["SEQJAX_COORDINATOR_ADDRESS"] = f"localhost:{port}"
        env["SEQJAX_NUM_PROCESSES"] = str(num_processes)
        env["SEQJAX_PROCESS_ID"] = str(process_id)
    env.update(extra or {})
    return env


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_processes(
    module: str,
    args: Sequence = (),
    *,
    num_processes: int = 2,
    devices_per_process: int = 4,
    timeout: float = 120.0,
    env: dict | None = None,
) -> list[subprocess.CompletedProcess]:
    """Runs ``python -m module *args`` as ``num_processes`` cooperating JAX processes.

    Args:
      module: dotted module name (e.g. ``"tests.parallel.mp_worker_primitives"``)
        or a path to a script.
      args: command-line arguments, the same for every process.
      num_processes: how many processes (1: no coordinator variables are set).
      devices_per_process: host CPU devices per process.
      timeout: seconds for all processes together.
      env: extra environment variables for every process.

    Returns:
      One ``CompletedProcess`` per process, in process-id order, with ``stdout``
      and ``stderr`` as text.

    Raises:
      MultiProcessError: a process exited non-zero or the timeout passed (all
        processes are killed first).
    """
    port = free_port() if num_processes > 1 else None
    target = [module] if module.endswith(".py") else ["-m", module]
    procs, files = [], []
    with tempfile.TemporaryDirectory(prefix="seqjax_mp_") as tmp:
        try:
            for i in range(num_processes):
                out = open(Path(tmp) / f"{i}.out", "w+")
                err = open(Path(tmp) / f"{i}.err", "w+")
                files.append((out, err))
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *target, *map(str, args)],
                        cwd=REPO_ROOT,
                        env=_env(num_processes, devices_per_process, i, port, env),
                        stdout=out,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                    )
                )
            deadline = time.monotonic() + timeout
            failure = None
            while True:
                codes = [p.poll() for p in procs]
                if all(c is not None for c in codes):
                    if any(c != 0 for c in codes):
                        failure = f"exit codes {codes}"
                    break
                if any(c not in (None, 0) for c in codes):
                    failure = f"exit codes {codes} (others killed)"
                    break
                if time.monotonic() > deadline:
                    failure = f"timed out after {timeout:.0f} s (exit codes {codes}; all killed)"
                    break
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait()
        completed = []
        for i, (p, (out, err)) in enumerate(zip(procs, files)):
            out.seek(0)
            err.seek(0)
            completed.append(subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read()))
            out.close()
            err.close()
    if failure:
        report = "\n".join(
            f"--- process {i} (rc={c.returncode}) stderr tail ---\n{_tail(c.stderr)}\n"
            f"--- process {i} stdout tail ---\n{_tail(c.stdout, 10)}"
            for i, c in enumerate(completed)
        )
        raise MultiProcessError(f"{module} x{num_processes}: {failure}\n{report}")
    return completed


def results(completed: subprocess.CompletedProcess) -> list[dict]:
    """The ``RESULT {json}`` lines a worker printed, parsed, in order."""
    return [json.loads(line[len(RESULT_PREFIX) :]) for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
