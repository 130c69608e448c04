"""A hostile corpus, tried as a user would: data files generated here under tmp_path, bad parameters, damaged
caches, a read-only or full disk, a busy run folder. Each case asserts the exit code, a single `error:` line
(no traceback) where it fails, and counts that add up (rows in = kept + dropped) where it loads.

The CLI runs in this process (`cli.main`, the function `python -m tradelib` calls); a few cases also run it as
a real process, where the one-line promise is about everything the process writes to stderr.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tradelib.cli import main
from tradelib.config import Config
from tradelib.data import cache, dataset
from tradelib.data.clean import clean_ohlcv
from tradelib.data.load import DataError, existing_data_path, load_ohlcv
from tradelib.paths import FileLock, repo_root, resolve_data_path
from tradelib.report.inputs import load_featureset
from tradelib.sweep import make_plan

ROOT = repo_root()
SMALL = ["-p", "window", "4", "-p", "max_gap_bars", "50"]
COUNTS = re.compile(r"rows in ([\d,]+), kept ([\d,]+), dropped ([\d,]+)")
TINY_TRAIN = ["-p", "synth_symbols", "3", "-p", "synth_bars", "400", "-p", "window", "8", "-p", "hidden", "8",
              "-p", "layers", "1", "-p", "model", "mlp", "-p", "device", "cpu", "-p", "compile", "off",
              "-p", "batch_size", "32", "-p", "epochs", "1", "-p", "log_every", "2"]


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("TRADELIB_DEBUG", raising=False)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    """The one `error:` line, last on stderr (a progress bar may come before it); never a traceback."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == errors[0]
    return errors[0]


def counts(out: str) -> tuple[int, int, int]:
    rows_in, kept, dropped = (int(x.replace(",", "")) for x in COUNTS.search(out).groups())
    assert rows_in == kept + dropped
    return rows_in, kept, dropped


def bars(n: int = 200, start: str = "2024-01-01", freq: str = "1D", seed: int = 0, price: float = 100.0,
         volume: float = 1e6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    return pd.DataFrame({"timestamp": pd.date_range(start, periods=n, freq=freq, tz="UTC"), "open": open_,
                         "high": np.maximum(open_, close) * 1.002, "low": np.minimum(open_, close) * 0.998,
                         "close": close, "volume": volume * rng.uniform(0.5, 1.5, n)})


def write_csv(path: Path, df: pd.DataFrame, date_fmt: str = "%Y-%m-%d %H:%M", sep: str = ",", decimal: str = ".",
              bom: bool = False, crlf: bool = False) -> Path:
    text = df.assign(timestamp=df.timestamp.dt.strftime(date_fmt)).to_csv(
        sep=sep, decimal=decimal, index=False, lineterminator="\r\n" if crlf else "\n")
    path.write_bytes((("\ufeff" if bom else "") + text).encode())
    return path


# ---------------------------------------------------------------------------------------------------------
# data files


def test_ambiguous_day_first_dates_take_the_regular_grid_and_say_so(tmp_path, capsys):
    """Hourly bars of 1-10 January written day-first: every date also parses month-first (all days <= 12), which
    would jump a month at each midnight; the day-first reading is the regular one, and the summary says so."""
    df = bars(240, freq="1h")
    path = write_csv(tmp_path / "EURUSD.csv", df, date_fmt="%d/%m/%Y %H:%M")
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    assert code == 0, err
    assert counts(out) == (240, 240, 0)
    assert "timestamps: dates read day-first (%d/%m/%Y %H:%M)" in out
    pd.testing.assert_series_equal(load_ohlcv(path, date_format="", data_timezone="UTC").timestamp,
                                   df.timestamp.astype("datetime64[ns, UTC]"))


def test_seven_daily_bars_day_first_are_not_read_as_months(tmp_path):
    """The issue's case: 01/01/2024 .. 07/01/2024 are seven days, not January to July."""
    df = bars(7)
    raw = load_ohlcv(write_csv(tmp_path / "x.csv", df, date_fmt="%d/%m/%Y"), date_format="", data_timezone="UTC")
    assert raw.timestamp.dt.day.tolist() == list(range(1, 8)) and (raw.timestamp.dt.month == 1).all()
    assert raw.attrs["timestamp_notes"] and "day-first" in raw.attrs["timestamp_notes"][0]


def test_dates_that_read_alike_both_ways_are_refused_until_date_format_is_set(tmp_path, capsys):
    """01/01, 02/02, ... 12/12: both orders give the same dates, so neither is more regular: one line asking for
    date_format; with it the file loads."""
    days = pd.DatetimeIndex([pd.Timestamp(2024, m, m, h, tz="UTC") for m in range(1, 13) for h in range(24)])
    df = bars(len(days)).assign(timestamp=days)
    path = write_csv(tmp_path / "amb.csv", df, date_fmt="%d/%m/%Y %H:%M")
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    line = one_error(err)
    assert code == 2 and str(path) in line and "set date_format" in line and "%d/%m/%Y %H:%M" in line
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL, "-p", "date_format", "%d/%m/%Y %H:%M")
    assert code == 0, err
    assert counts(out)[0] == len(df)


def test_a_date_format_that_does_not_fit_is_named(tmp_path, capsys):
    path = write_csv(tmp_path / "x.csv", bars(50), date_fmt="%Y-%m-%d")
    code, out, err = cli(capsys, "prepare", "--data", path, "-p", "date_format", "%d/%m/%Y")
    line = one_error(err)
    assert code == 2 and "50 of 50 timestamps are unparseable with date_format '%d/%m/%Y'" in line


