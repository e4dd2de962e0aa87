"""The seq2seq table: built only from results.json files (a cell without results reads "missing"), the
per-position figure written, the notebook run on the same results, and the kept CPU cells in the rebuilt table."""

import json
import pathlib
import shutil

import pytest

from configs.tables.seq2seq import get_table
from seqjax.config import load_config
from seqjax.errors import ConfigError
from seqjax.report import build_report
from seqjax.report.seq2seq import MISSING, cells
from tests.notebooks import execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _fake(base, name, arg, **fields):
    """A results.json as a run writes it: the cell's full config plus ``fields``."""
    config = load_config(ROOT / "configs/seq2seq/strings.py", arg).to_dict()
    (base / name).mkdir(parents=True)
    (base / name / "results.json").write_text(json.dumps({"config": config, **fields}))


def _metrics(k: float) -> dict:
    return {"greedy_token_accuracy": 0.9 + 0.01 * k, "exact_match": 0.5 + 0.05 * k, "token_accuracy": 0.95 + 0.001 * k,
            "greedy_accuracy_per_position": [1.0 - 0.01 * k * i for i in range(8)] + [None], "ce": 0.1,
            "num_examples": 512, "num_positions": 2813, "kind": "reverse"}


def _row(md, start):
    return next(line for line in md.splitlines() if line.startswith(start))


def test_table_lists_every_cell_and_draws_the_figure(tmp_path):
    table = get_table("cpu")
    names = [c.name for c in table["cells"]]
    assert names[:4] == ["reverse-encdec-mha", "reverse-encdec-mamba2", "reverse-lm-mha", "reverse-lm-mamba2"]
    _fake(tmp_path, "reverse-encdec-mha", "kind=reverse", finished=True, wall_time_s=58.6, metrics=_metrics(1))
    _fake(tmp_path, "reverse-lm-mha", "kind=reverse,layout=decoder_only", finished=True, wall_time_s=80.2,
          metrics=_metrics(3))
    _fake(tmp_path, "copy-lm-mha", "kind=copy,layout=decoder_only", finished=False)  # interrupted: not a result
    paths = build_report(table, tmp_path)
    assert [p.name for p in paths] == ["report.md", "seq2seq-positions.png"]
    assert (tmp_path / "seq2seq-positions.png").stat().st_size > 10_000
    md = (tmp_path / "report.md").read_text()
    for start, k, seconds in [("| reverse | encoder–decoder | mha | ", 1, "59"), ("| reverse | decoder-only | mha | ", 3,
                                                                                "80")]:
        m = _metrics(k)
        want = " | ".join(f"{m[key]:.4f}" for key in ["greedy_token_accuracy", "exact_match", "token_accuracy"])
        assert _row(md, start) == f"{start}{want} | {seconds} |"
    assert _row(md, "| copy | decoder-only | mha | ") == "| copy | decoder-only | mha | " + "missing | " * 3 + "– |"
    assert "no paper number" in md
    assert all(r["status"] == MISSING for r in cells(table, []))
    outputs, images = execute_notebook("seq2seq", tmp_path)
    assert "2 finished of 6 seq2seq cells" in outputs and "| copy | decoder-only | mha | missing |" in outputs
    assert images


def test_a_diverged_cell_reads_diverged_and_there_is_no_paper_scale(tmp_path):
    _fake(tmp_path, "copy-encdec-mha", "kind=copy", finished=False, status="diverged")
    build_report(get_table("cpu"), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert _row(md, "| copy | encoder–decoder | mha | ").startswith("| copy | encoder–decoder | mha | diverged | ")
    assert not (tmp_path / "seq2seq-positions.png").exists()  # nothing finished: no figure
    with pytest.raises(ConfigError, match="table seq2seq has no scale='paper' cells"):
        get_table("paper")


def test_report_from_the_kept_cpu_cells(tmp_path):
    """docs/results/seq2seq-cpu: every kept cell's numbers are in the rebuilt table, read from its results.json."""
    kept = ROOT / "docs" / "results" / "seq2seq-cpu"
    names = [c.name for c in kept.iterdir() if (c / "results.json").is_file()]
    assert names
    table = get_table("cpu")
    grid = {g["cell"]: g for g in table["grid"]}
    for name in names:
        shutil.copytree(kept / name, tmp_path / name)
    build_report(table, tmp_path)
    md = (tmp_path / "report.md").read_text()
    for name in names:
        m = json.loads((kept / name / "results.json").read_text())["metrics"]
        g = grid[name]
        layout = "encoder–decoder" if g["layout"] == "encoder_decoder" else "decoder-only"
        want = " | ".join(f"{m[k]:.4f}" for k in ["greedy_token_accuracy", "exact_match", "token_accuracy"])
        assert _row(md, f"| {g['kind']} | {layout} | {g['decoder']} | ").endswith(
            f"| {want} | {json.loads((kept / name / 'results.json').read_text())['wall_time_s']:.0f} |")
