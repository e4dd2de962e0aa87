"""Time series for long-sequence forecasting (Informer, Zhou et al. 2021): loaders, splits, scaling, windows.

Two sources, both offline:

* **statsmodels' datasets** (real series the registry package ships;
  :data:`STATSMODELS_SERIES`): ``co2`` (Mauna Loa CO₂, weekly 1958–2001, 2,284
  points; its 59 missing weeks are filled by linear interpolation between the
  neighbouring weeks), ``sunspots`` (yearly sunspot numbers 1700–2008, 309
  points), ``elnino`` (monthly sea-surface temperature 1950–2010, the 61 × 12
  table read row by row: 732 points), ``macrodata`` (US quarterly macro data
  1959–2009, 203 rows × 12 columns, target ``realgdp``).
* **the paper's CSVs** from a manual directory (:data:`CSV_DATASETS`; file
  names and targets as the authors' ``main_informer.py``): ``ETTh1.csv``,
  ``ETTh2.csv``, ``ETTm1.csv`` (``date`` + ``HUFL, HULL, MUFL, MULL, LUFL,
  LULL, OT``, target ``OT``), ``ECL.csv`` (321 clients, target ``MT_320``),
  ``WTH.csv`` (target ``WetBulbCelsius``). A missing file is one
  :class:`~seqjax.errors.ConfigError` line naming the expected path.

Columns (the authors' ``Dataset_Custom`` order): the non-target columns in
file order, then the target last. ``features="S"`` keeps the target only,
``"M"`` every column (multivariate in, multivariate out).

Splits (:func:`split_borders`, the authors' data loader): ETT hourly ``12 / 4
/ 4`` months of 30 days (``8,640 / 2,880 / 2,880`` hours; ETTm1 × 4 for
15-minute steps); every other series ``70 % / 10 % / 20 %`` chronologically
(``int(0.7 n)``, ``int(0.2 n)``, the rest). The validation and test segments
start ``seq_len`` steps early, so their first window's history is the end of
the previous split (as the authors' borders do).

Scaling (:func:`fit_scaler`): per column, mean and population standard
deviation (``ddof=0``) of the *training* segment, applied to the whole series;
Informer reports MSE/MAE on this standardised scale (its ``inverse=False``
default). A constant training column gets std 1 (the authors' scaler would
divide by 0).

Windows (:func:`make_windows`): for a start ``i`` of a segment, the history
``x[i : i + seq_len]``, the decoder's known start ``x[i + seq_len − label_len
: i + seq_len]`` followed by ``pred_len`` zeros (Informer's generative decoder
input), and the horizon ``x[i + seq_len : i + seq_len + pred_len]``; each with
its time features. A segment of ``n`` steps has ``n − seq_len − pred_len + 1``
windows.

Time features (:func:`time_features`, the authors' ``timeenc=1`` encoding,
each in ``[−0.5, 0.5]``): hourly ``hour/23, weekday/6, (day−1)/30,
(dayofyear−1)/365`` (minus 0.5 each); 15-minute steps add ``minute/59`` first;
weekly ``(day−1)/30, (isoweek−1)/52``; monthly and quarterly ``(month−1)/11``;
yearly none.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np

from seqjax.errors import ConfigError

STATSMODELS_SERIES = ("co2", "sunspots", "elnino", "macrodata")
"""Series read from ``statsmodels.datasets`` (no download)."""
CSV_DATASETS = {
    "ETTh1": ("ETTh1.csv", "OT", "h"),
    "ETTh2": ("ETTh2.csv", "OT", "h"),
    "ETTm1": ("ETTm1.csv", "OT", "t"),
    "ECL": ("ECL.csv", "MT_320", "h"),
    "WTH": ("WTH.csv", "WetBulbCelsius", "h"),
}
"""The paper's datasets: ``name -> (file, target column, frequency)``."""
DATASETS = STATSMODELS_SERIES + tuple(CSV_DATASETS)
FEATURES = ("S", "M")
ETT_MONTH_STEPS = {"ETTh1": 30 * 24, "ETTh2": 30 * 24, "ETTm1": 30 * 24 * 4}
"""Steps per (30-day) month of the ETT files: the authors' split unit."""


@dataclasses.dataclass(frozen=True)
class Series:
    """A multivariate series, target last.

    Attributes:
      name: dataset name.
      values: ``(T, C)`` float64, chronological.
      columns: the ``C`` column names (the target last).
      dates: ``(T,)`` ``datetime64[ns]`` time stamps.
      freq: ``"h"``, ``"t"`` (15 minutes), ``"w"``, ``"m"``, ``"q"`` or ``"y"``.
    """

    name: str
    values: np.ndarray
    columns: tuple
    dates: np.ndarray
    freq: str

    def select(self, features: str) -> Series:
        """The target column only (``"S"``) or every column (``"M"``)."""
        if features == "M":
            return self
        return dataclasses.replace(self, values=self.values[:, -1:], columns=self.columns[-1:])


