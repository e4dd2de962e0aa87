"""Report builders: tables and criteria computed from results dicts, never typed in."""

import json

import numpy as np
import pytest

from seqjax.report import build_report, icl, icll, load_results, markdown_table


def _icl_result(rng, name, model_scale, dim=3, points=7):
    ex = np.arange(points)
    base = np.maximum(1.0 - ex / dim, 0.0)
    noise = rng.uniform(0.0, 0.01, points)
    return {
        "finished": True,
        "config": {"name": name, "task": {"name": "icl", "function_class": "linear"}, "model": {"mixers": "mha"}},
        "metrics": {
            "n": list(range(1, points + 1)),
            "dim": dim,
            "error_per_n": {
                "model": list(model_scale * base + noise),
                "least_squares": list(base),
                "knn3": list(0.8 + 0 * base + noise),
                "averaging": list(0.6 + 0 * base + noise),
            },
        },
    }


def test_markdown_table_formats():
    t = markdown_table(["a", "b"], [[1, 0.12345], ["x", None]], digits=2)
    assert t.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 0.12 |", "| x | – |"]


def test_icl_claims_measure_the_criteria(rng):
    good = _icl_result(rng, "icl-linear-transformer-cpu", 1.0)
    c = icl.claims(good["metrics"])
    assert c["error_at_2d"] == pytest.approx(good["metrics"]["error_per_n"]["model"][6])
    assert c["meets_target"] and c["below_knn3_and_averaging"]
    bad = _icl_result(rng, "icl-linear-lstm-cpu", 1.0)
    bad["metrics"]["error_per_n"]["model"][4] = 0.9  # above 3-NN at n = d + 1
    assert not icl.claims(bad["metrics"])["below_knn3_and_averaging"]
    short = _icl_result(rng, "x", 1.0, points=5)
    assert icl.claims(short["metrics"])["error_at_2d"] is None


def test_icl_plot_follows_the_class_scale():
    """A Fourier run's error/d is ~10: the plot's y-range covers it (a fixed 0-1.5 left the panel empty)."""
    import pathlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = pathlib.Path(__file__).resolve().parents[2] / "docs/results/icl-cpu/fourier-transformer/results.json"
    r = json.loads(kept.read_text())
    fig = icl.errors_figure([r], "fourier")
    ax = fig.axes[0]
    assert ax.get_ylim()[1] >= max(r["metrics"]["error_per_n"]["model"]) > 2
    assert "Bayes (Fourier mixture)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    small = icl.errors_figure([_icl_result(np.random.default_rng(0), "icl-linear-transformer-cpu", 1.0)], "linear")
    assert small.axes[0].get_ylim()[1] >= 1.5  # normalised classes keep at least the usual 0-1.5 view
    plt.close(small)


def test_icl_summary_table_rows_are_examples(rng):
    r = _icl_result(rng, "icl-linear-transformer-cpu", 1.0)
    text = icl.run_summary(r)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| examples | model | least squares | 3-NN | averaging |"
    assert lines[2].startswith("| 0 | ") and len(lines) == 2 + 7
    assert "≤ 0.1" in text and "below 3-NN and averaging for every n ≥ d: yes" in text


def test_icl_report_columns_add_the_longest_prompt(tmp_path, rng):
    # At d = 1, d/2, d and 2d are 1 and 2 examples; the longest prompt (10 here) must be a column too.
    for name, dim in (("fourier-transformer", 1), ("linear-transformer", 5)):
        (tmp_path / name).mkdir()
        r = _icl_result(rng, f"icl-{name}-cpu", 1.0, dim=dim, points=11)
        r["config"]["task"]["function_class"] = name.split("-")[0]
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    md = build_report({"kind": "icl", "title": "T", "cells": [], "paper": None}, tmp_path)[0].read_text()
    heads = [line for line in md.splitlines() if line.startswith("| run |")]
    assert heads == ["| run | 1 example | 2 examples | 10 examples |",
                     "| run | 2 examples | 5 examples | 10 examples |"]
    r = json.loads((tmp_path / "fourier-transformer" / "results.json").read_text())
    row = next(line for line in md.splitlines() if line.startswith("| icl-fourier-transformer-cpu |"))
    assert row.split(" | ")[-1].rstrip(" |") == f"{r['metrics']['error_per_n']['model'][10]:.3f}"


