"""Runs a notebook of ``notebooks/`` on a results folder, for the report tests."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def execute_notebook(name: str, results, env: dict | None = None) -> tuple[str, list]:
    """Executes ``notebooks/<name>.ipynb`` with ``SEQJAX_RESULTS=results`` (and ``env``) in the environment.

    Skips the calling test when nbformat or nbclient is not installed.

    Args:
      name: the notebook's file name without ``.ipynb``.
      results: the folder the notebook reads.
      env: more environment variables for the run (e.g. ``SEQJAX_TABLE``).

    Returns:
      ``(text, images)``: every text output joined, and the outputs holding a PNG.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    env = {"SEQJAX_RESULTS": str(results), **(env or {})}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for key in env:
            del os.environ[key]
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    return "".join(o.get("text", "") for o in outputs), [o for o in outputs if "image/png" in o.get("data", {})]