def test_bom_and_crlf(tmp_path, capsys):
    df = bars(150)
    path = write_csv(tmp_path / "AAA.csv", df, date_fmt="%Y-%m-%d", bom=True, crlf=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbftimestamp") and b"\r\n" in path.read_bytes()
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    assert code == 0, err
    assert counts(out) == (150, 150, 0)
    np.testing.assert_allclose(load_ohlcv(path, date_format="", data_timezone="UTC").close, df.close, rtol=1e-12)


def test_semicolons_with_decimal_commas(tmp_path, capsys):
    df = bars(150)
    path = write_csv(tmp_path / "DAX.csv", df, date_fmt="%Y-%m-%d", sep=";", decimal=",")
    assert re.search(r";\d+,\d+;", path.read_text())
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    assert code == 0, err
    assert counts(out) == (150, 150, 0)
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    np.testing.assert_allclose(raw.close, df.close, rtol=1e-12)
    assert raw.attrs["decimal_comma"] == ["DAX.csv"]


def test_semicolons_with_decimal_points(tmp_path):
    df = bars(50)
    raw = load_ohlcv(write_csv(tmp_path / "x.csv", df, sep=";"), date_format="", data_timezone="UTC")
    np.testing.assert_allclose(raw.close, df.close, rtol=1e-12)


EU_HEAD = "Date;Open;High;Low;Close;Volume"


def eu_file(path: Path, volumes: list[str] | None = None, closes: list[str] | None = None) -> Path:
    """20 daily bars of a `;`-separated decimal-comma export (a German broker's), with these volume and close
    cells where given."""
    volumes = volumes or [str(1000 + d) for d in range(20)]
    closes = closes or ["100,90"] * 20
    rows = [f"2024-01-{d + 1:02d};100,35;101,20;99,80;{c};{v}" for d, (v, c) in enumerate(zip(volumes, closes))]
    path.write_text("\n".join([EU_HEAD, *rows]) + "\n")
    return path


def test_a_placeholder_in_a_decimal_comma_file_is_the_one_counted_bad_cell(tmp_path):
    """One '-' close sends the read to the text path; the other closes are still read with the decimal comma,
    and the '-' is one non-numeric cell whose row is dropped (bad_close)."""
    path = eu_file(tmp_path / "eu_dash.csv", closes=["100,90"] * 10 + ["-"] + ["100,90"] * 9)
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    assert raw.attrs["non_numeric"] == {"close": 1} and raw.attrs["decimal_comma"] == ["eu_dash.csv"]
    assert np.isnan(raw.close[10]) and (raw.close.drop(index=10) == 100.9).all() and (raw.open == 100.35).all()
    clean, rep = clean_ohlcv(raw)
    assert len(clean) == 19 and [(c["rule"], c["rows"]) for c in rep.counts] == [("bad_close", 1)]


def test_a_decimal_comma_file_whose_first_row_has_whole_numbers_reads_every_row(tmp_path):
    """A `;` export whose first bar is quoted in whole numbers (38000) and some later closes with a decimal comma
    (38001,5): the first row with a fraction settles the decimal mark, not the first row alone, where the closes
    '38001,5' were not numbers and 60 of the 300 rows were dropped as bad_close."""
    rows = [f"{pd.Timestamp('2024-01-01') + pd.Timedelta(days=d):%Y-%m-%d};{38000 + d % 7};{38010 + d % 7};"
            f"{37990 + d % 7};{38000 + d % 7}{',5' if d % 5 == 1 else ''};5000" for d in range(300)]
    path = tmp_path / "NI225.csv"
    path.write_text("\n".join([EU_HEAD, *rows]) + "\n")
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    expected = pd.read_csv(path, sep=";", decimal=",")
    assert raw.attrs["decimal_comma"] == ["NI225.csv"] and raw.attrs["non_numeric"] == {}
    np.testing.assert_array_equal(raw.close, expected.Close)
    assert raw.close[1] == 38001.5
    assert len(clean_ohlcv(raw)[0]) == 300
    # the first row with a fraction settles the mark: decimal points, then a volume with a thousands comma
    rows = [f"2024-01-{d + 1:02d};100.35;101.20;99.80;100.90;{'950' if d < 5 else '1,200'}" for d in range(20)]
    path.write_text("\n".join([EU_HEAD, *rows]) + "\n")
    with pytest.raises(DataError, match="'1,200' have ',' between groups of three digits"):
        load_ohlcv(path, date_format="", data_timezone="UTC")


@pytest.mark.parametrize("cells,sep,example", [
    ({"volumes": [f"{23 + d}.300" for d in range(20)]}, ";", "'23.300'"),  # 23,300 units: read as 23.3 it was
    ({"volumes": ["950", "1.200"] * 10}, ";", "'1.200'"),
    ({"closes": ["100,90"] * 19 + ["1.100,90"]}, ";", "'1.100,90'"),
    ({"closes": ['"100.90"'] * 19 + ['"1,100.90"']}, ",", "'1,100.90'"),
])
def test_numbers_with_thousands_separators_are_refused(tmp_path, cells, sep, example):
    """'23.300' in a decimal-comma file is 23,300 with a thousands dot: read with a decimal point it would be
    23.3, 1000x off. Thousands separators are not accepted: the file, column and an example are named."""
    path = eu_file(tmp_path / "x.csv", **cells)
    if sep == ",":
        path.write_text(path.read_text().replace(";", ",").replace('"100,90"', '"100.90"')
                        .replace("100,35", "100.35").replace("101,20", "101.20").replace("99,80", "99.80"))
    column = "Volume" if "volumes" in cells else "Close"
    with pytest.raises(DataError) as e:
        load_ohlcv(path, date_format="", data_timezone="UTC")
    msg = str(e.value)
    assert msg.startswith(f"{path}: column '{column}': ") and example in msg and "thousands separators" in msg


def test_decimal_commas_in_a_comma_separated_file_are_named_as_such(tmp_path):
    """'"187,15"' quoted in a ','-separated file: the refusal says what the cells are and how to export them."""
    path = tmp_path / "x.csv"
    path.write_text("timestamp,open,high,low,close,volume\n" + "".join(
        f'2024-01-{d:02d},"187,15","188,20","186,10","187,{d:02d}",1000\n' for d in range(1, 29)))
    with pytest.raises(DataError, match=re.escape(f"{path}: column 'open': 28 of 28 values are not numbers (e.g. "
                                                  f"'187,15'); decimal commas are read in files whose fields are "
                                                  f"separated by ';' or tabs")):
        load_ohlcv(path, date_format="", data_timezone="UTC")


@pytest.mark.parametrize("text_cell", [False, True])
def test_csv_symbols_are_text_and_only_an_empty_one_is_missing(tmp_path, text_cell):
    """Hong Kong codes keep their leading zeros ('0700' is not '700'), and tickers that are pandas' missing-value
    strings ('NA': National Bank of Canada on the TSX) are symbols: only an empty cell is a missing symbol. In a
    number column those strings still mean a missing value. `text_cell`: a cell that is not a number ('abc') sends
    the read to the path that infers types from the whole file; the symbols read the same."""
    names = ["0700", "0005", "NA", "NULL", "None", "nan", "N/A", ""]
    df = pd.concat([bars(20, seed=i).assign(symbol=name) for i, name in enumerate(names)], ignore_index=True)
    df = df.astype({"close": object, "volume": object})
    df.loc[3, "close"] = "NA"
    if text_cell:
        df.loc[5, "volume"] = "abc"
    path = write_csv(tmp_path / "long.csv", df, date_fmt="%Y-%m-%d")
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    assert raw.attrs["non_numeric"] == ({"volume": 1} if text_cell else {})
    assert raw.groupby("symbol").size().to_dict() == {name: 20 for name in names}
    assert raw.close.isna().sum() == 1
    assert len(load_ohlcv(path, symbol="0700", date_format="", data_timezone="UTC")) == 20
    clean, rep = clean_ohlcv(raw)
    assert sorted(clean.symbol.unique()) == sorted(names[:-1])
    assert [(c["rule"], c["symbol"], c["rows"]) for c in rep.counts if c["action"] == "dropped"] == [
        ("bad_symbol", "", 20), ("bad_close", "0700", 1)]


def test_stooq_bulk_files_load_and_a_folder_of_txt_files_says_what_to_rename(tmp_path):
    """Stooq's bulk files ('aapl.us.txt': <TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,...) were refused as missing every
    column, and a folder of them said only 'directory has no CSV or Parquet files'. The angle brackets are not
    part of the name; the folder's message names what it skipped and how to rename it."""
    df = bars(30, freq="5min", start="2024-01-02 14:30")
    text = pd.DataFrame({"<TICKER>": "AAPL.US", "<PER>": 5, "<DATE>": df.timestamp.dt.strftime("%Y%m%d"),
                         "<TIME>": df.timestamp.dt.strftime("%H%M%S"), "<OPEN>": df.open, "<HIGH>": df.high,
                         "<LOW>": df.low, "<CLOSE>": df.close, "<VOL>": df.volume, "<OPENINT>": 0}).to_csv(index=False)
    (tmp_path / "aapl.us.txt").write_text(text)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: directory has no CSV or Parquet files (1 other "
                                                  "file(s), e.g. 'aapl.us.txt': a data file's name ends in .csv")):
        load_ohlcv(tmp_path, date_format="", data_timezone="UTC")
    (tmp_path / "aapl.us.txt").rename(tmp_path / "aapl.us.csv")
    raw = load_ohlcv(tmp_path, date_format="", data_timezone="UTC")
    assert raw.symbol.unique().tolist() == ["AAPL.US"] and raw.attrs["extra_columns"] == ["<OPENINT>", "<PER>"]
    pd.testing.assert_series_equal(raw.timestamp, df.timestamp.dt.as_unit("ns"), check_names=False)
    np.testing.assert_allclose(raw.close, df.close, rtol=1e-12)


def test_rows_without_a_symbol_are_counted_under_their_file(tmp_path):
    """Empty symbol cells were dropped as bad_symbol under symbol '' alone: in a folder of files, nothing said
    which file held them. The report names the file and its count beside the rule's."""
    for name in ("x", "y"):
        df = bars(60).assign(symbol=name.upper())
        if name == "y":
            df.loc[[3, 10, 20], "symbol"] = ""
            df.loc[30, "symbol"] = "  "
        write_csv(tmp_path / f"{name}.csv", df, date_fmt="%Y-%m-%d")
    raw = load_ohlcv(tmp_path, date_format="", data_timezone="UTC")
    assert raw.attrs["missing_symbols"] == {"y.csv": 4}
    _, rep = clean_ohlcv(raw)
    assert rep.totals("dropped") == {"bad_symbol": 4} and rep.load_notes["missing_symbols"] == {"y.csv": 4}
    assert "rows without a symbol (bad_symbol): y.csv 4" in rep.summary()
    y = load_ohlcv(tmp_path / "y.csv", symbol="Y", date_format="", data_timezone="UTC")
    assert y.attrs["missing_symbols"] == {}


def test_rows_without_a_symbol_are_not_counted_as_reordered(tmp_path):
    """Rows without a symbol are dropped first (bad_symbol), yet the loader counted those of a shuffled file as
    'unsorted' under symbol '' (4 of the 2,476 'changed' of a 2,515-row file; pandas: 2,472), and a missing one
    (a Parquet null) into the total but under no symbol."""
    df = pd.concat([bars(50, seed=i).assign(symbol=s) for i, s in enumerate(("AAA", "BBB"))], ignore_index=True)
    df = df.sample(frac=1, random_state=0).reset_index(drop=True)
    df.loc[df.index[::10], "symbol"] = ""
    raw = load_ohlcv(write_csv(tmp_path / "long.csv", df, date_fmt="%Y-%m-%d"), date_format="", data_timezone="UTC")
    named = df[df.symbol != ""]
    expected = (named.timestamp < named.groupby("symbol").timestamp.cummax().groupby(named.symbol).shift())
    assert raw.attrs["unsorted_by_symbol"] == expected.groupby(named.symbol).sum().to_dict()
    assert raw.attrs["unsorted_rows"] == int(expected.sum())
    df.assign(symbol=df.symbol.replace("", None)).to_parquet(tmp_path / "long.parquet")
    long = load_ohlcv(tmp_path / "long.parquet", date_format="", data_timezone="UTC")
    assert long.attrs["unsorted_rows"] == int(expected.sum())


def test_year_9999_among_2000_rows_is_one_counted_bad_timestamp(tmp_path, capsys):
    df = bars(2000, freq="1h")
    text = write_csv(tmp_path / "x.csv", df).read_text().splitlines()
    text[1000] = "9999-12-31 00:00" + text[1000][16:]  # pandas 3 reads it (in microseconds); ns cannot hold it
    path = tmp_path / "y9999.csv"
    path.write_text("\n".join(text) + "\n")
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    assert code == 0, err
    assert counts(out) == (2000, 1999, 1)
    assert "dropped: bad_timestamp 1" in out


@pytest.mark.parametrize("fmt", ["epoch_s", "yyyymmdd", "dmy"])
def test_out_of_range_timestamps_in_other_formats(tmp_path, fmt):
    df = bars(100)
    col = {"epoch_s": (df.timestamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "s"),
           "yyyymmdd": df.timestamp.dt.strftime("%Y%m%d").astype(int),
           "dmy": df.timestamp.dt.strftime("%d/%m/%Y")}[fmt]
    bad = {"epoch_s": 253402214400, "yyyymmdd": 99991231, "dmy": "31/12/9999"}[fmt]
    col = col.astype(object)
    col[50] = bad
    df.assign(timestamp=col).to_csv(tmp_path / "x.csv", index=False)
    raw = load_ohlcv(tmp_path / "x.csv", date_format="", data_timezone="UTC")
    assert raw.attrs["bad_timestamps"] == 1 and raw.timestamp.isna().sum() == 1


