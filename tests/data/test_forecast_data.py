"""Forecasting data (seqjax.data.forecast): windows, splits, scaling, time features, the CSV reader and
statsmodels' series."""

import numpy as np
import pytest

from seqjax.data import forecast as fd
from seqjax.errors import ConfigError

ETT_HEADER = "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT"


def test_windows_match_hand_indexing():
    rng = np.random.default_rng(0)
    values, marks = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    seq_len, label_len, pred_len = 7, 3, 5
    starts = np.array([0, 4, 28])  # 28 + 7 + 5 = 40: the last window that fits
    w = fd.make_windows(values, marks, starts, seq_len, label_len, pred_len)
    for n, i in enumerate(starts):
        np.testing.assert_allclose(w["history"][n], values[i:i + 7], rtol=1e-6)
        np.testing.assert_allclose(w["history_marks"][n], marks[i:i + 7], rtol=1e-6)
        np.testing.assert_allclose(w["decoder"][n, :3], values[i + 4:i + 7], rtol=1e-6)  # the last label_len of history
        np.testing.assert_array_equal(w["decoder"][n, 3:], 0.0)
        np.testing.assert_allclose(w["decoder_marks"][n], marks[i + 4:i + 12], rtol=1e-6)
        np.testing.assert_allclose(w["targets"][n], values[i + 7:i + 12], rtol=1e-6)
    assert fd.num_windows(40, seq_len, pred_len) == 29


def test_split_borders_ett_and_custom():
    s = 96
    assert fd.split_borders("ETTh1", 17420, s) == {"train": (0, 8640), "val": (8640 - s, 11520),
                                                   "test": (11520 - s, 14400)}
    assert fd.split_borders("ETTm1", 69680, s) == {"train": (0, 34560), "val": (34560 - s, 46080),
                                                   "test": (46080 - s, 57600)}
    # 70 / 10 / 20 %: int(0.7 n), int(0.2 n) and the rest, as the authors' Dataset_Custom.
    assert fd.split_borders("co2", 2284, 24) == {"train": (0, 1598), "val": (1574, 1828), "test": (1804, 2284)}
    with pytest.raises(ConfigError, match="20 months"):
        fd.split_borders("ETTh2", 14399, s)


def test_scaler_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=(50, 4))
    x[:, 2] = 7.0  # constant column: std 1, not a division by zero
    mean, std = fd.fit_scaler(x)
    np.testing.assert_allclose(mean, x.sum(0) / 50, rtol=1e-12)
    ref = np.sqrt(((x - x.sum(0) / 50) ** 2).sum(0) / 50)  # population std (ddof=0)
    ref[2] = 1.0
    np.testing.assert_allclose(std, ref, rtol=1e-12)


def test_time_features_hand_computed():
    dates = np.array(["2016-07-01T05:00", "2016-12-31T23:45"], "datetime64[ns]")
    h = fd.time_features(dates, "h")
    # 2016-07-01 is a Friday (weekday 4), day 183 of the (leap) year; 2016-12-31 a Saturday, day 366.
    np.testing.assert_allclose(h[0], [5 / 23 - .5, 4 / 6 - .5, 0 / 30 - .5, 182 / 365 - .5], rtol=1e-6)
    np.testing.assert_allclose(h[1], [23 / 23 - .5, 5 / 6 - .5, 30 / 30 - .5, 365 / 365 - .5], rtol=1e-6)
    t = fd.time_features(dates, "t")
    np.testing.assert_allclose(t[:, 0], [0 / 59 - .5, 45 / 59 - .5], rtol=1e-6)
    assert fd.time_features(dates, "y").shape == (2, 0)
    np.testing.assert_allclose(fd.time_features(dates, "m")[:, 0], [6 / 11 - .5, 11 / 11 - .5], rtol=1e-6)


def test_csv_reader_real_layout(tmp_path):
    rows = ["2016-07-01 00:00:00,5.827,2.009,1.599,0.462,4.203,1.340,30.531",
            "2016-07-01 01:00:00,5.693,2.076,1.492,0.426,4.142,1.371,27.787",
            "2016-07-01 02:00:00,5.157,1.741,1.279,0.355,3.777,1.218,27.787"]
    (tmp_path / "ETTh1.csv").write_text("\n".join([ETT_HEADER] + rows) + "\n")
    s = fd.read_csv(tmp_path, "ETTh1")
    assert s.columns == ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT") and s.freq == "h"
    np.testing.assert_allclose(s.values[1], [5.693, 2.076, 1.492, 0.426, 4.142, 1.371, 27.787])
    assert str(s.dates[2]) .startswith("2016-07-01T02:00")
    assert s.select("S").columns == ("OT",)
    np.testing.assert_allclose(s.select("S").values[:, 0], [30.531, 27.787, 27.787])


def test_csv_reader_target_moved_last(tmp_path):
    (tmp_path / "WTH.csv").write_text("date,WetBulbCelsius,Visibility\n2010-01-01 00:00:00,1.5,10\n")
    s = fd.read_csv(tmp_path, "WTH")
    assert s.columns == ("Visibility", "WetBulbCelsius")
    np.testing.assert_allclose(s.values, [[10.0, 1.5]])


def test_missing_csv_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        fd.read_csv(tmp_path, "ETTm1")
    assert "ETTm1.csv" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="manual_dir"):
        fd.load("ECL", None)
    (tmp_path / "ECL.csv").write_text("date,MT_001\n2012-01-01 00:00:00,1\n")
    with pytest.raises(ConfigError, match="MT_320"):
        fd.read_csv(tmp_path, "ECL")


def test_statsmodels_series():
    co2 = fd.load("co2")
    assert co2.values.shape == (2284, 1) and np.isfinite(co2.values).all()
    assert co2.values[0, 0] == 316.1  # the first week, as shipped
    el = fd.load("elnino")
    assert el.values.shape == (732, 1) and el.freq == "m"
    np.testing.assert_allclose(el.values[:2, 0], [23.11, 24.20])  # Jan, Feb 1950: the table read row by row
    macro = fd.load("macrodata")
    assert macro.values.shape == (203, 12) and macro.columns[-1] == "realgdp"
    np.testing.assert_allclose(macro.values[0, -1], 2710.349)
    assert [str(d)[:10] for d in macro.dates[:2]] == ["1959-01-01", "1959-04-01"]
    assert str(macro.dates[-1])[:7] == "2009-07"
    assert fd.load("sunspots").values.shape == (309, 1)
    with pytest.raises(ConfigError, match="allowed"):
        fd.load("nile")
