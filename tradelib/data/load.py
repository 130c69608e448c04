"""Ingestion of OHLCV files: CSV / Parquet (a long file, a folder of per-symbol files or a single symbol) ->
the canonical raw frame, nothing repaired, with what the quality report needs from the files in its `attrs`;
every unusable input a one-line `DataError`. Also the frame's rows as numpy: timestamps as int64 ns, symbols as
codes in lexical order, the (symbol, time) order.

Canonical frame (see docs/data.md): columns `timestamp` (datetime64[ns, UTC]), `symbol` (str), `open`, `high`,
`low`, `close`, `volume` (float64), stably sorted by (symbol, timestamp).
"""

from __future__ import annotations

import gzip
import os
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib.data.memory import BUILD_BYTES_PER_ROW
from tradelib.paths import data_places, is_synthetic, resolve_data_path

PRICE_COLS = ("open", "high", "low", "close")
NUM_COLS = PRICE_COLS + ("volume",)
COLUMNS = ("timestamp", "symbol") + NUM_COLS

# Column aliases, matched on the lower-cased, stripped name with spaces/dashes as underscores; first wins.
ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "datetime", "date", "time", "ts", "date_time", "open_time"),
    "symbol": ("symbol", "ticker", "asset", "instrument"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c", "last", "price"),  # "price" only counts when there is no close/c/last
    "volume": ("volume", "vol", "v", "qty", "quantity"),
}
INDEX_LIKE = ("unnamed:_0", "index", "")  # an unnamed first CSV column or a Parquet index, tried as time

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")

# Thresholds (documented in docs/data.md). There is none on the size of a price or a volume: anything finite and
# positive is a possible market (a token at 1e-20 trading 1e20 units); outliers are judged against the symbol's
# own scale (price_spike).
MAX_BAD_SHARE = 0.5  # when more than this share of a column is unparseable the file is rejected
DECIMAL_SAMPLE_BYTES = 1 << 20  # a CSV's decimal mark: its first row with a fraction within its first MiB
DATE_ORDER_RATIO = 1.5  # day-first vs month-first: the chosen reading's grid regularity is at least 1.5x the other's
EPOCH_MIN = pd.Timestamp("1973-01-01", tz="UTC")  # epoch numbers read before it are refused: not told apart
DIGIT_FORMATS = {12: ("%Y%m%d%H%M", "yyyymmddHHMM"), 14: ("%Y%m%d%H%M%S", "yyyymmddHHMMSS")}  # date, time: one number
EXCEL_SERIALS = (1e4, 1e5)  # numbers in this range look like Excel serial days (1927 .. 2173)
NS_MIN, NS_MAX = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")  # datetime64[ns] range
UTC = "UTC"  # data_timezone's default: a timestamp without a zone is UTC
ZONE_SUFFIX = r"(?:Z|[+-]\d{2}(?::?\d{2})?)\s*$"  # a time written with its zone: ...Z, +02:00, -0500, +02
NA_STRINGS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
              "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]  # a missing value in a CSV cell (pandas' list)

class DataError(ValueError):
    """Unusable input. The message is one line naming the file (and column) and the problem."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def existing_data_path(data_path: str) -> str:
    """`resolve_data_path`, and a DataError now where the data is nowhere: said before any notebook starts."""
    resolved = resolve_data_path(data_path)
    if not is_synthetic(resolved) and not Path(resolved).exists():
        raise DataError(f"{data_path}: path does not exist (data_path, looked for at "
                        f"{' and at '.join(data_places(data_path))})")
    return resolved


# ----------------------------------------------------------------------------------------------------------
# loading


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in CSV_SUFFIXES + PARQUET_SUFFIXES:
        if name.endswith(s):
            return s
    return "".join(path.suffixes[-2:]).lower() or "(none)"


def _stem(path: Path) -> str:
    """`AAPL.csv.gz` -> `AAPL`: the file name without its data suffix."""
    s = _suffix(path)
    return path.name[: -len(s)] if path.name.lower().endswith(s) else path.stem


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def _read_table(path: Path, date_format: str) -> pd.DataFrame:
    """Read one CSV or Parquet file as-is; every failure becomes a one-line DataError naming the file."""
    suffix = _suffix(path)
    if suffix in PARQUET_SUFFIXES:
        try:
            import pyarrow.parquet as pq

            df = _to_pandas(lambda: pq.read_table(path))  # as pandas reads it (the index from pandas' metadata)
        except MemoryError:
            raise _out_of_memory(path) from None
        except Exception as e:  # pyarrow raises many types for a corrupt file
            raise DataError(f"{path}: cannot read as Parquet ({_short(e)})") from None
        if not isinstance(df.index, pd.RangeIndex):  # a time index saved by pandas becomes a column
            df = df.reset_index()
    elif suffix in CSV_SUFFIXES:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file")
        sep, rows = ",", []
        try:
            opener = gzip.open if suffix.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8-sig") as f:
                first, rows = f.readline(), f.readlines(DECIMAL_SAMPLE_BYTES)
            seps = [",", ";", "\t", "|"]
            sep = "\t" if suffix.startswith(".tsv") else max(seps, key=first.count)
            decimal = _decimal_mark(rows, sep)
            if not rows:  # a header and nothing else
                raise DataError(f"{path}: no rows")
            df = _to_pandas(lambda: _read_csv(path, sep, decimal, first, date_format), date_as_object=False)
            df = _without_empty_last_column(df, first, sep)
            df.attrs["decimal_comma"] = decimal == ","
        except DataError:
            raise
        except MemoryError:
            raise _out_of_memory(path) from None
        except UnicodeDecodeError as e:  # a cp1252 or UTF-16 export is text, only not UTF-8; NUL bytes are no text
            utf16 = e.object[:2] in (b"\xff\xfe", b"\xfe\xff")
            if b"\x00" in e.object and not utf16:
                raise DataError(f"{path}: cannot parse as CSV (binary, not text: NUL bytes)") from None
            raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start}"
                            f"{', a UTF-16 file' if utf16 else ''}): save it as UTF-8 (Excel: 'CSV UTF-8'; or "
                            f"`iconv -f {'utf-16' if utf16 else 'cp1252'} -t utf-8`)") from None
        except Exception as e:  # binary garbage, bad gzip, ragged rows ...
            raise DataError(f"{path}: cannot parse as CSV ({_short(e)}){_trailing_separator(e, sep, path)}") from None
    else:
        raise DataError(f"{path}: not a CSV or Parquet file (suffix '{suffix}'; expected .csv, .csv.gz, "
                        f".tsv or .parquet)")
    if len(df) == 0:
        raise DataError(f"{path}: no rows")
    return df


def _without_empty_last_column(df: pd.DataFrame, header: str, sep: str) -> pd.DataFrame:
    """A header and rows that end with the separator ('...,volume,') read as one more column, unnamed and empty:
    no column of the file, but the separator at the end of its lines. Dropped (said in `extra_columns`), where it
    was listed as a column '' (twice, beside an unnamed first column: refused as a column named twice)."""
    if not header.rstrip("\r\n").endswith(sep) or df.shape[1] < 2 or str(df.columns[-1]).strip() \
            or df.iloc[:, -1].notna().any():
        return df
    df = df.iloc[:, :-1]
    df.attrs["empty_last_column"] = True
    return df


def _label(column) -> str:
    """A column's name as listed in a message: an unnamed one said so, not as nothing."""
    return str(column) if str(column).strip() else "(unnamed)"