def _target_last(frame, target: str):
    cols = [c for c in frame.columns if c != target] + [target]
    return frame[cols]


@functools.lru_cache(maxsize=8)
def load_statsmodels(name: str) -> Series:
    """One of :data:`STATSMODELS_SERIES`, as shipped by statsmodels (see the module docstring).

    Args:
      name: ``co2``, ``sunspots``, ``elnino`` or ``macrodata``.

    Returns:
      The :class:`Series`.

    Raises:
      ConfigError: an unknown name, or statsmodels is not installed.
    """
    if name not in STATSMODELS_SERIES:
        raise ConfigError(f"config.task.dataset={name!r} is not allowed; allowed: {', '.join(DATASETS)}")
    try:
        import pandas as pd
        from statsmodels import datasets
    except ImportError as e:  # pragma: no cover - statsmodels is a dependency
        raise ConfigError(f"config.task.dataset={name!r} needs statsmodels (pip install statsmodels): {e}") from e
    if name == "co2":
        frame = datasets.co2.load_pandas().data.astype(float).interpolate(method="linear")
        return Series(name, frame.to_numpy(np.float64), ("co2",), frame.index.to_numpy("datetime64[ns]"), "w")
    if name == "sunspots":
        frame = datasets.sunspots.load_pandas().data
        dates = pd.to_datetime(frame["YEAR"].astype(int).astype(str), format="%Y")
        return Series(name, frame[["SUNACTIVITY"]].to_numpy(np.float64), ("SUNACTIVITY",),
                      dates.to_numpy("datetime64[ns]"), "y")
    if name == "elnino":
        frame = datasets.elnino.load_pandas().data
        values = frame.drop(columns="YEAR").to_numpy(np.float64).reshape(-1, 1)  # row by row: Jan..Dec of each year
        dates = pd.date_range(f"{int(frame['YEAR'].iloc[0])}-01-01", periods=len(values), freq="MS")
        return Series(name, values, ("sst",), dates.to_numpy("datetime64[ns]"), "m")
    frame = datasets.macrodata.load_pandas().data
    # The first day of each quarter (no PeriodIndex.from_fields: it needs pandas >= 2.2).
    dates = pd.to_datetime(pd.DataFrame({"year": frame["year"].astype(int),
                                         "month": 3 * (frame["quarter"].astype(int) - 1) + 1, "day": 1}))
    frame = _target_last(frame.drop(columns=["year", "quarter"]), "realgdp")
    return Series(name, frame.to_numpy(np.float64), tuple(frame.columns), np.asarray(dates, "datetime64[ns]"), "q")


def csv_path(manual_dir: str | pathlib.Path, name: str) -> pathlib.Path:
    """The expected file of a paper dataset: ``manual_dir / CSV_DATASETS[name][0]``."""
    return pathlib.Path(manual_dir).expanduser() / CSV_DATASETS[name][0]


def read_csv(manual_dir: str | pathlib.Path | None, name: str) -> Series:
    """A paper dataset's CSV (``date`` + value columns) from ``manual_dir``; it never downloads.

    Args:
      manual_dir: the folder holding the file.
      name: a key of :data:`CSV_DATASETS`.

    Returns:
      The :class:`Series` (the target column last).

    Raises:
      ConfigError: no ``manual_dir``, the file is missing, or it lacks ``date`` or the target column.
    """
    import pandas as pd

    file, target, freq = CSV_DATASETS[name]
    if not manual_dir:
        raise ConfigError(f"config.task.manual_dir={manual_dir!r} is not allowed with dataset={name!r}; allowed: the "
                          f"folder holding {file}")
    path = csv_path(manual_dir, name)
    if not path.is_file():
        raise ConfigError(f"config.task.manual_dir: {path} not found; expected {file} (the Informer dataset "
                          f"{name!r}: date + value columns, target {target!r}) in that folder")
    frame = pd.read_csv(path)
    for column in ("date", target):
        if column not in frame.columns:
            raise ConfigError(f"{path}: no {column!r} column; expected date + value columns with target {target!r}")
    dates = pd.to_datetime(frame.pop("date")).to_numpy("datetime64[ns]")
    frame = _target_last(frame, target)
    return Series(name, frame.to_numpy(np.float64), tuple(frame.columns), dates, freq)


def load(name: str, manual_dir: str | None = None) -> Series:
    """Any of :data:`DATASETS` (statsmodels' series, or a paper CSV from ``manual_dir``)."""
    if name in CSV_DATASETS:
        return read_csv(manual_dir, name)
    return load_statsmodels(name)