def test_build_reports_from_results_files(tmp_path, rng):
    for i, model in enumerate(["transformer", "lstm"]):
        d = tmp_path / f"linear-{model}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(_icl_result(rng, f"icl-linear-{model}-cpu", 1.0 + i)))
    unfinished = tmp_path / "linear-gla"
    unfinished.mkdir()
    (unfinished / "results.json").write_text(json.dumps({**_icl_result(rng, "icl-linear-gla-cpu", 1.0), "finished": False}))
    assert len(load_results(tmp_path)) == 2
    paths = build_report({"kind": "icl", "title": "T", "cells": [], "paper": None}, tmp_path)
    md = paths[0].read_text()
    assert "icl-linear-transformer-cpu" in md and "icl-linear-gla-cpu" not in md
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_build_icll_report(tmp_path):
    for model, acc in [("mha", 0.9), ("lstm", 0.5)]:
        d = tmp_path / model
        d.mkdir()
        r = {"finished": True, "config": {"name": f"icll-{model}-100-cpu", "task": {"name": "icll", "num_train_dfas": 100},
                                          "model": {"mixers": model}},
             "metrics": {"accuracy": acc, "tvd": 1 - acc, "num_examples": 10, "ngram": {"2": {"accuracy": 0.7, "tvd": 0.4}}}}
        (d / "results.json").write_text(json.dumps(r))
    paths = build_report({"kind": "icll", "title": "T", "cells": [], "paper": "ordering"}, tmp_path)
    md = paths[0].read_text()
    assert "| mha | 0.900 / 0.100 |" in md and "| lstm | 0.500 / 0.500 |" in md
    assert "baseline: in-context 2-gram | 0.700 / 0.400" in md and "ordering" in md
    assert "accuracy 0.9000" in icll.run_summary(r | {"metrics": {"accuracy": 0.9, "tvd": 0.1}})
    assert "| lstm | 100 | – | – | – | – |" in md  # a cell without its budget still gets a row
    assert (tmp_path / "icll-accuracy.png").stat().st_size > 0  # one DFA count: bars


def test_icll_report_plots_accuracy_against_dfas(tmp_path):
    for model, dfas in [("mha", 100), ("mha", 800), ("lstm", 100), ("lstm", 800)]:
        d = tmp_path / f"{model}-{dfas}"
        d.mkdir()
        r = {"finished": True, "config": {"name": f"icll-{model}-{dfas}-cpu",
                                          "task": {"name": "icll", "num_train_dfas": dfas}, "model": {"mixers": model}},
             "metrics": {"accuracy": dfas / 1000, "tvd": 0.5, "num_examples": 10}}
        (d / "results.json").write_text(json.dumps(r))
    paths = build_report({"kind": "icll", "title": "T", "cells": [], "paper": None}, tmp_path)
    assert tmp_path / "icll-accuracy.png" in paths and (tmp_path / "icll-accuracy.png").stat().st_size > 0
    assert "![accuracy](icll-accuracy.png)" in paths[0].read_text()


def test_icll_report_cells_table_and_loss_curves(tmp_path):
    for model, loss in [("mha", 1.9), ("mamba", 1.6)]:
        d = tmp_path / model
        d.mkdir()
        r = {"finished": True, "wall_time_s": 612.4, "train": {"steps": 400, "loss": loss},
             "config": {"name": f"icll-{model}-800-cpu", "task": {"name": "icll", "num_train_dfas": 800},
                        "train": {"batch_size": 32}},
             "metrics": {"accuracy": 0.6, "tvd": 0.5}}
        (d / "results.json").write_text(json.dumps(r))
        (d / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "split": "train", "loss": loss + 1 / s})
                                                   for s in (100, 200, 300, 400)))
    paths = build_report({"kind": "icll", "title": "T", "cells": [], "paper": None}, tmp_path)
    md = paths[0].read_text()
    # 400 steps of 32 over 800 languages: 16 prompts per language.
    assert "| mamba | 800 | 400 × 32 | 16.0 | 1.600 | 612 |" in md and "| mha | 800 | 400 × 32 | 16.0 | 1.900 | 612 |" in md
    assert (tmp_path / "icll-train-loss.png").stat().st_size > 0 and "icll-train-loss.png" in md


def test_icll_report_shows_a_diverged_cell(tmp_path):
    for model, status in [("mha", None), ("lstm", "diverged")]:
        d = tmp_path / model
        d.mkdir()
        r = {"config": {"name": f"icll-{model}-100-cpu", "task": {"name": "icll", "num_train_dfas": 100}}}
        r |= {"status": status} if status else {"finished": True, "metrics": {"accuracy": 0.9, "tvd": 0.1}}
        (d / "results.json").write_text(json.dumps(r))
    paths = build_report({"kind": "icll", "title": "T", "cells": [], "paper": None}, tmp_path)
    md = paths[0].read_text()
    assert "| mha | 0.900 / 0.100 |" in md and "| lstm | diverged |" in md
    assert len(load_results(tmp_path, with_diverged=True)) == 2  # the diverged run beside the finished one
    assert len(load_results(tmp_path)) == 1  # what the notebooks read: finished runs only