def _trailing_separator(e: Exception, sep: str, path: Path) -> str:
    """Why a row has one field more than the header, where it ends with the separator ('1,2,3,'): an export that
    ends its rows so reads as one more, empty column. The file is read to its first row of one field more (Arrow
    cuts a long row short in its message; it may lie past the first MiB: a later export appended)."""
    m = re.search(r"Expected (\d+) columns, got (\d+)", str(e))
    if not m or int(m[2]) != int(m[1]) + 1:
        return ""
    opener = gzip.open if _suffix(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig") as f:
        fields = f.readline().count(sep)
        line, row = next(((n, row) for n, row in enumerate(f, 2) if row.count(sep) == fields + 1), (0, ""))
    if not row.rstrip("\r\n").endswith(sep):
        return ""
    return (f": line {line} (the first of one field more) ends with the separator {sep!r}, the likely cause (a "
            f"trailing separator reads as one more, empty field); remove it from the end of every row, or add a "
            f"name for it to the header")


def _out_of_memory(path: Path) -> DataError:
    """The file does not fit the memory this process may take (an address-space limit, ulimit -v; the kernel's
    OOM killer ends a process without a word): said as such, not as a file that is no Parquet or CSV."""
    return DataError(f"{path}: out of memory reading it ({path.stat().st_size / 1e9:.2f} GB on disk): the whole file "
                     f"is read into memory, and the feature build takes about {BUILD_BYTES_PER_ROW} bytes a row "
                     f"(docs/data.md); free memory or raise this process's limit, or train on fewer symbols or years")


def _decimal_mark(rows: list[str], sep: str) -> str:
    """',' where the first of these rows to write a number with a fraction writes it with a comma ('187,15'), in a
    file whose fields are not comma-separated (European exports); else '.'. A row of whole numbers (38000) or of
    dates alone ('02.01.2024') settles nothing: the next one is read."""
    if sep == ",":
        return "."
    for row in rows:
        if re.search(r"\d,\d", row):
            return ","
        if any(re.fullmatch(r'\s*"?[+-]?\d*\.\d+(?:[eE][+-]?\d+)?"?\s*', cell) for cell in row.split(sep)):
            return "."
    return "."


def _to_pandas(read: Callable, **options) -> pd.DataFrame:
    """The Arrow table `read()` returns as a frame, each column handed over as it is converted (numbers without a
    missing value without a copy) and not copied again into one block per dtype (pd.read_parquet does); the
    reader's freed buffers handed back to the system once no reference to the table is left (numpy does not
    allocate from Arrow's pool)."""
    import pyarrow as pa

    df = read().to_pandas(split_blocks=True, self_destruct=True, **options)  # (no reference left to the table)
    pa.default_memory_pool().release_unused()
    return df


def _read_csv(path: Path, sep: str, decimal: str, header: str, date_format: str):
    """A CSV file as it is, as an Arrow table, with pyarrow's reader (blocks parsed on all cores); pandas' strings
    mean a missing value, but in the symbol column (`_na_text_as_null`). Kept as text: the symbol column (a code
    such as '0700' keeps its zero), a `time` column beside a `date` column (the two are joined) and, where a
    `date_format` is given, every column that may hold the timestamps; read as float64: the price and volume
    columns; the other columns used take the types inferred from the first block (numbers, ISO timestamps and
    dates, else text, which `_frame_from_table` reads as pandas would). Where a later block does not fit them
    (text in a number column further down), the file is read again with types inferred from all of it: the
    same frame either way."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    cells = [n.strip('"') for n in header.lstrip("\ufeff").rstrip("\r\n").split(sep)]
    names = [n.strip().strip('"') for n in cells]
    normed = [_norm(n) for n in names]
    timelike = ALIASES["timestamp"] + INDEX_LIKE if date_format else ()
    texts = {n: pa.string() for n, m in zip(names, normed) if (m == "time" and "date" in normed) or m in timelike}
    found = _match_columns(pd.DataFrame(columns=names))
    symbol = {cells[names.index(found["symbol"])], found["symbol"]} if "symbol" in found else set()
    texts |= {n: pa.string() for n in symbol}  # (as the header has it, and stripped as pyarrow may not)
    numbers = {found[c]: pa.float64() for c in NUM_COLS if c in found and found[c] not in texts}
    parse = pacsv.ParseOptions(delimiter=sep)

    def convert(types: dict) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(decimal_point=decimal, null_values=NA_STRINGS, strings_can_be_null=False,
                                    column_types=types, true_values=[], false_values=[])  # no booleans: 'true'
        #   in a column of 0 and 1 is no number

    try:
        first = pacsv.open_csv(path, parse_options=parse, convert_options=convert(texts | numbers)).schema
        used = {f.name: f.type for f in first if f.name in found.values()}
        return _na_text_as_null(pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(block_size=16 << 20), parse_options=parse,
            convert_options=convert(used | texts | numbers)), symbol)
    except pa.ArrowInvalid as e:
        if "conversion error" not in str(e):
            raise
    return _na_text_as_null(pacsv.read_csv(path, parse_options=parse, convert_options=convert(texts)), symbol)


def _na_text_as_null(table, keep: set[str]):
    """pandas' missing-value strings as null in the text columns but `keep`: a symbol column, where 'NA' (National
    Bank of Canada), 'NULL' or 'nan' are tickers and only an empty cell is missing (rule bad_symbol)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    na = pa.array(NA_STRINGS)
    for i, field in enumerate(table.schema):
        if (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)) and field.name not in keep:
            col = table.column(i)
            table = table.set_column(i, field, pc.if_else(pc.is_in(col, value_set=na), pa.scalar(None, field.type),
                                                          col))
    return table