@pytest.mark.parametrize("digits,fmt", [(12, "%Y%m%d%H%M"), (14, "%Y%m%d%H%M%S")])
@pytest.mark.parametrize("kind", ["csv", "parquet", "csv_with_a_gap"])
def test_date_and_time_written_as_one_integer_are_read_as_digits(tmp_path, digits, fmt, kind):
    """Minute bars stamped 202401020930 (yyyymmddHHMM, as some vendors write them) were read as epoch
    milliseconds: 1976-05-31 14:30:20.930, 1-millisecond bars, nothing said; 20240102093000 (yyyymmddHHMMSS) was
    refused as unparseable. Both now read as the dates and times they spell (a missing cell too: a float column)."""
    df = bars(300, start="2024-01-02 09:30", freq="1min")
    stamps = df.timestamp.dt.strftime(fmt).astype("int64")
    assert len(str(stamps[0])) == digits
    date = stamps.astype("float64").where(stamps.index != 7) if kind == "csv_with_a_gap" else stamps
    path = tmp_path / f"x.{'parquet' if kind == 'parquet' else 'csv'}"
    table = df.drop(columns="timestamp").assign(Date=date)
    table.to_parquet(path) if kind == "parquet" else table.to_csv(path, index=False)
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    expected = pd.to_datetime(stamps.astype("str"), format=fmt, utc=True).astype("datetime64[ns, UTC]")
    if kind == "csv_with_a_gap":
        assert raw.attrs["bad_timestamps"] == 1 and raw.timestamp.isna().sum() == 1
        expected = expected.drop(index=7).reset_index(drop=True)
        raw = raw.dropna(subset=["timestamp"]).reset_index(drop=True)
    pd.testing.assert_series_equal(raw.timestamp, expected, check_names=False)
    assert raw.attrs["timestamp_format"] == [{12: "yyyymmddHHMM", 14: "yyyymmddHHMMSS"}[digits]]


