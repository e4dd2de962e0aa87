"""The MQAR table: built only from results.json files, every grid cell listed (a cell
without results reads "missing"), the state size beside each cell, the figure written;
and a bad ``--table``/``--scale`` is one line and exit status 2."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs.tables.mqar import get_table
from seqjax.config import load_config
from seqjax.report import build_report
from seqjax.report.mqar import MISSING, cells
from tests.notebooks import execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _fake(base, name, arg, **fields):
    """A results.json as a run writes it: the cell's full config plus ``fields``."""
    config = load_config(ROOT / "configs/mqar/mqar.py", arg).to_dict()
    (base / name).mkdir(parents=True)
    (base / name / "results.json").write_text(json.dumps({"config": config, **fields}))


def _row(md, start):
    return next(line for line in md.splitlines() if line.startswith(start))


def test_table_lists_every_cell_and_draws_the_figure(tmp_path):
    table = get_table("cpu")
    _fake(tmp_path, "mha-L64-d32", "model=mha,d_model=32,scale=cpu", finished=True, wall_time_s=51.2,
          metrics={"accuracy": 0.875}, train={"steps": 1000})
    _fake(tmp_path, "mamba-L64-d64", "model=mamba,d_model=64,scale=cpu", finished=True, wall_time_s=99.0,
          metrics={"accuracy": 0.5})
    _fake(tmp_path, "gla-L64-d32", "model=gla,d_model=32,scale=cpu", finished=False, status="diverged")
    _fake(tmp_path, "s4d-L64-d32", "model=s4d,d_model=32,scale=cpu", finished=False)  # interrupted: not a result
    paths = build_report(table, tmp_path)
    assert [p.name for p in paths] == ["report.md", "mqar-accuracy.png"]
    assert (tmp_path / "mqar-accuracy.png").stat().st_size > 10_000
    md = (tmp_path / "report.md").read_text()
    assert _row(md, "| mha | 0.875 | missing | missing |")
    assert _row(md, "| mamba | missing | 0.500 | missing |")
    assert _row(md, "| gla | diverged | missing | missing |")
    assert _row(md, "| s4d | missing | missing | missing |")
    # The long table: state bytes per layer beside the accuracy; KV cache 2·64·32 floats + a position.
    assert _row(md, "| mha | 32 | 16388 | 0.8750 | 51 |")
    assert _row(md, "| mamba | 64 | 9728 | 0.5000 | 99 |")
    assert _row(md, "| lru | 128 | 512 | missing | – |")
    # Every other grid cell is a row of the long table, none dropped (the interrupted one is missing too).
    assert md.count("| missing | – |") == len(table["cells"]) - 3
    assert "Paper (Arora et al. 2023" in md
    _run_notebook(tmp_path)


def _run_notebook(results):
    """notebooks/mqar.ipynb on these results: it lists the cells and draws the figure."""
    outputs, images = execute_notebook("mqar", results)
    assert "2 finished of 56 MQAR cells" in outputs and "| mha | 4 | 32 | 16388 | 0.8750 | - | 1000 | 51 |" in outputs
    assert "| gla | 4 | 32 | 1024 | diverged | - |" in outputs
    assert images