def _norm(name) -> str:
    """A header as matched: Stooq's '<CLOSE>' is 'close'."""
    return str(name).strip().strip("<>").lower().replace(" ", "_").replace("-", "_")


def _match_columns(df: pd.DataFrame) -> dict[str, str]:
    """Map canonical name -> actual column name (case-insensitive, aliases in priority order)."""
    by_norm: dict[str, str] = {}
    for col in df.columns:
        by_norm.setdefault(_norm(col), col)
    found: dict[str, str] = {}
    for canon, aliases in ALIASES.items():
        for a in aliases:
            if a in by_norm and by_norm[a] not in found.values():
                found[canon] = by_norm[a]
                break
    if "timestamp" not in found:
        for a in INDEX_LIKE:
            if a in by_norm:
                found["timestamp"] = by_norm[a]
                break
    return found


def _epoch_unit(values: np.ndarray) -> str:
    """Epoch seconds / ms / us / ns told apart by magnitude (valid for dates after 1973)."""
    med = float(np.median(np.abs(values)))
    return "s" if med < 1e11 else "ms" if med < 1e14 else "us" if med < 1e17 else "ns"


def _parse_numeric_time(s: pd.Series, where: str) -> tuple[pd.Series, str]:
    v = s.to_numpy(dtype="float64", na_value=np.nan)
    fin = v[np.isfinite(v)]
    if len(fin) == 0:
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]"), "epoch"
    # yyyymmdd integers: 8 digits (a year-9999 placeholder too: it becomes a bad_timestamp), mostly 1000-2999
    if fin.min() >= 1e7 and fin.max() < 1e8 and np.median(fin) < 3e7 and np.all(fin == np.round(fin)):
        txt = s.astype("Int64").astype("str")
        return pd.to_datetime(txt, format="%Y%m%d", utc=True, errors="coerce"), "yyyymmdd"
    # a date and time as one integer, 202401020930 or 20240102093000 (12 or 14 digits, read as epoch ms they were
    # 1976 or past 2262): taken where nearly every value spells one, as epoch ms of 1973-1979 mostly do not
    for digits, (fmt, name) in DIGIT_FORMATS.items():
        if 10 ** (digits - 1) <= fin.min() and fin.max() < 10**digits and np.median(fin) < 3 * 10 ** (digits - 1) \
                and np.all(fin == np.round(fin)):
            ts = pd.to_datetime(s.astype("Int64").astype("str"), format=fmt, utc=True, errors="coerce")
            if ts.isna().sum() - (len(s) - len(fin)) <= MAX_BAD_SHARE / 10 * len(fin):
                return ts, name
    unit = _epoch_unit(fin)
    if unit == "s" and np.median(fin) < EPOCH_MIN.timestamp():
        raise DataError(_before_1973(fin, where))
    if unit == "ns" and pd.api.types.is_integer_dtype(s.dtype):  # exact, no float rounding
        ts = pd.to_datetime(s.astype("int64"), unit="ns", utc=True, errors="coerce")
    else:
        ts = pd.to_datetime(v, unit=unit, utc=True, errors="coerce").to_series(index=s.index)
    # a value read before 1973 in the column's unit is no epoch number of it (seconds among milliseconds read as
    # 1970-01-20, a negative one): a bad timestamp, as the column would be refused if most were
    return ts.mask(ts < EPOCH_MIN), f"epoch_{unit}"


def _before_1973(fin: np.ndarray, where: str) -> str:
    """Why numbers read as epoch seconds before 1973 are refused: they may well count something else (Excel
    serial days: 44928, 2023-01-02, would be 1970-01-01 12:28:48, daily bars read as 1-second bars)."""
    x = float(fin[np.argmin(np.abs(fin - np.median(fin)))])  # a typical one
    what = (f"{where}: numbers such as {x:.10g} read as epoch seconds are "
            f"{pd.Timestamp(x, unit='s', tz='UTC'):%Y-%m-%d %H:%M:%S} UTC, before 1973, where epoch numbers cannot "
            f"be told from other counts")
    if not EXCEL_SERIALS[0] <= float(np.median(fin)) < EXCEL_SERIALS[1]:
        return f"{what}: write the timestamps as text (e.g. 2024-01-02 10:00:00)"
    day = pd.Timestamp("1899-12-30") + pd.Timedelta(x, unit="D")
    return (f"{what}; they look like Excel serial day numbers ({x:.10g} is "
            f"{day:%Y-%m-%d}{'' if day == day.normalize() else f' {day:%H:%M}'}): export the dates as text "
            f"(yyyy-mm-dd), or convert them (days since 1899-12-30)")


def _guess_format(s: pd.Series) -> str | None:
    """The strftime format most values of a sample follow, or None (never a slow per-value parse)."""
    try:
        from pandas.tseries.api import guess_datetime_format
    except ImportError:  # pandas < 2.2
        return None
    sample = s.dropna().astype("str")
    sample = sample.iloc[np.linspace(0, len(sample) - 1, min(len(sample), 50)).astype(int)] if len(sample) else []
    guesses = pd.Series([guess_datetime_format(x) for x in sample]).dropna()
    return str(guesses.mode().iloc[0]) if len(guesses) else None


def _to_ns(ts: pd.Series) -> pd.Series:
    """UTC datetimes of any unit -> datetime64[ns, UTC]. A value ns cannot hold (before 1677 or after 2262, such
    as a year 9999; pandas 3 parses it to microseconds) becomes NaT, a counted `bad_timestamp` row."""
    if ts.dt.unit != "ns" and not (NS_MIN <= ts.min() and ts.max() <= NS_MAX):  # (NaT: skipped by both)
        ts = ts.where(ts.isna() | ((ts >= NS_MIN) & (ts <= NS_MAX)))
    return ts.astype("datetime64[ns, UTC]")


def _day_month_swapped(fmt: str) -> str | None:
    """`fmt` with day and month exchanged where both come before the year (01/02/2024: the 1st of February or
    the 2nd of January); None where the order is not in doubt (no day or month, or the year first, as ISO)."""
    d, m, y = fmt.find("%d"), fmt.find("%m"), fmt.find("%Y")
    if d < 0 or m < 0 or 0 <= y < max(d, m):
        return None
    return fmt.replace("%d", "\0").replace("%m", "%d").replace("\0", "%m")