def test_epoch_milliseconds_of_the_1970s_are_not_read_as_digits(tmp_path):
    """Epoch ms of 1975 have 12 digits too, but most do not spell a date and time: they stay epoch ms."""
    ts = pd.date_range("1975-03-01", periods=200, freq="1h", tz="UTC")
    df = bars(200).drop(columns="timestamp").assign(time=(ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms"))
    df.to_csv(tmp_path / "x.csv", index=False)
    raw = load_ohlcv(tmp_path / "x.csv", date_format="", data_timezone="UTC")
    assert raw.attrs["timestamp_format"] == ["epoch_ms"]
    pd.testing.assert_series_equal(raw.timestamp, pd.Series(ts, name="timestamp").astype("datetime64[ns, UTC]"))


@pytest.mark.parametrize("unit,strays", [("ms", [1700000060, 1700003000]), ("s", [-1700000000]), ("s", [0])])
def test_epoch_numbers_read_before_1973_are_bad_timestamps(tmp_path, unit, strays):
    """A few epoch seconds among milliseconds were 1970-01-20 bars, a lone negative epoch a 1916 bar (only the
    median was checked against 1973): each is now a counted bad timestamp, the others read as before."""
    df = bars(100)
    col = ((df.timestamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, unit)).astype("int64")
    at = [10 + 30 * i for i in range(len(strays))]
    col[at] = strays
    df.assign(timestamp=col).to_csv(tmp_path / "x.csv", index=False)
    raw = load_ohlcv(tmp_path / "x.csv", date_format="", data_timezone="UTC")
    assert raw.attrs["bad_timestamps"] == len(strays) and raw.attrs["timestamp_format"] == [f"epoch_{unit}"]
    assert raw.timestamp.min() == df.timestamp.drop(index=at).min()
    _, rep = clean_ohlcv(raw)
    assert rep.totals("dropped") == {"bad_timestamp": len(strays)}

@pytest.mark.parametrize("kind", ["excel_csv", "excel_parquet", "excel_with_a_text_cell", "epoch_1971"])
def test_epoch_seconds_before_1973_are_refused_and_excel_serials_named(tmp_path, kind):
    """Excel serial days (44928 is 2023-01-02) read as epoch seconds were 1970-01-01 12:28 onwards: 300 daily bars
    as 1-second bars, nothing said. An epoch reading before 1973 is refused, naming the file and column; numbers
    in the range of Excel serials are said to look like them."""
    days = pd.bdate_range("2023-01-02", periods=300)
    serial = pd.Series((days - pd.Timestamp("1899-12-30")).days)
    date = {"excel_csv": serial, "excel_parquet": serial + 0.5,  # (noon: a fractional Excel date-time)
            "excel_with_a_text_cell": serial.astype(object).where(serial.index != 7, "n.a."),
            "epoch_1971": pd.Series((pd.date_range("1971-06-01", periods=300, freq="1h") - pd.Timestamp(0))
                                    // pd.Timedelta(1, "s"))}[kind]
    df = bars(300).drop(columns="timestamp")
    df.insert(0, "Date", date)
    path = tmp_path / ("x.parquet" if kind == "excel_parquet" else "x.csv")
    df.to_parquet(path) if kind == "excel_parquet" else df.to_csv(path, index=False)
    with pytest.raises(DataError) as e:
        load_ohlcv(path, date_format="", data_timezone="UTC")
    msg = str(e.value)
    assert msg.startswith(f"{path}: column 'Date': ") and "before 1973" in msg
    if kind == "epoch_1971":
        assert "1971-06" in msg and "Excel" not in msg
    else:
        assert "Excel serial day numbers" in msg and "export the dates as text" in msg
        number, day = re.search(r"\(([\d.]+) is (\d{4}-\d\d-\d\d)", msg).groups()
        assert pd.Timestamp("1899-12-30") + pd.Timedelta(float(number) // 1, "D") == pd.Timestamp(day) in days


@pytest.mark.parametrize("layout", ["hhmmss_csv", "hhmmss_parquet", "hhmm_csv", "padded_csv"])
def test_integer_times_beside_a_date_are_zero_padded(tmp_path, layout):
    """Vendor exports (TickData, CQG) write the time of day as an integer without its leading zeros: 20240102,500
    is 00:05:00. Joined as '20240102 500' it was read as another time (11% of three days of 24-hour 5-minute bars
    lost as 'duplicates', 819 rows 'unsorted'). HHMMSS or HHMM, every bar is read at its time."""
    freq = "1h" if layout == "hhmm_csv" else "5min"
    df = bars(288 * 3 // (12 if layout == "hhmm_csv" else 1), freq=freq)
    fmt = "%H%M" if layout == "hhmm_csv" else "%H%M%S"
    times = df.timestamp.dt.strftime(fmt)
    df.insert(0, "Time", times if layout == "padded_csv" else times.astype(int))
    df.insert(0, "Date", df.timestamp.dt.strftime("%Y%m%d").astype(int))
    assert (df.Time.astype(str).str.len() < 4).any() or layout == "padded_csv"
    path = tmp_path / ("x.parquet" if layout.endswith("parquet") else "x.csv")
    files = df.drop(columns="timestamp")
    files.to_parquet(path) if layout.endswith("parquet") else files.to_csv(path, index=False)
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    assert raw.attrs["bad_timestamps"] == 0 and raw.attrs["unsorted_rows"] == 0
    pd.testing.assert_series_equal(raw.timestamp, df.timestamp.astype("datetime64[ns, UTC]"))


def test_integer_times_that_read_as_hhmm_and_hhmmss_are_refused(tmp_path):
    """Times 0 .. 59 (minute bars of the first hour) are 00:MM as HHMM and 00:00:SS as HHMMSS: refused, naming
    the file and the time column."""
    df = bars(60, freq="1min")
    df.insert(0, "time", df.timestamp.dt.strftime("%H%M").astype(int))
    df.insert(0, "date", df.timestamp.dt.strftime("%Y-%m-%d"))
    path = tmp_path / "x.csv"
    df.drop(columns="timestamp").to_csv(path, index=False)
    with pytest.raises(DataError) as e:
        load_ohlcv(path, date_format="", data_timezone="UTC")
    msg = str(e.value)
    assert msg.startswith(f"{path}: column 'time': ") and "HHMM (00:59)" in msg and "HHMMSS (00:00:59)" in msg


def test_a_few_unparseable_timestamps_are_counted(tmp_path, capsys):
    df = bars(300, freq="1h")
    lines = write_csv(tmp_path / "x.csv", df).read_text().splitlines()
    for i in (5, 50, 150):
        lines[i] = "not a time" + lines[i][16:]
    path = tmp_path / "garbled.csv"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    assert code == 0, err
    assert counts(out) == (300, 297, 3) and "bad_timestamp 3" in out


def test_truncated_gzip_is_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "AAA.csv.gz"
    path.write_bytes(gzip.compress(write_csv(tmp_path / "a.csv", bars(3000)).read_bytes())[:4000])
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    line = one_error(err)
    assert code == 2 and str(path) in line and "cannot parse as CSV" in line


@pytest.mark.parametrize("encoding, byte", [("cp1252", "\\xe9"), ("utf-16", "\\xff")])
def test_a_file_not_in_utf_8_is_named_with_how_to_convert_it(tmp_path, encoding, byte):
    """An Excel 'CSV' in Windows-1252 (an accented company name) or UTF-16: said as such, not as a parse error."""
    path = tmp_path / "AAA.csv"
    path.write_bytes("timestamp,open,high,low,close,volume,name\n2024-01-02,1,1,1,1,1,Soci\u00e9t\u00e9\n"
                     .encode(encoding))
    with pytest.raises(DataError, match=re.escape(f"{path}: not UTF-8 text (byte b'{byte}' at offset ") +
                       r"\d+(, a UTF-16 file)?\): save it as UTF-8 \(Excel: 'CSV UTF-8'; or `iconv -f " + encoding):
        load_ohlcv(path, date_format="", data_timezone="UTC")


def test_one_corrupt_file_in_a_per_symbol_folder_is_named(tmp_path, capsys):
    folder = tmp_path / "daily"
    folder.mkdir()
    for i, name in enumerate(("AAA", "BBB", "CCC")):
        write_csv(folder / f"{name}.csv", bars(120, seed=i), date_fmt="%Y-%m-%d")
    (folder / "BBB.csv").write_bytes(bytes(range(256)) * 8)
    code, out, err = cli(capsys, "prepare", "--data", folder, *SMALL)
    line = one_error(err)
    assert code == 2 and str(folder / "BBB.csv") in line
    write_csv(folder / "BBB.csv", bars(120, seed=1), date_fmt="%Y-%m-%d")  # repaired: the folder loads
    code, out, err = cli(capsys, "prepare", "--data", folder, *SMALL)
    assert code == 0 and counts(out) == (360, 360, 0)


def test_office_lock_files_in_a_per_symbol_folder_are_ignored(tmp_path):
    """AAA.csv open in Excel leaves its owner file '~$AAA.csv' (165 bytes: the user's name) beside it, and
    LibreOffice '.~lock.AAA.csv#': the folder stopped with '~$AAA.csv: no rows', a file the user never wrote.
    Both are ignored, as hidden files are, and not hashed into the cache key."""
    folder = tmp_path / "daily"
    folder.mkdir()
    df = bars(120)
    write_csv(folder / "AAA.csv", df, date_fmt="%Y-%m-%d")
    (folder / "~$AAA.csv").write_bytes((b"\x05alice" + b" " * 48 + b"\x05\x00" + "alice".encode("utf-16-le"))
                                        .ljust(165, b" "))
    (folder / ".~lock.AAA.csv#").write_text(",alice,host,07.12.2026 21:00,file:///home/alice/.config;")
    raw = load_ohlcv(folder, date_format="", data_timezone="UTC")
    assert len(raw) == 120 and raw.attrs["skipped_files"] == []
    np.testing.assert_allclose(raw.close, df.close, rtol=1e-12)


def test_two_files_of_one_stem_in_a_folder_are_refused_naming_both(tmp_path):
    """AAA.csv and AAA.parquet (two series, 3x apart) would both be symbol AAA: merged, the one's rows would be
    read as duplicates of the other's. Refused, naming both files."""
    df = bars(50)
    write_csv(tmp_path / "AAA.csv", df, date_fmt="%Y-%m-%d")
    df.assign(open=df.open * 3, high=df.high * 3, low=df.low * 3, close=df.close * 3).to_parquet(
        tmp_path / "AAA.parquet")
    write_csv(tmp_path / "BBB.csv", df, date_fmt="%Y-%m-%d")
    with pytest.raises(DataError) as e:
        load_ohlcv(tmp_path, date_format="", data_timezone="UTC")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}: ") and "'AAA.csv' and 'AAA.parquet'" in msg and "symbol 'AAA'" in msg


def test_one_symbol_in_two_files_of_a_folder_joins_or_is_refused_where_they_disagree(tmp_path):
    """Two files holding one symbol (a year a file; two vendors) merged with the last file winning on a shared
    timestamp, said nowhere, and the later year read first (by file name) counted as 'unsorted'. Years that
    follow each other join as one series, identical rows are duplicates, and rows the files give different values
    are refused naming both files."""
    df = bars(300).assign(symbol="AAPL")
    write_csv(tmp_path / "a.csv", df.iloc[150:])  # 2024-05-30 onward: first by name
    write_csv(tmp_path / "b.csv", df.iloc[:150])
    raw = load_ohlcv(tmp_path, date_format="", data_timezone="UTC")
    assert raw.attrs["unsorted_rows"] == 0 and raw.attrs["shared_symbols"] == {"AAPL": ["a.csv", "b.csv"]}
    out, rep = clean_ohlcv(raw)
    np.testing.assert_allclose(out.close, df.close, rtol=1e-12)
    assert rep.rows_dropped == 0 and "files sharing a symbol: AAPL (a.csv, b.csv)" in rep.summary()
    write_csv(tmp_path / "a.csv", df.iloc[100:])  # 50 rows in both files, the same
    out, rep = clean_ohlcv(load_ohlcv(tmp_path, date_format="", data_timezone="UTC"))
    assert rep.totals("dropped") == {"duplicate": 50} and len(out) == 300
    other = df.iloc[100:].assign(close=df.close.iloc[100:] * 1.02)  # another vendor's closes, 2% apart
    write_csv(tmp_path / "a.csv", other)
    with pytest.raises(DataError) as e:
        load_ohlcv(tmp_path, date_format="", data_timezone="UTC")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}: files 'a.csv' and 'b.csv' both hold symbol 'AAPL' and disagree on 50 ")
    assert "close" in msg
    write_csv(tmp_path / "a.csv", other.assign(symbol=""))  # rows without a symbol are no one's: bad_symbol
    raw = load_ohlcv(tmp_path, date_format="", data_timezone="UTC")
    assert raw.attrs["shared_symbols"] == {} and raw.attrs["missing_symbols"] == {"a.csv": 200}


HEADER_SPELLINGS = {"timestamp": ["timestamp", "Date", " TIME ", "open_time"], "symbol": ["symbol", "Ticker"],
                    "open": ["open", "O"], "high": ["High", "h"], "low": ["low", "L"], "close": ["Close", "last"],
                    "volume": ["volume", "Vol", "qty"], "Adj Close": ["Adj Close"]}
CELLS = st.sampled_from(["100.5", "101", "99.5", "100", "0", "-1", "1e300", "nan", "inf", "", "NA", "abc", "1e-300"])


@st.composite
def csv_files(draw) -> str:
    """CSV text as exports write it: any column order and spelling, separator, quoting, BOM, CRLF, blank lines,
    timestamps as ISO text with or without an offset, epoch seconds or yyyymmdd, repeated and out of order."""
    cols = draw(st.permutations([c for c in HEADER_SPELLINGS if c != "symbol" or draw(st.booleans())]))
    sep, quote = draw(st.sampled_from([",", ";", "\t", "|"])), draw(st.sampled_from(["", '"']))
    kind = draw(st.sampled_from(["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%Y%m%d", "epoch"]))
    steps = draw(st.lists(st.sampled_from([1, 1, 1, 0, -1, 3]), min_size=1, max_size=40))
    times = pd.Timestamp("2023-03-01", tz="UTC") + pd.to_timedelta(np.cumsum(steps), unit="D")
    lines = [sep.join(quote + draw(st.sampled_from(HEADER_SPELLINGS[c])) + quote for c in cols)]
    for t in times:
        when = str(int(t.timestamp())) if kind == "epoch" else t.tz_convert("America/New_York").strftime(kind)
        cells = {"timestamp": when, "symbol": draw(st.sampled_from(["AAA", "NA", "0700", ""]))}
        lines.append(sep.join(quote + cells.get(c, draw(CELLS)) + quote for c in cols))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(1, len(lines))), "")
    return ("\ufeff" if draw(st.booleans()) else "") + draw(st.sampled_from(["\n", "\r\n"])).join(lines) + "\n"


@settings(max_examples=40, deadline=None, derandomize=True)
@example(text="timestamp,open,High,low,volume,Close,Adj Close\n2023-03-01 19:00:00,100.5,100.5,100.5,100.5,0,100.5\n")
@given(text=csv_files())
def test_any_csv_export_loads_with_counts_that_add_up_or_is_refused_naming_the_file(tmp_path_factory, text):
    """Hostile but plausible CSV text: a one-line DataError naming the file, or a frame whose cleaning accounts
    for every row (rows in = kept + dropped, the dropped the sum of the rules' drops) and keeps only finite,
    positive, ordered bars."""
    path = tmp_path_factory.mktemp("csv") / "SYM.csv"
    path.write_text(text, encoding="utf-8")
    try:
        raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    except DataError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        return
    out, rep = clean_ohlcv(raw)
    counts = pd.DataFrame(rep.counts, columns=["rule", "symbol", "action", "rows"])
    assert rep.rows_in == len(raw) == rep.rows_kept + rep.rows_dropped and len(out) == rep.rows_kept
    assert counts.loc[counts.action == "dropped", "rows"].sum() == rep.rows_dropped
    prices = out[["open", "high", "low", "close"]].to_numpy()
    assert (np.isnan(prices) | (np.isfinite(prices) & (prices > 0))).all() and (out.volume.dropna() >= 0).all()
    ts, sym = out.timestamp.to_numpy(), out.symbol.to_numpy()
    assert (ts[1:] > ts[:-1])[sym[1:] == sym[:-1]].all()  # each symbol's bars unique and in time order


@pytest.mark.parametrize("content,problem", [(b"", "empty file"), (b"\x00\x01\x02 garbage", "no rows"),
                                             (b"date,open\n2024-01-01,1\n", "missing required columns"),
                                             (b"1704205800000,100.01,100.2,99.9,100.1,1.5,1704206099999\n"
                                              b"1704206100000,100.1,100.3,100.0,100.2,2.5,1704206399999\n",
                                              "its first line is numbers, not names: the file has no header line")])
def test_unusable_files(tmp_path, capsys, content, problem):
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    code, out, err = cli(capsys, "prepare", "--data", path)
    line = one_error(err)
    assert code == 2 and str(path) in line and problem in line


@pytest.mark.parametrize("layout", ["symbols", "time_of_day"])
def test_several_bars_per_timestamp_in_a_file_without_a_symbol_column_are_refused(tmp_path, capsys, layout):
    """Kaggle's all_stocks_5yr.csv names its ticker column 'Name', not an alias: the file was read as one symbol,
    its three stocks' bars of each day as duplicates of one series (600 of 900 rows dropped, the kept closes a mix
    of the three). Hourly bars with their time of day in 'Time (UTC)', not 'time', kept one bar a day (230 of 240
    dropped). A file without a symbol column whose timestamps recur with other closes is refused, naming the file
    and its text columns; with the column named 'symbol' (or 'time') it loads every row."""
    if layout == "symbols":
        df = pd.concat([bars(300, seed=i, price=p).assign(Name=n) for i, (n, p) in
                        enumerate([("AAL", 40.0), ("AAPL", 100.0), ("MSFT", 300.0)])], ignore_index=True)
        df, column, name, recur = df.assign(timestamp=df.timestamp.dt.strftime("%Y-%m-%d")), "Name", "symbol", 300
    else:
        df = bars(240, freq="1h")
        df.insert(1, "Time (UTC)", df.timestamp.dt.strftime("%H:%M"))
        df = df.assign(timestamp=df.timestamp.dt.strftime("%Y-%m-%d")).rename(columns={"timestamp": "Date"})
        column, name, recur = "Time (UTC)", "time", 10
    path = tmp_path / "x.csv"
    df.to_csv(path, index=False)
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    line = one_error(err)
    assert code == 2 and str(path) in line and f"{recur} of {recur} timestamps" in line and f"'{column}'" in line
    assert f"name it '{name}'" in line
    df.rename(columns={column: name}).to_csv(path, index=False)
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    assert len(raw) == len(df) and raw.groupby(["symbol", "timestamp"]).size().max() == 1


def test_repeated_rows_of_one_series_still_load_and_are_counted(tmp_path):
    """A file of one series with a stretch written twice (two overlapping downloads appended), and a bar
    corrected once: the same closes recur, not other series: loaded, and cleaning counts the duplicates (the
    corrected bar apart: its rows disagree)."""
    df = bars(300)
    again = df.iloc[100:200].copy()
    again.loc[150, "close"] *= 1.001
    path = write_csv(tmp_path / "AAA.csv", pd.concat([df, again], ignore_index=True), date_fmt="%Y-%m-%d")
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    assert len(raw) == 400 and (raw.symbol == "AAA").all()
    clean, rep = clean_ohlcv(raw)
    assert len(clean) == 300 and rep.totals("dropped") == {"duplicate": 99, "conflicting_duplicate": 1}


@pytest.mark.parametrize("twice", ["Close", "Date", "Time", "Adj Close"])
def test_a_column_named_twice_is_named_or_ignored(tmp_path, capsys, twice):
    """A header naming a column it reads twice (two exports joined side by side) ended in 'internal error:
    AttributeError: 'DataFrame' object has no attribute 'dtype'', exit 1, no file or column named: now one line
    naming both, exit 2. A column it ignores ('Adj Close') may come twice."""
    df = bars(50, freq="1h")
    table = pd.DataFrame({"Date": df.timestamp.dt.strftime("%Y-%m-%d"), "Time": df.timestamp.dt.strftime("%H:%M"),
                          "Open": df.open, "High": df.high, "Low": df.low, "Close": df.close,
                          "Adj Close": df.close, "Volume": df.volume})
    table.insert(len(table.columns), f"{twice}.1", table[twice])
    path = tmp_path / "joined.csv"
    path.write_text(table.to_csv(index=False).replace(f",{twice}.1\n", f",{twice}\n", 1))
    assert path.read_text().splitlines()[0].count(twice) == (3 if twice == "Close" else 2)
    if twice == "Adj Close":
        np.testing.assert_allclose(load_ohlcv(path, date_format="", data_timezone="UTC").close, df.close, rtol=1e-12)
        return
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    line = one_error(err)
    assert code == 2 and f"{path}: column '{twice}' appears 2 times in the header" in line


def test_no_rows_left_names_the_file_and_the_rules(tmp_path, capsys):
    df = bars(100)
    df.loc[:59, "close"] = -1.0
    path = write_csv(tmp_path / "short.csv", df.iloc[:75])
    code, out, err = cli(capsys, "prepare", "--data", path, "-p", "window", "32")
    line = one_error(err)
    assert code == 2 and str(path) in line and "no rows left after cleaning: 75 rows in" in line
    assert "bad_close 60" in line and "too_short 15" in line


def test_nan_and_huge_values_in_a_file_are_counted(tmp_path, capsys):
    df = bars(200)
    df.loc[10, "close"] = np.nan
    df.loc[20, "volume"] = 1e30  # a size alone is never a reason to drop
    df.loc[30, "open"] = np.inf
    path = write_csv(tmp_path / "x.csv", df)
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    assert code == 0, err
    assert counts(out) == (200, 199, 1) and "bad_close 1" in out and "bad_ohl 1" in out


def bad_print_file(path: Path, seed: int = 0) -> tuple[Path, set]:
    """Three symbols near 88 (hourly bars), with 20 closes of 1e300, 20 volumes of 1e300 and 20 highs of 1e13
    planted on rows of their own (after each symbol's first 64), as the issue's hostile file had them."""
    rng = np.random.default_rng(seed)
    df = pd.concat([bars(1500, freq="1h", seed=seed + i, price=88.0).assign(symbol=f"S{i}") for i in range(3)],
                   ignore_index=True)
    rows = rng.choice(np.flatnonzero(df.index % 1500 >= 64), 60, replace=False)
    df.loc[rows[:20], "close"] = 1e300
    df.loc[rows[20:40], "volume"] = 1e300
    df.loc[rows[40:], "high"] = 1e13
    return write_csv(path, df), set(rows.tolist())


def test_bad_prints_are_counted_and_keep_the_features_off_the_clip(tmp_path):
    path, planted = bad_print_file(tmp_path / "bad_prints.csv")
    cfg = Config(data_path=str(path), window=16)
    fs, rep = dataset.build(cfg)
    assert rep.totals() == {"bad_print": len(planted)} and rep.rows_kept == rep.rows_in == 4500
    assert np.isfinite(fs.X).all() and np.abs(fs.X).max() <= cfg.clip
    at_clip = (np.abs(fs.X) >= cfg.clip).any(axis=1).mean()
    assert at_clip <= 0.05, at_clip


# ---------------------------------------------------------------------------------------------------------
# scale-free cleaning


REAL = ROOT / "tests" / "data" / "real" / "MSFT.csv.gz"


@pytest.fixture(scope="module")
def msft() -> tuple[pd.DataFrame, Config, object, object]:
    """Real daily bars (MSFT 1986-2017, early prices near 0.07), loaded and built once."""
    raw = load_ohlcv(REAL, date_format="", data_timezone="UTC")
    cfg = Config(data_path=str(REAL))
    return (raw, cfg, *dataset.build(cfg, raw))


@settings(max_examples=6, deadline=None)
@example(a=-12, b=14)  # the corners, and the micro-priced token (1e-8 prices, 1e12 x volumes)
@example(a=6, b=-6)
@example(a=-8, b=12)
@given(a=st.integers(-12, 6), b=st.integers(-6, 14))
def test_prices_and_volumes_of_any_scale_keep_the_same_rows_and_features(msft, a, b):
    """Prices x 10^a and volumes x 10^b: the same rows survive cleaning and the features agree to float32
    rounding (the issue: 1e-8 prices with 1e18-1e20 volumes lost rows to an absolute volume limit)."""
    raw, cfg, base, base_rep = msft
    scaled = raw.copy()
    scaled[["open", "high", "low", "close"]] *= 10.0**a
    scaled["volume"] *= 10.0**b
    fs, rep = dataset.build(cfg, scaled)
    assert (rep.rows_in, rep.rows_kept) == (base_rep.rows_in, base_rep.rows_kept)
    np.testing.assert_array_equal(fs.timestamp, base.timestamp)
    np.testing.assert_array_equal(fs.split, base.split)
    np.testing.assert_allclose(fs.X, base.X, rtol=0, atol=2e-4)
    np.testing.assert_allclose(fs.y, base.y, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------
# parameters


@pytest.mark.parametrize("name,value,allowed", [
    ("lr", "inf", "finite"), ("lr", "0", "> 0"), ("batch_size", "-5", ">= 1"), ("batch_size", "0", ">= 1"),
    ("grad_accum_steps", "-2", ">= 1"), ("grad_accum_steps", "0", ">= 1"), ("epochs", "0", ">= 1"),
    ("epochs", "-1", ">= 1"), ("precision", "fp8", "auto | fp32 | bf16"), ("dropout", "1", "< 1"),
    ("train_frac", "0", "> 0"), ("val_frac", "1.5", "< 1"), ("model", "transformer9000", "mlp | lstm"),
    ("loader", "gpu", "device | stream | dataloader"), ("lr_scaling", "cubic", "none | linear | sqrt"),
    ("position_mode", "kelly", "sign | scaled"), ("device", "gpu0", "cuda:N"), ("date_format", "dd/mm", "strftime"),
    ("loaders", "gpu", "device, dataloader, dense"), ("batch_sizes", "0,64", "sizes >= 1"),
    ("data_seed", "-1", ">= 0"), ("bootstrap_seed", "-1", ">= 0"),  # numpy's generators refuse them, unnamed
])
def test_bad_parameter_values_are_one_line_exit_2(capsys, name, value, allowed):
    for command in ("train", "pipeline"):
        code, out, err = cli(capsys, command, "-p", name, value)
        line = one_error(err)
        assert code == 2 and f"parameter {name!r} is" in line and allowed in line, line


@pytest.mark.parametrize("args", [["train", "--bogus"], ["train", "-p", "lr"], []])
def test_a_usage_error_is_one_line(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "--help" in err


def test_train_plus_val_fraction_must_leave_a_test_split(capsys):
    code, out, err = cli(capsys, "train", "-p", "train_frac", "0.9", "-p", "val_frac", "0.1")
    assert code == 2 and "train_frac + val_frac must be below 1" in one_error(err)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "pipeline", "bench"])
def test_cuda_asked_for_but_absent(capsys, command):
    code, out, err = cli(capsys, command, "-p", "device", "cuda")
    line = one_error(err)
    assert code == 2 and "CUDA is not available" in line and "-p device cpu" in line


@pytest.mark.parametrize("command", ["pipeline", "sweep", "train"])
def test_a_data_path_that_does_not_exist_is_one_line_before_any_notebook(tmp_path, capsys, outputs, command):
    extra = ["-p", "batch_size", "64,128"] if command == "sweep" else []
    code, out, err = cli(capsys, command, "-p", "data_path", "no/such/prices.csv", *extra)
    line = one_error(err)
    assert code == 2 and "no/such/prices.csv: path does not exist" in line and str(Path.cwd()) in line, line
    assert not outputs.exists() or not any(outputs.iterdir())  # no run folder, no notebook started
    assert "CUDA" not in out + err  # nor a word about the device first


def test_a_relative_data_path_is_read_from_where_it_was_typed_then_from_the_checkout(tmp_path, monkeypatch):
    """The kernels of the pipeline and a sweep run in notebooks/: a relative data path is made absolute where
    the command runs (the working directory), and a notebook's own (JupyterLab, in notebooks/) finds the
    README's paths, written from the checkout's root, there."""
    real = ROOT / "tests" / "data" / "real"
    monkeypatch.chdir(ROOT / "notebooks")
    assert resolve_data_path("tests/data/real") == str(real)  # not in notebooks/: the checkout's root
    assert resolve_data_path("../tests/data/real") == str(real)  # one spelling of it
    mine = tmp_path / "tests" / "data" / "real"
    mine.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("tests/data/real") == str(mine)  # where it was typed wins
    assert resolve_data_path(str(real)) == str(real) and resolve_data_path(" Synthetic") == " Synthetic"
    assert resolve_data_path("nowhere.csv") == str(tmp_path / "nowhere.csv")
    with pytest.raises(DataError, match=re.escape(f"nowhere.csv: path does not exist (data_path, looked for at "
                                                  f"{tmp_path / 'nowhere.csv'} and at {ROOT / 'nowhere.csv'})")):
        existing_data_path("nowhere.csv")
    monkeypatch.chdir(ROOT)
    plan = make_plan(None, [("data_path", f"tests/data/real;{real}"), ("window", "16")], [], "rel")
    assert [c.data_path for c in plan.configs] == [str(real)] * 2 and plan.names[0] == "data_path=tests_data_real"


@pytest.mark.slow
def test_the_pipeline_reads_a_relative_data_path_from_where_it_runs(outputs):
    """params/daily.yaml's own command: its data_path is relative to the checkout's root, where the pipeline
    runs, not to notebooks/, where 01's kernel runs."""
    res = subprocess.run([sys.executable, "-m", "tradelib", "pipeline", "-f", "params/daily.yaml", "-f",
                          "params/tiny.yaml", "-p", "data_path", "tests/data/real", "--only", "01", "-p", "run_id",
                          "rel"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    executed = (outputs / "rel" / "01_data_cleaning.ipynb").read_text()
    assert "18,045 raw rows, 3 symbols" in executed  # SP500, NASDAQ and MSFT: 5,031 + 5,031 + 7,983 rows
    assert "MSFT" in executed and str(ROOT / "tests" / "data" / "real") in executed


@pytest.mark.parametrize("command", ["prepare", "train", "pipeline", "bench"])
def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys, command):
    bad = tmp_path / "p.yaml"
    bad.write_text("batch_size: 64\nmodel: [lstm\n")
    code, out, err = cli(capsys, command, "-f", bad)
    line = one_error(err)
    assert code == 2 and str(bad) in line and "not valid YAML at line" in line


@pytest.mark.parametrize("key", ["123", "2024-01-02", "true"])
def test_a_yaml_key_that_is_no_text_is_an_unknown_parameter(tmp_path, capsys, key):
    """YAML reads these keys as a number, a date, a bool: the suggestion for an unknown name took them for text
    and ended in 'internal error: TypeError: ... is not iterable', exit 1."""
    bad = tmp_path / "p.yaml"
    bad.write_text(f"{key}: 4\n")
    code, out, err = cli(capsys, "train", "-f", bad)
    line = one_error(err)
    assert code == 2 and str(bad) in line and "unknown parameter" in line


def test_an_impossible_date_in_a_yaml_file_names_the_file(tmp_path, capsys):
    """YAML reads 2024-13-45 as a date, and its constructor raises a ValueError, not a YAMLError: it was
    'error: month must be in 1..12', naming no file."""
    bad = tmp_path / "p.yaml"
    bad.write_text("train_end: 2024-13-45\nval_end: 2025-01-01\n")
    code, out, err = cli(capsys, "train", "-f", bad)
    line = one_error(err)
    assert code == 2 and str(bad) in line and "month must be in 1..12" in line


@pytest.mark.parametrize("command", ["prepare", "train", "pipeline", "bench"])
def test_an_unknown_parameter_is_refused_with_a_suggestion(capsys, command):
    code, out, err = cli(capsys, command, "-p", "batchsize", "64")
    line = one_error(err)
    assert code == 2 and "batchsize" in line


@pytest.mark.parametrize("command", ["train", "pipeline", "sweep"])
def test_a_bad_parameter_is_blamed_on_where_it_was_given(tmp_path, capsys, command):
    """A typo or a bad value given with -p is said to come from -p, not from the -f file beside it; one from a
    file names that file."""
    extra = ["-p", "batch_size", "64,128"] if command == "sweep" else []
    mine = tmp_path / "mine.yaml"
    mine.write_text("window: 16\nlayers: two\n")
    code, out, err = cli(capsys, command, "-f", "params/tiny.yaml", "-p", "epochs", "x", *extra)
    assert code == 2 and "-p: parameter 'epochs' expects int, got 'x'" in one_error(err)
    code, out, err = cli(capsys, command, "-f", "params/tiny.yaml", "-p", "epoch", "3", *extra)
    assert code == 2 and re.search(r"-p: unknown parameter 'epoch'|parameter\(s\) epoch \(-p\)|'epoch' \(-p\)",
                                   one_error(err)), err
    code, out, err = cli(capsys, command, "-f", "params/tiny.yaml", "-f", mine, "-p", "epochs", "2", *extra)
    assert code == 2 and f"{mine}: parameter 'layers' expects int, got 'two'" in one_error(err)


@pytest.mark.slow
def test_papermill_refuses_what_the_notebook_does_not_declare(tmp_path, outputs):
    """papermill itself only warns about `-p batchsize 64` and would train with the default batch: the
    notebook's first cell refuses it, with a suggestion, before anything runs."""
    res = subprocess.run([sys.executable, "-m", "papermill", "notebooks/03_train.ipynb", str(tmp_path / "o.ipynb"),
                          "-p", "batchsize", "64", "--no-progress-bar"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and "ConfigError" in res.stderr
    assert "03_train: unknown parameter 'batchsize' (did you mean 'batch_size'?)" in res.stderr
    assert not any(outputs.glob("*/metrics.jsonl"))  # nothing trained


def test_notebook_config_reads_what_papermill_injected():
    """The first cell's check on an IPython namespace: `In` holds the executed cells, papermill's injected one
    starting with "# Parameters". Outside papermill (no such cell) user variables are left alone."""
    from tradelib.config import ConfigError, notebook_config

    params = {"batch_size": 64, "lr": 2e-3, "run_id": ""}
    ns = {**params, "In": ["", "batch_size: int = 256  # ...", "# Parameters\nbatch_size = 64\nlr = 0.002\n"]}
    assert notebook_config(ns, "03_train").batch_size == 64
    with pytest.raises(ConfigError, match=r"03_train: unknown parameter 'cost_bsp' \(did you mean 'cost_bps'\?\)"):
        notebook_config({**ns, "cost_bsp": 3.0, "In": ns["In"] + ["# Parameters\ncost_bsp = 3.0\n"]}, "03_train")
    with pytest.raises(ConfigError, match=r"parameter 'lr' is inf; it must be a finite number"):
        notebook_config({**ns, "lr": float("inf")}, "03_train")
    assert notebook_config({**ns, "raw": object(), "In": ["x = 1"]}, "03_train").lr == 2e-3


# ---------------------------------------------------------------------------------------------------------
# the disk


def unwritable_outputs(tmp_path: Path) -> Path:
    """A folder this process cannot write: a read-only one, or (as root, who may write anywhere the modes
    allow) a path under /sys, where even root cannot create a folder."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").mkdir()
    except OSError:
        return folder
    (folder / "probe").rmdir()
    sysfs = Path("/sys/tradelib-outputs")
    try:
        sysfs.mkdir()
    except OSError:
        return sysfs
    sysfs.rmdir()
    pytest.skip("no unwritable folder on this machine")


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_read_only_outputs_is_one_line_naming_the_folder(tmp_path, capsys, monkeypatch, command):
    ro = unwritable_outputs(tmp_path)
    monkeypatch.setenv("TRADELIB_OUTPUTS", str(ro))
    code, out, err = cli(capsys, command, *TINY_TRAIN)
    line = one_error(err)
    assert code == 2 and str(ro) in line and "TRADELIB_OUTPUTS" in line


def test_full_disk_is_one_line(capsys):
    """/dev/full answers every write with ENOSPC: the bench's JSON goes there."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    code, out, err = cli(capsys, "bench", "-p", "synth_symbols", "2", "-p", "synth_bars", "300", "-p", "window",
                         "8", "-p", "hidden", "4", "-p", "layers", "1", "-p", "bench_models", "mlp", "-p", "loaders",
                         "device", "-p", "steps", "1", "-p", "warmup", "0", "-p", "device", "cpu", "-p", "compile",
                         "off", "--json", "/dev/full")
    line = one_error(err)
    assert code == 2 and "/dev/full" in line and "No space left on device" in line and "free some space" in line


# ---------------------------------------------------------------------------------------------------------
# the feature cache


@pytest.fixture
def cached(outputs):
    cfg = Config(synth_symbols=2, synth_bars=600, window=8)
    fs = dataset.prepare(cfg, verbose=False)
    return cfg, Path(fs.meta["cache_dir"]), fs


def nan_bytes(folder: Path) -> None:
    a = np.load(folder / "X.npy")
    a[5, 2] = np.nan
    np.save(folder / "X.npy", a)  # same size, other bytes


def huge_values(folder: Path) -> None:
    """1e30 written into X.npy, and the manifest's checksum updated to match: the range check still refuses."""
    a = np.load(folder / "X.npy")
    a[7, 0] = 1e30
    np.save(folder / "X.npy", a)
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard["crc32"]["X"] = cache.checksum(a[slice(*shard["rows"])])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def truncated(folder: Path) -> None:
    data = (folder / "X.npy").read_bytes()
    (folder / "X.npy").write_bytes(data[: len(data) // 2])


def zeroed_header(folder: Path) -> None:
    data = bytearray((folder / "y.npy").read_bytes())
    data[:128] = bytes(128)
    (folder / "y.npy").write_bytes(bytes(data))


def truncated_manifest(folder: Path) -> None:
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text[: len(text) // 3])


DAMAGE = {"nan_bytes": (nan_bytes, "X.npy", "checksum differs"), "huge": (huge_values, "X.npy", "outside +-clip"),
          "truncated": (truncated, "X.npy", "truncated"), "zeroed": (zeroed_header, "y.npy", "not a readable array"),
          "manifest": (truncated_manifest, "manifest.json", "not valid JSON")}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_cache_is_named_and_rebuilt(cached, capsys, kind):
    cfg, folder, fs = cached
    damage, file, why = DAMAGE[kind]
    damage(folder)
    with pytest.raises(cache.CacheError) as exc:
        cache.load(folder)
    assert str(exc.value).startswith(f"{folder / file}: ") and why in str(exc.value)
    assert "--force-recreate" in str(exc.value) and "\n" not in str(exc.value)
    capsys.readouterr()
    again = dataset.prepare(cfg)  # the data is still there: rebuilt, said
    out = capsys.readouterr().out
    assert f"{folder / file}: " in out and "rebuilding it from the synthetic market" in out
    assert "features built" in out
    np.testing.assert_array_equal(again.X, fs.X)
    cache.load(folder)  # whole again


def test_a_damaged_cache_of_raw_data_that_is_gone_is_one_line(tmp_path, capsys):
    """The data file is gone: `prepare` names it (the cache key hashes the data, so no cache can be found for
    it), and the damaged cache itself, loaded by its folder (as the report does), names its file and
    --force-recreate."""
    path = write_csv(tmp_path / "AAA.csv", bars(150))
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    assert code == 0
    folder = Path(out.split("cache: ")[1].strip())
    nan_bytes(folder)
    path.unlink()
    code, out, err = cli(capsys, "prepare", "--data", path, *SMALL)
    line = one_error(err)
    assert code == 2 and str(path) in line  # the key needs the data: it names the missing file
    with pytest.raises(cache.CacheError, match=r"X\.npy: checksum differs.*--force-recreate"):
        cache.load(folder)
    run = tmp_path / "run"  # the report of a run that trained on it: its own figures, without the ridge baseline
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"cache_dir": str(folder)}))
    capsys.readouterr()
    assert load_featureset(run) is None
    out = capsys.readouterr().out
    assert f"feature cache {folder} is damaged ({folder / 'X.npy'}: checksum differs" in out
    assert "ridge baseline and data quality left out" in out


@pytest.mark.slow
def test_two_processes_building_one_cache_key_end_with_one_valid_cache(outputs):
    """Both start while a third holds the key's build lock: when it lets go, one builds, the other waits for it
    and loads its cache. One folder, valid, no temporary leftovers."""
    cfg = Config(synth_symbols=3, synth_bars=3000, window=8)
    folder = cache.folder_for(cache.cache_key(cfg))
    script = ("from tradelib.data import dataset; from tradelib.config import Config; "
              "fs = dataset.prepare(Config(synth_symbols=3, synth_bars=3000, window=8)); print('ROWS', len(fs))")
    env = dict(os.environ, TRADELIB_OUTPUTS=str(outputs), PYTHONPATH=str(ROOT))
    with FileLock(folder.with_name(folder.name + ".lock")):
        procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
        time.sleep(3)  # both are waiting on the lock now (imports take a second or two)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum("features built" in o for o in outs) == 1 and sum("cache hit" in o for o in outs) == 1
    assert len({o.split("ROWS")[1] for o in outs}) == 1
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == [folder.name]
    cache.load(folder)


# ---------------------------------------------------------------------------------------------------------
# run folders, checkpoints, false success


def test_a_second_run_with_the_same_id_names_the_holder_and_the_lock_dies_with_it(outputs, capsys):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tradelib.runs import lock_run; from tradelib.paths import outputs_dir; "
        "lock = lock_run(outputs_dir() / 'busy'); print('HELD', flush=True); time.sleep(60)")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", "busy", "-p", "max_steps", "2")
        line = one_error(err)
        assert code == 2 and f"in use by process {holder.pid}" in line and "choose another run_id" in line
        code, out, err = cli(capsys, "pipeline", "-f", ROOT / "params" / "tiny.yaml", "-p", "run_id", "busy")
        assert code == 2 and f"in use by process {holder.pid}" in one_error(err)
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", "busy", "-p", "max_steps", "2")
    assert code == 0, err


def tiny_run(outputs, capsys, run_id: str, *extra: str) -> Path:
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", run_id, "-p", "checkpoint_every", "2",
                         "-p", "keep_checkpoints", "5", *extra)
    assert code == 0, err
    return outputs / run_id / "checkpoints"


def test_a_resumed_run_removes_what_a_killed_checkpoint_write_left(outputs, capsys):
    """A SIGKILL during a checkpoint's write leaves its temporary file (never read); the next run in the folder,
    which holds the folder's lock, deletes those of dead processes and says so; a live writer's is kept."""
    ckpts = tiny_run(outputs, capsys, "leftover", "-p", "max_steps", "2")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = ckpts / f".step-4.pt.{dead.pid}.123.tmp"
    live = ckpts / f".step-4.pt.{os.getpid()}.456.tmp"  # this process is alive
    other = ckpts / "notes.tmp"  # not one of ours
    for p in (left, live, other):
        p.write_bytes(b"partial")
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", "leftover", "-p", "checkpoint_every", "2",
                         "-p", "max_steps", "4", "-p", "resume", "True")
    assert code == 0, err
    assert f"removed 1 unfinished checkpoint file(s) of an earlier, killed write in {ckpts}" in out
    assert not left.exists() and live.exists() and other.exists()


CORRUPT = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:1000]),
    "zeroed": lambda p: p.write_bytes(bytes(p.stat().st_size)),
    "garbage": lambda p: p.write_bytes(np.random.default_rng(0).bytes(p.stat().st_size)),
}


