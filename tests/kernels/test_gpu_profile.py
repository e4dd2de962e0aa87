"""``benchmarks.gpu_profile``: the program ncu runs (tiny shapes on CPU) and the summary of ncu's CSV.

The CSV below has the layout of ``ncu --csv --page details`` (one record per
kernel, section and metric, with ncu's ``==PROF==`` lines and the profiled
program's output around it); no test here needs ncu or a GPU.
"""

import json

import pytest

from benchmarks import gpu_profile

CSV = '''==PROF== Connected to process 4242 (/usr/bin/python3.12)
==PROF== Profiling "kernel_a": 0%....50%....100% - 9 passes
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","4242","python3.12","127.0.0.1","fusion_3","1","7","(128, 1, 1)","(1024, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","usecond","12.35"
"0","4242","python3.12","127.0.0.1","fusion_3","1","7","(128, 1, 1)","(1024, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Memory Throughput","%","81.20"
"1","4242","python3.12","127.0.0.1","selective_scan_bwd","1","7","(128, 1, 1)","(2, 16, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","msecond","11.52"
"1","4242","python3.12","127.0.0.1","selective_scan_bwd","1","7","(128, 1, 1)","(2, 16, 1)","0","9.0","GPU Speed Of Light Throughput","Compute (SM) Throughput","%","3.10"
"1","4242","python3.12","127.0.0.1","selective_scan_bwd","1","7","(128, 1, 1)","(2, 16, 1)","0","9.0","Launch Statistics","Registers Per Thread","register/thread","168"
"1","4242","python3.12","127.0.0.1","selective_scan_bwd","1","7","(128, 1, 1)","(2, 16, 1)","0","9.0","Launch Statistics","Dynamic Shared Memory Per Block","byte/block","228,352.00"
"1","4242","python3.12","127.0.0.1","selective_scan_bwd","1","7","(128, 1, 1)","(2, 16, 1)","0","9.0","Occupancy","Achieved Occupancy","%","6.25"
"1","4242","python3.12","127.0.0.1","selective_scan_bwd","1","7","(128, 1, 1)","(2, 16, 1)","0","9.0","Command line profiler metrics","smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio","ratio","21.5"
"1","4242","python3.12","127.0.0.1","selective_scan_bwd","1","7","(128, 1, 1)","(2, 16, 1)","0","9.0","Command line profiler metrics","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio","ratio","2.25"
"1","4242","python3.12","127.0.0.1","selective_scan_bwd","1","7","(128, 1, 1)","(2, 16, 1)","0","9.0","Command line profiler metrics","smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio","ratio","7.0"
==PROF== Disconnected from process 4242
'''


def test_parse_reads_kernels_metrics_and_stalls(tmp_path):
    path = tmp_path / "ncu-selective_scan-float32.csv"
    path.write_text(CSV)
    fusion, scan = gpu_profile.parse(path)
    assert (fusion["id"], fusion["name"], fusion["memory_throughput_pct"]) == (0, "fusion_3", 81.2)
    assert fusion["duration"] == pytest.approx(12.35)  # µs
    assert scan["duration"] == pytest.approx(11520.0)  # ms -> µs
    assert scan["grid"] == "(2, 16, 1)" and scan["registers"] == 168.0
    assert scan["dynamic_shared"] == 228352.0  # thousands separator dropped
    assert scan["units"]["dynamic_shared"] == "byte/block" and scan["units"]["duration"] == "us"
    assert list(scan["stalls"]) == ["barrier", "mio_throttle", "long_scoreboard"]  # largest first
    assert scan["stalls"]["barrier"] == 21.5


def test_summarise_writes_json_and_table(tmp_path, capsys):
    path = tmp_path / "ncu-selective_scan-float32.csv"
    path.write_text(CSV)
    out = tmp_path / "profile.json"
    assert gpu_profile.main(["summarise", str(path), "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert [k["name"] for k in summary["ncu-selective_scan-float32"]] == ["fusion_3", "selective_scan_bwd"]
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ncu-")]
    # Longest kernel first, its three main stalls.
    assert rows[0].split(" | ")[1] == "selective_scan_bwd" and "barrier 21.5, mio_throttle 7.0" in rows[0]


def test_summarise_missing_file_exits_2(tmp_path, capsys):
    assert gpu_profile.main(["summarise", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_run_quick_executes_one_forward_backward(capsys):
    # What ncu profiles, at the tiny shapes (kernels interpreted on CPU).
    assert gpu_profile.main(["run", "--op", "selective_scan", "--quick"]) == 0
    assert "ran forward+backward once" in capsys.readouterr().err


def test_run_unknown_op_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_profile.main(["run", "--op", "nope", "--quick"])
    assert exit_info.value.code == 2
    assert "is not one of" in capsys.readouterr().err