def test_the_equal_budget_block_is_its_own_section(tmp_path):
    """A long-budget cell is reported apart with the steps it ran; the width pivot keeps the 1,000-step cell."""
    table = get_table("cpu")
    assert table["budget_steps"] == 12_000
    budget = [g for g in table["grid"] if g["steps"] is not None]
    assert {g["mixer"] for g in budget} == {g["mixer"] for g in table["grid"] if g["d_model"] == 128}
    assert {g["d_model"] for g in budget} == {32} and {g["num_kv_pairs"] for g in budget} == {None, 16}
    _fake(tmp_path, "mha-L64-d32", "model=mha,d_model=32,scale=cpu", finished=True, wall_time_s=51.0,
          metrics={"accuracy": 0.25}, train={"steps": 1000})
    _fake(tmp_path, "mha-L64-d32-s12000", "model=mha,d_model=32,scale=cpu,steps=12000", finished=True,
          wall_time_s=180.0, metrics={"accuracy": 0.995},
          train={"steps": 12000, "completed_steps": 3500, "stopped_at": {"step": 3500}})
    _fake(tmp_path, "s4d-L64-d32-s12000", "model=s4d,d_model=32,scale=cpu,steps=12000", finished=True,
          wall_time_s=600.0, metrics={"accuracy": 0.3}, train={"steps": 12000})
    _fake(tmp_path, "s4d-L64-kv16-d32-s12000", "model=s4d,d_model=32,scale=cpu,num_kv_pairs=16,steps=12000",
          finished=True, wall_time_s=650.0, metrics={"accuracy": 0.1}, train={"steps": 12000})
    build_report(table, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert _row(md, "| mha | 0.250 | missing | missing |")  # the pivot: 1,000 steps only
    section = md[md.index("### Equal budget: up to 12,000 steps"):]
    # One row per mixer: 4 pairs (the config's), then 16.
    assert _row(section, "| mha | 32 | 16388 | 0.9950 | 3500 | 180 | missing | – | – |")  # stopped early
    assert _row(section, "| s4d | 32 | 8192 | 0.3000 | 12000 | 600 | 0.1000 | 12000 | 650 |")  # the whole budget
    assert _row(section, "| lru | 32 | 512 | missing | – | – | missing | – | – |")
    assert section.count("missing") == len(budget) - 3
    rows = cells(table, load_results_of(tmp_path))
    assert sum(r["status"] == "finished" for r in rows) == 4
    assert {r["num_kv_pairs"] for r in rows if r["steps"]} == {4, 16}


def load_results_of(base):
    from seqjax.report import load_results

    return load_results(base, with_diverged=True)


def test_the_paper_grid_keeps_the_best_learning_rate():
    table = get_table("paper")
    assert len(table["cells"]) == 4 * 4 * 4 * len(table["mixers"])
    base = pathlib.Path("/nonexistent")
    results = [{"workdir": str(base / "mha-L64-d64-lr0.0001"), "finished": True, "wall_time_s": 1.0,
                "metrics": {"accuracy": 0.3}, "config": {}},
               {"workdir": str(base / "mha-L64-d64-lr0.01"), "finished": True, "wall_time_s": 2.0,
                "metrics": {"accuracy": 0.9}, "config": {}},
               {"workdir": str(base / "mha-L64-d64-lr0.0022"), "status": "diverged", "config": {}}]
    table["grid"] = [g for g in table["grid"] if g["mixer"] == "mha" and g["seq_len"] == 64]  # fewer configs to load
    rows = {(r["mixer"], r["d_model"]): r for r in cells(table, results)}
    assert rows[("mha", 64)]["accuracy"] == 0.9 and rows[("mha", 64)]["lr"] == 0.01
    assert rows[("mha", 128)]["status"] == MISSING and rows[("mha", 128)]["state_bytes"] == 2 * 64 * 128 * 4 + 4


@pytest.mark.parametrize("args, line", [(["--table=zoology"], "flag --table=zoology: value should be one of"),
                                        (["--table=mqar", "--scale=huge"], "flag --scale=huge: value should be one of")])
def test_a_bad_table_or_scale_is_one_line_and_exit_2(args, line, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "experiments.reproduce", *args, f"--root={tmp_path}"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {line}"), r.stderr[-2000:]
    assert "mqar" in lines[0] or "--scale" in lines[0]
    assert not list(tmp_path.iterdir())


def test_report_from_the_kept_cpu_cells(tmp_path):
    """docs/results/mqar-cpu: every kept cell's accuracy is in the rebuilt table, read from its results.json."""
    import shutil

    kept = ROOT / "docs" / "results" / "mqar-cpu"
    for cell in kept.iterdir():
        if (cell / "results.json").is_file():
            shutil.copytree(cell, tmp_path / cell.name)
    build_report(get_table("cpu"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    names = [c.name for c in kept.iterdir() if (c / "results.json").is_file()]
    assert names
    sweep, budget = md.split("### Equal budget")
    for name in names:
        r = json.loads((kept / name / "results.json").read_text())
        mixer, d = name.split("-L")[0], r["config"]["model"]["d_model"]
        if name.endswith("-s12000"):  # the budget section: 4 pairs' accuracy in column 3, 16 pairs' in 6
            column = 3 if r["config"]["task"]["num_kv_pairs"] == 4 else 6
            assert _row(budget, f"| {mixer} | {d} | ").split(" | ")[column] == f"{r['metrics']['accuracy']:.4f}"
        else:
            assert _row(sweep, f"| {mixer} | {d} | ").split(" | ")[3] == f"{r['metrics']['accuracy']:.4f}"