@pytest.mark.parametrize("kind", CORRUPT)
def test_resume_falls_back_to_the_newest_checkpoint_that_loads(outputs, capsys, kind):
    ckpts = tiny_run(outputs, capsys, f"fallback-{kind}", "-p", "max_steps", "6")
    assert sorted(p.name for p in ckpts.glob("step-*.pt")) == ["step-2.pt", "step-4.pt", "step-6.pt"]
    CORRUPT[kind](ckpts / "step-6.pt")
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", f"fallback-{kind}", "-p", "checkpoint_every",
                         "2", "-p", "keep_checkpoints", "5", "-p", "max_steps", "8", "-p", "resume", "True")
    assert code == 0, err
    assert re.search(r"resume: skipped .*step-6\.pt: .*; kept as step-6\.pt\.damaged", out)
    assert "resumed fallback-" in out and "from step-4.pt at step 4" in out
    assert (ckpts / "step-6.pt.damaged").exists() and (ckpts / "step-8.pt").exists()


CRAFTED = {  # a checkpoint of the right keys whose values would fail the resume half-way, or train on from garbage
    "rng": (lambda ck: ck["rng"].__setitem__("numpy", "x"), "rng's numpy state is not np.random.get_state()'s"),
    "step": (lambda ck: ck.__setitem__("step", -5), "step is -5, not a count"),
    "loop": (lambda ck: ck.__setitem__("best_val", "x"), "best_val is 'x', not a number"),
    "tally": (lambda ck: ck.pop("bad_run"), "bad_run is None, not a number"),
    "interval": (lambda ck: ck["tally"].__setitem__("steps", "x"), "tally's steps is 'x', not a count"),
    "pending": (lambda ck: ck.__setitem__("pending_s", None), "pending_s is None, not a number"),
    "config": (lambda ck: ck["config"].__setitem__("max_steps", [1]), "its config's max_steps is [1], not a int"),
    "weights": (lambda ck: ck["model"].update({k: v * float("nan") for k, v in ck["model"].items()}),
                "model holds weights that are not finite"),
}