def _grid_regularity(ts: pd.Series, groups: pd.Series | None) -> tuple[float, int]:
    """(how close a symbol's distinct timestamps are to one regular bar grid, number of steps). The score is the
    share of steps equal to the most common one, times the share of the time span those steps would cover
    (at most 1): 1.0 for a regular grid; hourly bars of two days read month-for-day jump a month once (0.05),
    daily bars read so step by a month (about 0.5)."""
    t = _to_ns(ts)
    ok = t.notna().to_numpy()
    g = np.zeros(int(ok.sum()), dtype=np.int64) if groups is None else pd.factorize(
        groups.astype("str").to_numpy()[ok])[0]
    frame = pd.DataFrame({"g": g, "t": ns_since_epoch(t[ok])}).drop_duplicates().sort_values(["g", "t"])
    gv, tv = frame["g"].to_numpy(), frame["t"].to_numpy()
    steps = np.diff(tv)[gv[1:] == gv[:-1]]
    if len(steps) == 0:
        return 0.0, 0
    counts = pd.Series(steps).value_counts()
    share = counts.iloc[0] / len(steps)
    coverage = min(1.0, len(steps) * float(counts.index[0]) / float(steps.sum()))
    return float(share * coverage), len(steps)


def _read_day_month(s: pd.Series, fmt: str, groups: pd.Series | None, where: str) -> tuple[pd.Series, str, str]:
    """Parse with `fmt`; where day and month could be swapped, take the reading that parses more values, or,
    when both parse the same, the one with the more regular bar grid (said in the note); else refuse."""
    a = pd.to_datetime(s, utc=True, errors="coerce", format=fmt)
    other = _day_month_swapped(fmt)
    if other is None:
        return a, f"format {fmt}", ""
    b = pd.to_datetime(s, utc=True, errors="coerce", format=other)
    if int(a.isna().sum()) != int(b.isna().sum()):  # a value such as 13/02 settles the order
        return (a, f"format {fmt}", "") if a.isna().sum() < b.isna().sum() else (b, f"format {other}", "")
    (ra, na), (rb, nb) = _grid_regularity(a, groups), _grid_regularity(b, groups)
    day_first, month_first = (fmt, other) if fmt.find("%d") < fmt.find("%m") else (other, fmt)
    if max(na, nb) < 2 or max(ra, rb) <= DATE_ORDER_RATIO * min(ra, rb):
        example = str(s[a.notna()].iloc[0]) if a.notna().any() else str(s.iloc[0])
        raise DataError(f"{where}: dates such as {example!r} read both day-first ({day_first}) and month-first "
                        f"({month_first}), and neither reading gives a more regular bar grid: set date_format "
                        f"(e.g. -p date_format '{day_first}')")
    (best, best_fmt, r1, r2) = (a, fmt, ra, rb) if ra > rb else (b, other, rb, ra)
    order = "day-first" if best_fmt == day_first else "month-first"
    note = (f"dates read {order} ({best_fmt}): every value also parses the other way, but this reading gives the "
            f"regular bar grid (regularity {r1:.2f} against {r2:.2f}); set date_format to choose")
    return best, f"format {best_fmt}", note