def split_borders(name: str, length: int, seq_len: int) -> dict[str, tuple[int, int]]:
    """The ``[start, end)`` steps of the train, val and test segments (the authors' borders).

    Args:
      name: dataset name (ETT files split by months, the others 70/10/20 %).
      length: ``T``, steps of the series.
      seq_len: history length (val and test start ``seq_len`` steps before their first target).

    Returns:
      ``{"train": (0, a), "val": (a - seq_len, b), "test": (b - seq_len, c)}``.

    Raises:
      ConfigError: an ETT file shorter than its 20 months.
    """
    if name in ETT_MONTH_STEPS:
        month = ETT_MONTH_STEPS[name]
        a, b, c = 12 * month, 16 * month, 20 * month
        if length < c:
            raise ConfigError(f"{name}: {length} rows, fewer than the 20 months ({c} rows) of the paper's split")
    else:
        a, test = int(length * 0.7), int(length * 0.2)
        b, c = length - test, length
    return {"train": (0, a), "val": (a - seq_len, b), "test": (b - seq_len, c)}


def fit_scaler(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std (``ddof=0``) of the training segment; std 0 becomes 1.

    Args:
      train: ``(n, C)`` values.

    Returns:
      ``(mean, std)``, each ``(C,)`` float64.
    """
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


_FEATURES = {
    "h": ("hour", "day_of_week", "day", "day_of_year"),
    "t": ("minute", "hour", "day_of_week", "day", "day_of_year"),
    "w": ("day", "week"),
    "m": ("month",),
    "q": ("month",),
    "y": (),
}
_SCALE = {"minute": (0, 59), "hour": (0, 23), "day_of_week": (0, 6), "day": (1, 30), "day_of_year": (1, 365),
          "week": (1, 52), "month": (1, 11)}


def time_features(dates: np.ndarray, freq: str) -> np.ndarray:
    """The authors' ``timeenc=1`` time features: ``(field − offset) / span − 0.5`` per field of ``freq``.

    Args:
      dates: ``(T,)`` datetime64.
      freq: a key of the module docstring's list.

    Returns:
      ``(T, k)`` float32 (``k = 0`` for yearly series).
    """
    import pandas as pd

    index = pd.DatetimeIndex(dates)
    cols = []
    for field in _FEATURES[freq]:
        value = np.asarray(index.isocalendar().week if field == "week" else getattr(index, field), np.float64)
        offset, span = _SCALE[field]
        cols.append((value - offset) / span - 0.5)
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((len(index), 0), np.float32)


def num_windows(segment_length: int, seq_len: int, pred_len: int) -> int:
    """Windows of a segment: ``n − seq_len − pred_len + 1`` (0 if negative)."""
    return max(segment_length - seq_len - pred_len + 1, 0)


def make_windows(values: np.ndarray, marks: np.ndarray, starts: np.ndarray, seq_len: int, label_len: int,
                 pred_len: int) -> dict[str, np.ndarray]:
    """History, decoder input and horizon windows at ``starts`` (indices into ``values``).

    Args:
      values: ``(T, C)`` scaled series (or one segment of it).
      marks: ``(T, k)`` time features of the same steps.
      starts: ``(n,)`` window starts ``i``; each needs ``i + seq_len + pred_len <= T``.
      seq_len, label_len, pred_len: history, known decoder start, horizon (``label_len <= seq_len``).

    Returns:
      float32 arrays: ``history (n, seq_len, C)``, ``history_marks (n, seq_len, k)``,
      ``decoder (n, label_len + pred_len, C)`` (the last ``label_len`` history
      values, then zeros), ``decoder_marks (n, label_len + pred_len, k)`` (time
      stamps are known in advance), ``targets (n, pred_len, C)``.
    """
    starts = np.asarray(starts, np.int64)
    hist = starts[:, None] + np.arange(seq_len)
    dec = starts[:, None] + seq_len - label_len + np.arange(label_len + pred_len)
    horizon = starts[:, None] + seq_len + np.arange(pred_len)
    decoder = values[dec].astype(np.float32)
    decoder[:, label_len:] = 0.0  # the horizon's values are what the model predicts: never fed
    return {"history": values[hist].astype(np.float32), "history_marks": marks[hist].astype(np.float32),
            "decoder": decoder, "decoder_marks": marks[dec].astype(np.float32),
            "targets": values[horizon].astype(np.float32)}


__all__ = ["CSV_DATASETS", "DATASETS", "ETT_MONTH_STEPS", "FEATURES", "STATSMODELS_SERIES", "Series", "csv_path",
           "fit_scaler", "load", "load_statsmodels", "make_windows", "num_windows", "read_csv", "split_borders",
           "time_features"]