def test_a_crafted_training_state_is_set_aside_and_the_resume_goes_on_from_the_last_good_one(outputs, capsys):
    """A step file with the keys and types of a training state but values no run writes (an RNG state of another
    shape, a negative step, a text where a number goes, NaN weights) failed the resume half-way with "internal
    error: KeyError" or TypeError, or trained on from NaN weights; now it is set aside like a damaged file, naming
    what is wrong. Weights of another dtype than the model's are refused by name."""
    import torch

    from tradelib.train import checkpoint

    ckpts = tiny_run(outputs, capsys, "crafted", "-p", "max_steps", "4")
    good = torch.load(ckpts / "step-4.pt", weights_only=True)
    for kind, (craft, says) in CRAFTED.items():
        ck = torch.load(ckpts / "step-4.pt", weights_only=True)
        craft(ck)
        checkpoint.save(ck, ckpts / f"{kind}.pt")  # with its checksum in the manifest: the bytes are as written
        with pytest.raises(ValueError, match=re.escape(f"{ckpts / kind}.pt: not a tradelib training checkpoint "
                                                       f"({says}")):
            checkpoint.load(ckpts / f"{kind}.pt")
    checkpoint.save(torch.load(ckpts / "rng.pt", weights_only=False), ckpts / "step-6.pt")
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", "crafted", "-p", "checkpoint_every", "2",
                         "-p", "keep_checkpoints", "5", "-p", "max_steps", "8", "-p", "resume", "True")
    assert code == 0, err
    assert re.search(r"resume: skipped .*step-6\.pt: not a tradelib training checkpoint \(rng's numpy state", out)
    assert "from step-4.pt at step 4" in out and (ckpts / "step-8.pt").exists()
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"weight is torch.int64 in the file, torch.float32 in the model"):
        checkpoint.check_fits({**good, "model": {"weight": torch.zeros(1, 2, dtype=torch.int64),
                                                 "bias": torch.zeros(1)}}, "x.pt", model, "linear")