def _parse_time(s: pd.Series, date_format: str, groups: pd.Series | None = None,
                where: str = "timestamps") -> tuple[pd.Series, str, str, np.ndarray | bool]:
    """Any accepted timestamp column -> (UTC datetimes (naive = UTC), how it was read, a note for the report, which
    values were written without a zone: True/False for the whole column, or a mask where it mixes both).
    Unparseable values become NaT. `date_format` (strftime) is used as given on text and numbers."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC"), "datetime", "", False
    if pd.api.types.is_datetime64_dtype(s.dtype):
        return s.dt.tz_localize("UTC"), "datetime", "", True
    if date_format:
        text = s.astype("str").mask(s.isna())
        return (pd.to_datetime(text, utc=True, errors="coerce", format=date_format), f"format {date_format}", "",
                not _zoned(date_format))
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        ts, how = _parse_numeric_time(s, where)
        return ts, how, "", not how.startswith("epoch")  # (epoch numbers count from UTC; yyyymmdd has no zone)
    note = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = (*_parse_iso(s), "")
        if best[0].isna().mean() > MAX_BAD_SHARE / 10:
            num = pd.to_numeric(s, errors="coerce")
            if num.notna().mean() > 0.5:
                ts, how = _parse_numeric_time(num, where)
                if ts.isna().sum() < best[0].isna().sum():
                    best = (ts, how, not how.startswith("epoch"))
        if best[0].isna().mean() > MAX_BAD_SHARE / 10:  # e.g. "01/02/2024 10:00": guess the format
            fmt = _guess_format(s)
            if fmt:
                ts, how, cand_note = _read_day_month(s, fmt, groups, where)
                if ts.isna().sum() < best[0].isna().sum():
                    best, note = (ts, how, not _zoned(how)), cand_note
    return best[0], best[1], note, best[2]


def _zoned(fmt: str) -> bool:
    """Whether a strftime format reads a zone (%z, %Z): its timestamps are no local times."""
    return "%z" in fmt or "%Z" in fmt


def _parse_iso(s: pd.Series) -> tuple[pd.Series, str, np.ndarray | bool]:
    """ISO 8601 text -> (UTC datetimes, "iso", which values were written without a zone). One parse where every
    value has the same offset or none; a column of several offsets (a zone's winter and summer) is parsed to UTC,
    and its values without one are found by their text."""
    sample = s.iloc[np.linspace(0, len(s) - 1, min(len(s), 1000)).astype(int)]  # (a failed parse of all costs half
    #   of one: a sample of several offsets goes straight to the parse to UTC)
    try:
        pd.to_datetime(sample, errors="coerce", format="ISO8601")
        ts = pd.to_datetime(s, errors="coerce", format="ISO8601")
    except ValueError:  # offsets differ, or some values have none
        import pyarrow as pa
        import pyarrow.compute as pc

        ts = pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")
        zoned = pc.fill_null(pc.match_substring_regex(pa.array(s.astype("str")), ZONE_SUFFIX), True)  # (15x pandas')
        return ts, "iso", ~zoned.to_numpy(zero_copy_only=False)
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        return ts.dt.tz_convert("UTC"), "iso", False
    return ts.dt.tz_localize("UTC"), "iso", True


def _local_to_utc(ts: pd.Series, naive: np.ndarray | bool, zone: str) -> tuple[pd.Series, dict]:
    """The values written without a zone (`naive`) read as wall-clock times of `zone` (data_timezone) instead of
    UTC, and how many there were. A column of dates (every value at midnight: daily bars) stays at midnight UTC: a
    date is a day, not an instant, and localised its bars would step 23 and 25 hours at a DST change. A local time
    that does not exist (the hour skipped when clocks go forward) or exists twice (the hour repeated when they go
    back: nothing in a value tells which) becomes NaT, a `bad_timestamp` row, counted here."""
    mask = np.broadcast_to(np.asarray(naive, dtype=bool), (len(ts),)) & ts.notna().to_numpy()
    facts = {"naive": int(mask.sum()), "nonexistent": 0, "ambiguous": 0, "dates": False}
    if zone == UTC or not mask.any():
        return ts, facts
    wall = ts[mask].dt.tz_localize(None)
    if (wall == wall.dt.normalize()).all():
        facts["dates"] = True
        return ts, facts
    local = wall.dt.tz_localize(zone, nonexistent="NaT", ambiguous="NaT")
    skipped = wall.dt.tz_localize(zone, nonexistent="NaT", ambiguous=np.zeros(len(wall), dtype=bool)).isna()
    facts["nonexistent"] = int(skipped.sum())
    facts["ambiguous"] = int(local.isna().sum()) - facts["nonexistent"]
    out = ts.copy()
    out[mask] = local.dt.tz_convert("UTC").astype(ts.dtype)
    return out, facts


def _as_text(col: pd.Series) -> pd.Series:
    """Cells as text, missing ones missing; whole numbers as integers (a column of them with a missing value is
    float64: 20240102.0)."""
    if pd.api.types.is_float_dtype(col.dtype):
        v = col.dropna()
        if np.isfinite(v).all() and (v == v.round()).all():
            col = col.astype("Int64")
    return col.astype("str").str.strip().mask(col.isna())


def _time_of_day(col: pd.Series, where: str) -> pd.Series:
    """A time-of-day column as text to join to its date. Times written as integers (HHMMSS or HHMM, which many
    exports write without their leading zeros: 500 is 05:00 as HHMM, 00:05:00 as HHMMSS) are zero-padded: to 6
    digits where one is above 2359 or has more than 4 digits, else to 4 (HHMM) where one has hours (100 or more) or
    4 digits, or all are 0.
    Times all from 1 to 99 read both ways (59: 00:59 or 00:00:59) and are refused. Other text is kept as written."""
    text = _as_text(col)
    given = pd.Series(text.dropna().unique(), dtype="str")  # (at most 86,400 times of day)
    if not len(given) or not given.str.fullmatch(r"\d{1,6}").all():
        return text
    values = given.astype("int64")
    top, longest = int(values.max()), int(given.str.len().max())
    if top > 2359 or longest > 4:
        return text.str.zfill(6)
    if top >= 100 or longest == 4 or top == 0:
        return text.str.zfill(4)
    raise DataError(f"{where}: integer times of day from {values.min()} to {top} read both as HHMM "
                    f"(00:{top:02d}) and as HHMMSS (00:00:{top:02d}): write them as HH:MM:SS, or zero-padded")


def _numbers_from_text(col: pd.Series, decimal_comma: bool, where: str) -> pd.Series:
    """A number column read as text (a cell that is not a number sent it there) -> numbers, NaN where a cell is not
    one (the caller counts them), read with the file's decimal mark: in a decimal-comma file '100,90' is 100.9 and
    a value holding a '.' is not a number. A number with thousands separators ('23.300' there, '1,234.5' in a
    file of decimal points) is refused: read by the other mark it would be 1000x off."""
    mark, other = (",", ".") if decimal_comma else (".", ",")
    text = _as_text(col)
    grouped = text.str.fullmatch(rf"[+-]?\d{{1,3}}(?:\{other}\d{{3}})+(?:\{mark}\d*)?").fillna(False).to_numpy(bool)
    if grouped.any():
        raise DataError(f"{where}: {int(grouped.sum())} of {len(col)} values such as {text[grouped].iloc[0]!r} "
                        f"have '{other}' between groups of three digits: thousands separators are not accepted (the "
                        f"decimal mark of this file is '{mark}'); export the numbers without them")
    if not decimal_comma:
        return pd.to_numeric(text, errors="coerce")  # (the text: a boolean True is no number, as 'True' is not)
    text = text.mask(text.str.contains(".", regex=False).fillna(False).to_numpy(bool))
    return pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce")


def _column(df: pd.DataFrame, name: str, path: Path) -> pd.Series:
    """A column the load reads; one its header names twice (two exports joined side by side) is refused, naming
    it, where pandas gives a frame of both."""
    col = df[name]
    if isinstance(col, pd.DataFrame):
        raise DataError(f"{path}: column '{name}' appears {col.shape[1]} times in the header: keep one of them (or "
                        f"rename the others)")
    return col


def _frame_from_table(df: pd.DataFrame, path: Path, symbol: str | None, date_format: str, data_timezone: str
                      ) -> tuple[pd.DataFrame, dict]:
    """One file's table -> canonical columns (unsorted, nothing repaired) and facts for the report."""
    found = _match_columns(df)
    missing = [c for c in COLUMNS if c not in found and c != "symbol"]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        what = "column" if len(missing) == 1 else "columns"
        cols = ", ".join(_label(c) for c in df.columns)
        header = ("; its first line is numbers, not names: the file has no header line (Binance's klines): add "
                  "one, e.g. open_time,open,high,low,close,volume,...") if all(
            re.fullmatch(r"\s*[+-]?\d+(\.\d*)?([eE][+-]?\d+)?\s*", str(c)) for c in df.columns) else ""
        raise DataError(f"{path}: missing required {what} {names} (found: {cols}){header}")

    tcol = found["timestamp"]
    raw_t = _column(df, tcol, path)
    if _norm(tcol) == "date":  # a separate time-of-day column belongs to the date
        by_norm = {_norm(c): c for c in df.columns}
        if "time" in by_norm and by_norm["time"] not in found.values():
            found["time_of_day"] = by_norm["time"]
            clock = _time_of_day(_column(df, by_norm["time"], path), where=f"{path}: column '{by_norm['time']}'")
            raw_t = _as_text(raw_t) + " " + clock
    groups = _column(df, found["symbol"], path) if "symbol" in found else None
    ts, fmt, note, naive = _parse_time(raw_t, date_format, groups, where=f"{path}: column '{tcol}'")
    ts, zone = _local_to_utc(_to_ns(ts), naive, data_timezone)
    bad = ts.isna().to_numpy()
    n_bad = int(bad.sum())
    if n_bad > MAX_BAD_SHARE * len(df):
        present = bad & raw_t.notna().to_numpy()
        example = repr(str(raw_t[present].iloc[0])) if present.any() else "empty"
        how = f" with date_format {date_format!r}" if date_format else ""
        raise DataError(f"{path}: column '{tcol}': {n_bad} of {len(df)} timestamps are unparseable{how} "
                        f"(e.g. {example})")

    out = {"timestamp": ts.array}
    facts: dict = {"timestamp_format": fmt, "timestamp_note": note, "bad_timestamps": n_bad, "zone": zone,
                   "non_numeric": {},
                   "decimal_comma": bool(df.attrs.get("decimal_comma")), "missing_symbols": 0}
    for c in NUM_COLS:
        col = _column(df, found[c], path)
        if col.dtype == np.float64:  # NaN already: no copy
            v = col.to_numpy()
        elif pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
            v = col.to_numpy(dtype="float64", na_value=np.nan)
        else:
            num = _numbers_from_text(col, facts["decimal_comma"], where=f"{path}: column '{found[c]}'")
            non_num = (num.isna() & col.notna()).to_numpy()
            if non_num.sum() > MAX_BAD_SHARE * len(df):
                cell = str(col[non_num].iloc[0])
                comma = ("; decimal commas are read in files whose fields are separated by ';' or tabs, not ',': "
                         "export with ';' or with decimal points") if re.fullmatch(r"\s*[+-]?\d+,\d+\s*", cell) else ""
                raise DataError(f"{path}: column '{found[c]}': {int(non_num.sum())} of {len(df)} values are "
                                f"not numbers (e.g. {cell!r}){comma}")
            if non_num.any():
                facts["non_numeric"][c] = int(non_num.sum())
            v = num.to_numpy(dtype="float64", na_value=np.nan)
        out[c] = v
    frame = pd.DataFrame(out, copy=False)  # (a dict of arrays is copied into one block by default)
    extra = [c for c in df.columns if c not in found.values()]
    if "symbol" in found:
        col = _column(df, found["symbol"], path)
        sym = col.astype("str").str.strip().mask(col.isna())  # missing stays missing: rule bad_symbol
        frame.insert(1, "symbol", sym.array)
        if symbol is not None:
            frame = frame[(sym == symbol).to_numpy()].reset_index(drop=True)
            if len(frame) == 0:
                raise DataError(f"{path}: no rows for symbol '{symbol}' in column '{found['symbol']}'")
        facts["missing_symbols"] = int((frame["symbol"].isna() | (frame["symbol"] == "")).sum())  # (bad_symbol's)
    else:
        _one_series(frame, df, path, tcol, extra)
        frame.insert(1, "symbol", symbol if symbol is not None else _stem(path))
    frame["symbol"] = frame["symbol"].astype("str")
    facts["extra_columns"] = [_label(c) for c in extra] + (
        ["(empty: the rows end with the separator)"] if df.attrs.get("empty_last_column") else [])
    return frame, facts


def _one_series(frame: pd.DataFrame, df: pd.DataFrame, path: Path, tcol: str, extra: list) -> None:
    """A file without a symbol column is one series of one bar per timestamp: where more than half its timestamps
    recur with another close, it is not (a symbol column under a name that is no alias, such as Kaggle's 'Name', or
    the time of day in a column not joined to the date), and all but the last row of each timestamp would be
    dropped as duplicates. Refused, naming the file's text columns. Rows repeated with the same close (an overlap
    written twice) are duplicates: cleaning counts them."""
    t = ns_since_epoch(frame["timestamp"])
    if len(t) < 2 or (t[1:] > t[:-1]).all():  # (the usual file: in time order, each time once)
        return
    rows = pd.DataFrame({"t": t, "close": frame["close"].to_numpy()})[t != np.iinfo(np.int64).min]
    per_time = rows[rows["t"].duplicated(keep=False)].groupby("t")["close"].nunique(dropna=False)
    recur, times = int((per_time > 1).sum()), int(rows["t"].nunique())
    if recur > MAX_BAD_SHARE * times:
        text = list(dict.fromkeys(f"'{c}'" for c, dtype in zip(df.columns, df.dtypes)
                                  if c in extra and not pd.api.types.is_numeric_dtype(dtype)))
        which = f"if {' or '.join(text)} holds" if text else "if a column holds"
        raise DataError(f"{path}: no symbol column, and {recur} of {times} timestamps (column '{tcol}') recur with "
                        f"another close: read as one series, all but the last row of each would be dropped as "
                        f"duplicates; {which} the symbols, name it 'symbol' (or ticker, asset, instrument), or the "
                        f"time of day, name it 'time' and the dates' column 'date'")


def wall_ns(ns: np.ndarray, zone: str) -> np.ndarray:
    """Int64 ns since the epoch -> the same instants on the wall clock of `zone` (an IANA name), as ns: what a time
    of day or a day of the market is read from (a New York open is 09:30 on both sides of a DST change)."""
    ns = np.asarray(ns, dtype=np.int64)
    return ns if zone == UTC else pd.DatetimeIndex(ns, tz=UTC).tz_convert(zone).tz_localize(None).asi8


def ns_since_epoch(t) -> np.ndarray:
    """Datetimes (tz-aware, or naive = UTC) -> int64 ns since the epoch, NaT as int64 min; no object arrays.
    The one conversion every module uses (pandas 3 may hold datetimes in us)."""
    arr = t.array if isinstance(t, (pd.Series, pd.Index)) else t
    if isinstance(arr, pd.arrays.DatetimeArray):  # a quarter of the time of going through a DatetimeIndex
        return arr.as_unit("ns").asi8
    return pd.DatetimeIndex(t).as_unit("ns").asi8


def symbol_codes(sym: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Symbols as strings, their integer codes in lexical order (-1 for missing) and the distinct names.

    Non-string symbols (categorical, ints) are compared as strings, so the order is the same for any dtype.
    A column grouped by symbol in lexical order (as loaded, and every clean frame) is coded from its runs.
    """
    if not isinstance(sym.dtype, pd.StringDtype):
        sym = sym.astype("str").mask(sym.isna())
    runs = _sorted_runs(sym)
    if runs is not None:
        return sym, *runs
    codes, uniques = pd.factorize(sym, sort=True)
    return sym, codes.astype(np.int32), np.asarray(uniques, dtype=object)


def _sorted_runs(sym: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes, names) of a string column that is grouped by symbol in lexical order with nothing missing,
    found by comparing neighbours (no hashing of every string); None otherwise."""
    if len(sym) < 2 or getattr(sym.dtype, "storage", "") != "pyarrow" or sym.isna().any():
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(sym.array)
    cut = np.linspace(1, len(arr), (os.cpu_count() or 1) + 1).astype(np.int64)  # one part per core (Arrow frees
    #   the GIL): the rows where the symbol differs from the row before

    def changes(a: int, b: int) -> np.ndarray:
        return np.flatnonzero(pc.not_equal(arr.slice(a, b - a), arr.slice(a - 1, b - a)).to_numpy(
            zero_copy_only=False)) + a

    with ThreadPoolExecutor(max_workers=len(cut) - 1) as pool:
        starts = np.concatenate([[0], *pool.map(changes, cut[:-1], cut[1:])])
    names = np.asarray(arr.take(pa.array(starts)).to_pylist(), dtype=object)
    if any(names[i] >= names[i + 1] for i in range(len(names) - 1)):  # a symbol twice, or out of order
        return None
    return np.repeat(np.arange(len(starts), dtype=np.int32), np.diff(np.r_[starts, len(arr)])), names


def unsorted_rows(ts: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per row: True when an earlier row (in the given order) of the same symbol has a later timestamp."""
    if len(ts) < 2:
        return np.zeros(len(ts), dtype=bool)
    t = pd.Series(ts.view("int64"))
    prev_max = t.groupby(codes, sort=False).cummax().to_numpy()
    return ts.view("int64") < prev_max


def data_files(path: Path) -> tuple[list[Path], list[Path]]:
    """The files `load_ohlcv` reads from `path` and the ones it skips (a folder: its CSV/Parquet files, not
    sub-folders, hidden files or the owner file '~$AAA.csv' Excel leaves beside a file it has open). The feature
    cache hashes exactly these."""
    if not path.is_dir():
        return [path], []
    files: list[Path] = []
    skipped: list[Path] = []
    for p in sorted(path.iterdir()):
        if p.name.startswith((".", "~$")) or p.is_dir():
            continue
        (files if _suffix(p) in CSV_SUFFIXES + PARQUET_SUFFIXES else skipped).append(p)
    return files, skipped


def estimated_rows(files: list[Path], sample_bytes: int = DECIMAL_SAMPLE_BYTES, spots: int = 16) -> int:
    """About how many rows these files hold, without reading them: a Parquet file's own count; a CSV's newlines
    per byte in `spots` stretches spread over it (`sample_bytes` in all; a .gz file's first `sample_bytes`,
    decompressed) times its size. What the memory check before a build needs, not an exact count: rows differ
    in length from symbol to symbol (a file's first rows alone were 10% off)."""
    import zlib

    total = 0
    for f in files:
        if _suffix(f) in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            try:
                total += pq.ParquetFile(f).metadata.num_rows
            except Exception:  # (an unreadable file is the loader's to name)
                pass
            continue
        size = f.stat().st_size
        with f.open("rb") as fh:
            if _suffix(f).endswith(".gz"):
                head = fh.read(sample_bytes)
                try:
                    lines, read = zlib.decompressobj(wbits=31).decompress(head).count(b"\n"), len(head)
                except zlib.error:  # not gzip: the loader names the file
                    lines, read = 0, 1
            elif size <= sample_bytes:
                text = fh.read()
                lines, read = text.count(b"\n") + (not text.endswith(b"\n")), size
            else:
                lines = read = 0
                for at in np.linspace(0, size - sample_bytes // spots, spots).astype(np.int64):
                    fh.seek(int(at))
                    part = fh.read(sample_bytes // spots)
                    lines, read = lines + part.count(b"\n"), read + len(part)
        total += max(round(lines * size / max(read, 1)) - 1, 0)  # (less the header)
    return total


def _one_file_per_stem(folder: Path, files: list[Path]) -> None:
    """Two files of one stem (AAA.csv and AAA.parquet) would be one symbol: their rows merged, the one file's read
    as duplicates of the other's and its order as disorder. Refused, naming both."""
    seen: dict[str, Path] = {}
    for p in files:
        first = seen.setdefault(_stem(p), p)
        if first is not p:
            raise DataError(f"{folder}: files '{first.name}' and '{p.name}' would both be symbol '{_stem(p)}' (the "
                            f"file name without its suffix): keep one of them in the folder")


def load_ohlcv(path: str | Path, symbol: str | None = None, *, date_format: str, data_timezone: str
               ) -> pd.DataFrame:
    """Read a CSV/Parquet file or a directory of per-symbol files into the canonical raw frame.

    Nothing is repaired here: bad values are kept (NaN/NaT included) so `clean_ohlcv` can count them. The
    frame is stably sorted by (symbol, timestamp); how many rows were out of order in the file as read is
    kept in `attrs` for the quality report. `symbol` names a single-symbol file without a symbol column
    (default: the file stem) or selects one symbol from a long file; not a folder's. `date_format` (strftime;
    Config.date_format) reads text timestamps as given; "" infers the format. `data_timezone` (an IANA name;
    Config.data_timezone) is the zone of the timestamps written without one.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: path does not exist")
    files, skipped = data_files(path)
    if path.is_dir():
        if symbol is not None:  # (it names or selects within one file; a folder's symbols are its files')
            raise DataError(f"{path}: symbol={symbol!r} names or selects the symbol of one file, not of a folder: "
                            f"read that symbol's file, or select it from the folder's frame")
        if not files:
            other = (f" ({len(skipped)} other file(s), e.g. '{skipped[0].name}': a data file's name ends in "
                     f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}; rename them, e.g. Stooq's and Kaggle's '.txt' "
                     f"files to '.csv')") if skipped else ""
            raise DataError(f"{path}: directory has no CSV or Parquet files{other}")
        _one_file_per_stem(path, files)
        parts = [_frame_from_table(_read_table(p, date_format), p, None, date_format, data_timezone) for p in files]
    else:
        parts = [_frame_from_table(_read_table(path, date_format), path, symbol, date_format, data_timezone)]

    frame = pd.concat([f for f, _ in parts], ignore_index=True) if len(parts) > 1 else parts[0][0]
    ts = ns_since_epoch(frame["timestamp"]).view("datetime64[ns]")
    _, codes, uniques = symbol_codes(frame["symbol"])
    file_of_row = np.repeat(np.arange(len(parts)), [len(f) for f, _ in parts])
    ok = ~np.isnat(ts)
    named = (codes >= 0) & ~np.isin(codes, np.flatnonzero(uniques == ""))  # (the others: rule bad_symbol's)
    unsorted = np.zeros(len(frame), dtype=bool)
    ordered = is_sorted(codes, ts.view("int64"))
    if not ordered:  # (in order, no row has an earlier one of its symbol with a later time in its file)
        by_file = codes.astype(np.int64) * len(parts) + file_of_row
        unsorted[ok & named] = unsorted_rows(ts[ok & named], by_file[ok & named])
    by_sym = np.bincount(codes[unsorted], minlength=len(uniques))
    if not ordered:  # NaT and missing symbols go last (int64 max)
        key_ts = np.where(ok, ts.view("int64"), np.iinfo(np.int64).max)
        key_code = np.where(codes >= 0, codes, len(uniques))
        order = sort_order(key_code, key_ts)
        frame = frame.take(order).reset_index(drop=True)
        codes, ts, file_of_row, named = codes[order], ts[order], file_of_row[order], named[order]
    shared = {} if len(files) < 2 else _shared_symbols(path, files, frame, codes, uniques, named, ts.view("int64"),
                                                       file_of_row)

    extra = sorted({c for _, f in parts for c in f["extra_columns"]})
    non_numeric: dict[str, int] = {}
    for _, f in parts:
        for c, n in f["non_numeric"].items():
            non_numeric[c] = non_numeric.get(c, 0) + n
    frame.attrs = {
        "source": str(path),
        "n_files": len(parts),
        "skipped_files": [p.name for p in skipped],
        "extra_columns": extra,
        "timestamp_format": sorted({f["timestamp_format"] for _, f in parts}),
        "timestamp_notes": [(f"{p.name}: " if len(parts) > 1 else "") + f["timestamp_note"]
                            for p, (_, f) in zip(files, parts) if f["timestamp_note"]],
        "decimal_comma": [p.name for p, (_, f) in zip(files, parts) if f["decimal_comma"]],
        "bad_timestamps": int(sum(f["bad_timestamps"] for _, f in parts)),
        "timezone": {"zone": data_timezone, **{k: int(sum(f["zone"][k] for _, f in parts))
                                               for k in ("naive", "nonexistent", "ambiguous")},
                     "dates": [p.name for p, (_, f) in zip(files, parts) if f["zone"]["dates"]]},
        "missing_symbols": {p.name: f["missing_symbols"] for p, (_, f) in zip(files, parts) if f["missing_symbols"]},
        "non_numeric": non_numeric,
        "bad_timestamps_by_file": {p.name: f["bad_timestamps"] for p, (_, f) in zip(files, parts)
                                   if f["bad_timestamps"]},
        "non_numeric_by_file": {p.name: f["non_numeric"] for p, (_, f) in zip(files, parts) if f["non_numeric"]},
        "unsorted_rows": int(unsorted.sum()),
        "unsorted_by_symbol": {str(uniques[i]): int(n) for i, n in enumerate(by_sym) if n},
        "shared_symbols": shared,
    }
    return frame


def _shared_symbols(folder: Path, files: list[Path], frame: pd.DataFrame, codes: np.ndarray, uniques: np.ndarray,
                    named: np.ndarray, ts: np.ndarray, file_of_row: np.ndarray) -> dict[str, list[str]]:
    """The symbols that more than one file of a folder holds (years in files of their own, two vendors' exports),
    with their files: their rows are one series. Where two files give one symbol's timestamp different values,
    nothing tells which is right (keeping the last file's, as a duplicate in one file is, chose silently):
    refused, naming both files, the rows they disagree on and an example. Rows sorted by (code, ts), stably: the
    rows of one symbol and time are neighbours, in file order; `named`: the rows with a symbol."""
    run = np.r_[True, (codes[1:] != codes[:-1]) | (file_of_row[1:] != file_of_row[:-1])] & named
    pairs = np.unique(codes[run].astype(np.int64) * len(files) + file_of_row[run])
    owner, count = np.unique(pairs // len(files), return_counts=True)
    if not (count > 1).any():
        return {}
    same = (codes[1:] == codes[:-1]) & (ts[1:] == ts[:-1]) & (ts[1:] != np.iinfo(np.int64).min) & named[1:]
    last = np.flatnonzero(~np.r_[same & (file_of_row[1:] == file_of_row[:-1]), False])  # each file's last row of
    #   a symbol and time: the one the rule duplicate keeps of it
    a = last[:-1][same[last[:-1]]]  # a file's last row of a symbol and time that another file holds too,
    b = last[1:][same[last[:-1]]]  # and the next file's
    values = {c: frame[c].to_numpy() for c in NUM_COLS}
    differ = {c: (v[a] != v[b]) & ~(np.isnan(v[a]) & np.isnan(v[b])) for c, v in values.items()}
    bad = np.logical_or.reduce(list(differ.values()))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        one, other, code = file_of_row[a], file_of_row[b], codes[a]
        n = int((bad & (one == one[i]) & (other == other[i]) & (code == code[i])).sum())
        col = next(c for c in NUM_COLS if differ[c][i])
        v = values[col]
        raise DataError(f"{folder}: files '{files[one[i]].name}' and '{files[other[i]].name}' both hold symbol "
                        f"'{uniques[code[i]]}' and disagree on {n} of its timestamps (e.g. "
                        f"{pd.Timestamp(int(ts[a[i]]), tz='UTC')}: {col} {v[a[i]]:g} vs {v[b[i]]:g}): keep one "
                        f"file's rows for those times, or give the two series different symbols")
    return {str(uniques[c]): [files[f].name for f in pairs[pairs // len(files) == c] % len(files)]
            for c in owner[count > 1]}


def is_sorted(codes: np.ndarray, ts: np.ndarray) -> bool:
    """Sorted by (code, ts) with NaT (min int64) never inside a symbol's run."""
    if len(codes) < 2:
        return True
    if (codes[1:] < codes[:-1]).any():
        return False
    return not ((ts[1:] < ts[:-1]) & (codes[1:] == codes[:-1])).any()


def sort_order(codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Stable order by (code, ts): ties keep their input order, so "keep the last" means last in the file."""
    if codes.max(initial=0) < np.iinfo(np.int16).max:  # two stable passes; the second is a radix sort
        by_time = np.argsort(ts, kind="stable")
        return by_time[np.argsort(codes[by_time].astype(np.int16), kind="stable")]
    return np.lexsort((ts, codes))