def test_a_checkpoint_whose_position_passes_its_epochs_end_is_refused(outputs, capsys):
    """A `pos` beyond the epoch's items ended the epoch at once, its steps untrained; now the resume is refused,
    naming the file, before metrics.jsonl is cut back to the checkpoint's step (it was cut, then refused)."""
    import torch

    from tradelib.train import checkpoint

    ckpts = tiny_run(outputs, capsys, "far", "-p", "max_steps", "4")
    ck = torch.load(ckpts / "step-4.pt", weights_only=True)
    ck["pos"], ck["step"] = 10**15, 1
    checkpoint.save(ck, ckpts / "step-4.pt")
    metrics = (ckpts.parent / "metrics.jsonl").read_bytes()
    assert '"step": 4' in metrics.decode()
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", "far", "-p", "checkpoint_every", "2",
                         "-p", "keep_checkpoints", "5", "-p", "max_steps", "8", "-p", "resume", "True")
    line = one_error(err)
    assert code == 2 and (f"resume refused: {ckpts / 'step-4.pt'}: not a tradelib training checkpoint (pos "
                          f"{10**15} lies beyond the 583 items of epoch 0)") in line
    assert not (ckpts / "step-8.pt").exists() and (ckpts.parent / "metrics.jsonl").read_bytes() == metrics


def test_resume_when_no_checkpoint_loads_is_one_line(outputs, capsys):
    ckpts = tiny_run(outputs, capsys, "all-bad", "-p", "max_steps", "4")
    for p in ckpts.glob("*.pt"):
        CORRUPT["zeroed"](p)
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", "all-bad", "-p", "checkpoint_every", "2",
                         "-p", "keep_checkpoints", "5", "-p", "max_steps", "4", "-p", "resume", "True")
    line = one_error(err)
    assert code == 2 and "none of the 3 checkpoints" in line and "start the run again without resume" in line


@pytest.mark.parametrize("param,value,says", [
    ("init_gain", "1e30", "trained nothing: 8 optimizer steps, 8 of them skipped"),
    ("lr", "1e30", "the validation loss is nan over 99 windows although the weights are finite"),  # (at step 8)
])
def test_no_false_success(outputs, capsys, param, value, says):
    """A run whose every step was non-finite, or whose predictions are non-finite, exits 1 with one line; no
    summary is written, and the checkpoints it kept load and hold finite weights."""
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", "bad", "-p", "max_steps", "8",
                         "-p", "checkpoint_every", "2", "-p", param, value)
    line = one_error(err)
    assert code == 1 and says in line
    run = outputs / "bad"
    assert not (run / "summary.json").exists() and not (run / "predictions.parquet").exists()
    import torch

    from tradelib.train import checkpoint

    for p in (run / "checkpoints").glob("step-*.pt"):
        state = checkpoint.load(p)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_weights_that_turn_non_finite_are_never_checkpointed(outputs, capsys):
    """Weights poisoned mid-run (as an overflow would): the next checkpoint refuses, the run exits 1 naming the
    last finite checkpoint, which stays."""
    import torch

    from tradelib.train.run import TrainingDiverged, TrainingRun

    run = TrainingRun(Config(synth_symbols=3, synth_bars=400, window=8, hidden=8, layers=1, model="mlp",
                             device="cpu", compile="off", batch_size=32, epochs=1, checkpoint_every=2, log_every=2,
                             max_steps=8, run_id="poisoned"), progress=False)

    def poison(t) -> None:
        if t.step == 3:
            with torch.no_grad():
                next(t.model.parameters()).fill_(float("inf"))

    run.on_step = poison
    with pytest.raises(TrainingDiverged, match=r"weights are no longer finite .*step-2\.pt.*last finite state"):
        run.fit()
    names = sorted(p.name for p in (outputs / "poisoned" / "checkpoints").glob("*.pt"))
    assert names == ["step-2.pt"]


# ---------------------------------------------------------------------------------------------------------
# as a real process: stderr is one line, unless TRADELIB_DEBUG=1


@pytest.mark.slow
def test_a_real_process_writes_one_line_and_debug_shows_the_traceback(tmp_path):
    cmd = [sys.executable, "-m", "tradelib", "train", "-p", "lr", "inf"]
    env = dict(os.environ, TRADELIB_OUTPUTS=str(tmp_path / "o"))
    env.pop("TRADELIB_DEBUG", None)
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr == "error: parameter 'lr' is inf; it must be a finite number\n"
    res = subprocess.run(cmd, cwd=ROOT, env={**env, "TRADELIB_DEBUG": "1"}, capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "ConfigError" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["early", "while writing"])
def test_prepare_killed_at_any_moment_leaves_a_valid_cache(outputs, moment):
    """kill -9 of `tradelib prepare` part-way (after 2 s, or as soon as its temporary cache folder appears):
    the next prepare finds a valid cache or none, never a half one, and loads or builds it; the dead builder's
    leftovers are swept."""
    params = dict(synth_symbols=8, synth_bars=50_000, window=8)
    proc = subprocess.Popen([sys.executable, "-m", "tradelib", "prepare",
                             *[a for k, v in params.items() for a in ("-p", k, str(v))]],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + (2.0 if moment == "early" else 60)
    while time.monotonic() < deadline and proc.poll() is None:
        if moment == "while writing" and any((outputs / "cache").glob(".*.tmp")):
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    if moment == "while writing":
        assert any((outputs / "cache").glob(".*.tmp"))  # it was killed with a half-written temporary folder
    fs = dataset.prepare(Config(**params), verbose=False)
    folder = Path(fs.meta["cache_dir"])
    cache.load(folder)
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == [folder.name]


@pytest.mark.slow
def test_prepare_stopped_by_sigterm_says_so_and_the_next_one_resumes(outputs):
    """A scheduler's SIGTERM to `tradelib prepare` ends it as Ctrl-C does: one error line and exit 143 (it died
    in silence, by the default handler); the next prepare resumes the build from the shards done."""
    params = ["-p", "synth_symbols", "8", "-p", "synth_bars", "50000", "-p", "window", "8", "-p", "shard_rows",
              "60000"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRADELIB_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "tradelib", "prepare", *params], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not any((outputs / "cache").glob(".*.build/shard-*")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "error: stopped by SIGTERM", (out, err)
    res = subprocess.run([sys.executable, "-m", "tradelib", "prepare", *params], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "resuming the feature build" in res.stdout, res.stderr


def test_a_run_resumes_with_its_data_moved_or_spelled_otherwise(outputs, capsys, tmp_path, monkeypatch):
    """The data path is kept absolute, and may change on resume: the cache key (the files' bytes) is what must
    not. A run started on a relative path resumes from the data moved elsewhere; other bytes are refused."""
    first = tmp_path / "a" / "real"
    shutil.copytree(ROOT / "tests" / "data" / "real", first)
    monkeypatch.chdir(tmp_path / "a")
    ckpts = tiny_run(outputs, capsys, "moved", "-p", "data_path", "real", "-p", "max_steps", "2")
    assert json.loads((outputs / "moved" / "summary.json").read_text())["config"]["data_path"] == str(first)
    moved = tmp_path / "b" / "daily"
    first.parent.rename(tmp_path / "b")
    (tmp_path / "b" / "real").rename(moved)
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", "moved", "-p", "checkpoint_every", "2",
                         "-p", "max_steps", "4", "-p", "resume", "True", "-p", "data_path", moved)
    assert code == 0, err
    assert "from step-2.pt at step 2" in out and (ckpts / "step-4.pt").exists()
    sorted(moved.glob("*.csv*"))[0].unlink()  # other data: one symbol fewer
    code, out, err = cli(capsys, "train", *TINY_TRAIN, "-p", "run_id", "moved", "-p", "max_steps", "6", "-p",
                         "resume", "True", "-p", "data_path", moved)
    assert code == 2 and "resume refused" in one_error(err) and "feature cache" in one_error(err)


def test_a_copied_run_reports_on_the_cache_of_its_key_rebuilt_here(outputs, capsys, tmp_path):
    """A run folder from a colleague names their cache folder; with that gone, the report finds the cache of
    the same key in this outputs/ (built here from the same data and code), and says so where there is none."""
    fs = dataset.prepare(Config(synth_symbols=3, synth_bars=400, window=8), verbose=False)
    key = fs.meta["cache_key"]
    run = tmp_path / "colleague"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"run_id": "colleague", "cache_key": key,
                                                  "cache_dir": f"/home/someone/outputs/cache/{key}"}))
    found = load_featureset(run)
    assert found is not None and found.meta["cache_key"] == key and len(found) == len(fs)
    damaged = tmp_path / "theirs" / key  # the folder it names is there but damaged: the local one of its key
    shutil.copytree(fs.meta["cache_dir"], damaged)
    nan_bytes(damaged)
    (run / "summary.json").write_text(json.dumps({"run_id": "colleague", "cache_key": key, "cache_dir": str(damaged)}))
    capsys.readouterr()
    assert load_featureset(run) is not None and capsys.readouterr().out == ""
    (run / "summary.json").write_text(json.dumps({"run_id": "colleague", "cache_key": "0" * 20,
                                                  "cache_dir": "/home/someone/outputs/cache/x"}))
    assert load_featureset(run) is None and "not found: ridge baseline and data quality left out" in \
        capsys.readouterr().out
    other = dataset.prepare(Config(synth_symbols=4, synth_bars=400, window=8), verbose=False).meta["cache_dir"]
    (run / "summary.json").write_text(json.dumps({"run_id": "colleague", "cache_key": key, "cache_dir": other}))
    found = load_featureset(run)  # the folder named holds another key's features: the local one of the run's key
    assert found is not None and found.meta["cache_key"] == key and "not the run's" not in capsys.readouterr().out
    shutil.rmtree(fs.meta["cache_dir"])
    assert load_featureset(run) is None and f"holds the cache {Path(other).name}, not the run's {key}" in \
        capsys.readouterr().out
