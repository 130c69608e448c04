"""tradelib.data: loading and cleaning of hostile OHLCV files; every file is generated here under tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradelib.data.clean import RULES, clean_ohlcv
from tradelib.data.load import DataError, load_ohlcv
from tradelib.data.quality import QualityReport

ACTIONS = {r.name: r.action for r in RULES}

CANON = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
PRICES = ["open", "high", "low", "close"]
NUMS = PRICES + ["volume"]
UTC = "UTC"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"


# ---------------------------------------------------------------------------------------------------------
# helpers


def make_frame(n: int = 200, symbol: str = "AAA", freq: str = "1h", start: str = "2024-01-01",
               price: float = 100.0, volume: float = 1000.0, seed: int = 0) -> pd.DataFrame:
    """A valid canonical frame: a quiet random walk (0.5% per bar) with consistent OHLC."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=n, freq=freq, tz=UTC).as_unit("ns")
    close = price * np.exp(np.cumsum(rng.normal(0, 0.005, n)))
    open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.001, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.003, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.003, n))
    vol = volume * rng.uniform(0.5, 1.5, n)
    return pd.DataFrame({"timestamp": ts, "symbol": pd.array([symbol] * n, dtype="str"), "open": open_,
                         "high": high, "low": low, "close": close, "volume": vol})


def two_symbols(n: int = 200) -> pd.DataFrame:
    return pd.concat([make_frame(n, "AAA", seed=1), make_frame(n, "BBB", price=20.0, seed=2)],
                     ignore_index=True)


def assert_clean(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> None:
    """Every promise a clean frame makes."""
    assert [c for c in df.columns if c != "restart"] == CANON + list(extra)  # restart: corporate actions masked
    assert "restart" not in df or (df["restart"].dtype == bool and df["restart"].any())
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert pd.api.types.is_string_dtype(df["symbol"].dtype)
    for c in PRICES + ["volume"]:
        assert df[c].dtype == np.float64, c
    known = df[NUMS].notna().all(axis=1)  # a bad print is masked: NaN (clean() checks they are counted)
    x = df.loc[known, PRICES].to_numpy()
    assert np.isfinite(x).all() and (x > 0).all()
    v = df.loc[known, "volume"].to_numpy()
    assert np.isfinite(v).all() and (v >= 0).all()
    whole = df[known]
    hi, lo = whole[["open", "close"]].max(axis=1), whole[["open", "close"]].min(axis=1)
    assert (whole["high"] >= hi).all() and (hi >= lo).all() and (lo >= whole["low"]).all()
    assert df["timestamp"].notna().all() and df["symbol"].notna().all()
    key = df[["symbol", "timestamp"]]
    assert not key.duplicated().any()
    assert key.equals(key.sort_values(["symbol", "timestamp"]))
    assert isinstance(df.index, pd.RangeIndex)


def assert_counts(rep: QualityReport) -> None:
    dropped = sum(c["rows"] for c in rep.counts if c["action"] == "dropped")
    assert rep.rows_in == rep.rows_kept + rep.rows_dropped
    assert rep.rows_dropped == dropped
    assert all(c["rows"] > 0 and c["rule"] in ACTIONS for c in rep.counts)
    assert all(c["action"] == ACTIONS[c["rule"]] for c in rep.counts)


def by_rule(rep: QualityReport) -> dict[str, int]:
    return rep.totals()


def by_rule_symbol(rep: QualityReport) -> dict[tuple[str, str], int]:
    return {(c["rule"], c["symbol"]): c["rows"] for c in rep.counts}


def clean(raw: pd.DataFrame, source: str = "test", **kw) -> tuple[pd.DataFrame, QualityReport]:
    out, rep = clean_ohlcv(raw, source, **kw)
    assert_clean(out, tuple(kw.get("keep", ())))
    assert_counts(rep)
    assert rep.rows_kept == len(out)
    assert out[NUMS].isna().any(axis=1).sum() == by_rule(rep).get("bad_print", 0)  # masked rows, all counted
    json.dumps(rep.to_dict())  # always serialisable
    return out, rep


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def epoch(ts: pd.Series, unit: str) -> pd.Series:
    return (ts - pd.Timestamp(0, tz=UTC)) // pd.Timedelta(1, unit)


# ---------------------------------------------------------------------------------------------------------
# planted problems: each returns the expected rule counts; rows are chosen apart so problems do not interact


def plant_duplicates(df: pd.DataFrame, rows: list[int]) -> tuple[pd.DataFrame, dict]:
    """Append altered copies of `rows` at the end: the copies are the last, so they are kept (the rows they
    repeat differ: conflicting duplicates)."""
    dup = df.loc[rows].copy()
    dup["volume"] = 7.0
    return pd.concat([df, dup], ignore_index=True), {"conflicting_duplicate": len(rows), "unsorted": len(rows)}


def plant_bad_close(df, rows):
    for r, v in zip(rows, [0.0, -1.0, np.nan, np.inf, -np.inf], strict=False):
        df.loc[r, "close"] = v
    return df, {"bad_close": len(rows)}


def plant_bad_ohl(df, rows):
    for r, (col, v) in zip(rows, [("open", np.nan), ("high", -1.0), ("low", 0.0), ("open", np.inf)],
                           strict=False):
        df.loc[r, "open"] = df.loc[r, "close"]  # so that fixing from close needs no widening
        df.loc[r, col] = v
    return df, {"bad_ohl": len(rows)}


def plant_high_below_low(df, rows):
    df.loc[rows, ["high", "low"]] = df.loc[rows, ["low", "high"]].to_numpy()
    return df, {"high_below_low": len(rows)}


def plant_outside_range(df, rows):
    for i, r in enumerate(rows):
        df.loc[r, "open"] = df.loc[r, "high"] * 1.02 if i % 2 else df.loc[r, "low"] * 0.98
    return df, {"ohlc_outside_range": len(rows)}


def plant_bad_volume(df, rows):
    for r, v in zip(rows, [-5.0, np.nan, np.inf, -np.inf], strict=False):
        df.loc[r, "volume"] = v
    return df, {"bad_volume": len(rows)}


def plant_spike(df, rows):
    for r in rows:
        df.loc[r, PRICES] = df.loc[r, PRICES] * 8.0
    return df, {"price_spike": len(rows)}


PLANTS = {
    "duplicate": (plant_duplicates, 4),
    "bad_close": (plant_bad_close, 5),
    "bad_ohl": (plant_bad_ohl, 4),
    "high_below_low": (plant_high_below_low, 3),
    "outside_range": (plant_outside_range, 4),
    "bad_volume": (plant_bad_volume, 4),
    "spike": (plant_spike, 2),
}


def plant(df: pd.DataFrame, names: list[str]) -> tuple[pd.DataFrame, dict]:
    """Apply the named plants to one symbol ('AAA', rows 20..185: a spike needs 10 returns before it to be
    judged), each on its own rows, 5 apart."""
    df = df.copy()
    expected: dict[str, int] = {}
    slots = iter(range(20, 190, 5))
    dup_rows = None
    for name in names:
        fn, k = PLANTS[name]
        rows = [next(slots) for _ in range(k)]
        if name == "duplicate":  # appended at the end: apply after the others
            dup_rows = rows
            continue
        df, exp = fn(df, rows)
        expected.update(exp)
    if dup_rows is not None:
        df, exp = plant_duplicates(df, dup_rows)
        expected.update(exp)
    return df, expected


# ---------------------------------------------------------------------------------------------------------
# cleaning: each problem alone, then combined


def test_clean_valid_frame_is_untouched():
    raw = two_symbols()
    out, rep = clean(raw)
    pd.testing.assert_frame_equal(out, raw)
    assert rep.counts == [] and rep.rows_dropped == 0 and rep.gaps == {}
    assert rep.bar_size_s == {"AAA": 3600.0, "BBB": 3600.0}


@pytest.mark.parametrize("name", list(PLANTS))
def test_clean_single_problem(name):
    raw, expected = plant(two_symbols(), [name])
    out, rep = clean(raw)
    assert by_rule(rep) == expected
    assert {sym for (_, sym) in by_rule_symbol(rep)} == {"AAA"}  # BBB is clean and stays untouched
    pd.testing.assert_frame_equal(out[out.symbol == "BBB"].reset_index(drop=True),
                                  raw[raw.symbol == "BBB"].reset_index(drop=True))


def test_clean_all_problems_combined():
    raw, expected = plant(two_symbols(), list(PLANTS))
    out, rep = clean(raw)
    assert by_rule(rep) == expected
    n_dropped = sum(v for k, v in expected.items() if ACTIONS[k] == "dropped")
    assert rep.rows_dropped == n_dropped == len(raw) - len(out)
    assert "price_spike" in rep.summary() and "duplicate" in rep.summary()


def test_duplicates_keep_the_last_row():
    raw, _ = plant_duplicates(two_symbols(), [20, 21, 22])
    out, rep = clean(raw)
    assert by_rule_symbol(rep) == {("conflicting_duplicate", "AAA"): 3, ("unsorted", "AAA"): 3}
    kept = out[out.timestamp.isin(raw.loc[[20, 21, 22], "timestamp"]) & (out.symbol == "AAA")]
    assert (kept["volume"] == 7.0).all() and len(kept) == 3


def test_conflicting_duplicates_are_counted_apart():
    """Repeats of (symbol, timestamp) were all 'duplicate', whether written twice or two series under one ticker
    (closes 1.0 and 0.01): those that differ from the row kept are counted as conflicting_duplicate."""
    raw = two_symbols()
    same = raw.loc[[10, 11]]  # written twice
    other = raw.loc[[20, 21, 22]].assign(close=raw.loc[[20, 21, 22], "close"] / 100)  # another series
    nan_volume = raw.loc[[30]].assign(volume=np.nan)
    raw.loc[30, "volume"] = np.nan  # the same row with a NaN volume twice: no conflict
    chain = raw.loc[[40, 40]].copy()  # row 40 thrice, then a last row that differs: all three conflict with it
    last = raw.loc[[40]].assign(open=raw.loc[40, "open"] * 1.01)
    out, rep = clean(pd.concat([raw, same, other, nan_volume, chain, last], ignore_index=True))
    assert rep.totals("dropped") == {"conflicting_duplicate": 3 + 3, "duplicate": 2 + 1}
    assert len(out) == len(raw)
    kept = out.set_index(["symbol", "timestamp"])
    assert kept.loc[("AAA", raw.loc[40, "timestamp"]), "open"] == last["open"].iloc[0]


def test_duplicate_keeps_last_usable_row():
    """A later copy with a broken close is dropped as bad_close; the earlier good copy survives."""
    raw = two_symbols()
    dup = raw.loc[[30]].copy()
    dup["close"] = np.nan
    out, rep = clean(pd.concat([raw, dup], ignore_index=True))
    assert by_rule(rep) == {"bad_close": 1, "unsorted": 1}
    assert out.loc[30, "close"] == raw.loc[30, "close"]


def test_bad_rows_are_repaired_as_documented():
    raw = two_symbols()
    raw, _ = plant_bad_ohl(raw, [20, 30, 40])
    raw, _ = plant_bad_volume(raw, [50, 60])
    raw, _ = plant_high_below_low(raw, [70])
    raw.loc[80, "open"] = raw.loc[80, "high"] * 1.5
    raw.loc[90, "volume"] = 0.0
    out, rep = clean(raw)
    assert out.loc[20, "open"] == raw.loc[20, "close"]
    assert out.loc[30, "high"] == raw.loc[30, "close"]
    assert out.loc[40, "low"] == raw.loc[40, "close"]
    assert out.loc[50, "volume"] == 0.0 and out.loc[60, "volume"] == 0.0
    assert out.loc[70, "high"] == raw.loc[70, "low"] and out.loc[70, "low"] == raw.loc[70, "high"]
    assert out.loc[80, "high"] == raw.loc[80, "open"] and out.loc[80, "low"] == raw.loc[80, "low"]
    assert out.loc[90, "volume"] == 0.0  # zero volume is legitimate: kept, not counted
    assert by_rule(rep) == {"bad_ohl": 3, "bad_volume": 2, "high_below_low": 1, "ohlc_outside_range": 1}


def test_micro_priced_token_is_kept_unchanged():
    micro = make_frame(300, "MICRO", price=1e-8, volume=1e15, seed=3)
    raw = pd.concat([two_symbols(), micro], ignore_index=True)
    out, rep = clean(raw)
    assert rep.counts == []
    pd.testing.assert_frame_equal(out[out.symbol == "MICRO"].reset_index(drop=True), micro)
    assert rep.ranges_after["volume"]["max"] == pytest.approx(micro.volume.max())


def test_no_magnitude_is_absurd_in_itself():
    """Any finite positive size is a possible market: a whole symbol at 1e13 with 1e22 volumes, or at 1e-20 with
    1e-6, is kept unchanged. A single volume 22 powers of ten above its own symbol's level is no market's: a bad
    print, masked (the row stays)."""
    huge = make_frame(300, "HUGE", price=1e13, volume=1e22, seed=4)
    tiny = make_frame(300, "TINY", price=1e-20, volume=1e-6, seed=5)
    raw = pd.concat([two_symbols(), huge, tiny], ignore_index=True)
    raw.loc[10, "volume"] = 1e25
    out, rep = clean(raw)
    assert rep.counts == [{"rule": "bad_print", "symbol": "AAA", "action": "masked", "rows": 1}]
    assert len(out) == len(raw) and np.isnan(out.loc[10, "volume"])
    pd.testing.assert_frame_equal(out.drop(index=10), raw.drop(index=10))
    assert rep.ranges_after["close"]["max"] == huge.close.max()


def test_price_spike_is_flagged_and_prices_are_kept():
    """Confirming a spike needs the next bar, so cleaning may not rewrite the close at t (the features at t
    would use the future): the rule flags it and the prices stay what the feed printed."""
    raw, _ = plant_spike(two_symbols(), [100])
    out, rep = clean(raw)
    assert by_rule_symbol(rep) == {("price_spike", "AAA"): 1}
    assert ACTIONS["price_spike"] == "kept"
    pd.testing.assert_frame_equal(out, raw)


def test_spike_threshold_comes_from_trailing_returns_only():
    """A spike followed by a wild stretch: a full-history MAD (the stretch included) would set the bar far
    above the spike; the trailing one, from returns before it, still sees it. Nothing after t+1 counts."""
    raw, _ = plant_spike(two_symbols(), [100])
    wild = raw.copy()
    rng = np.random.default_rng(5)
    wild.loc[102:199, PRICES] = wild.loc[102:199, PRICES].mul(np.exp(np.cumsum(rng.normal(0, 0.4, 98))), axis=0)
    from tradelib.data.detect import spike_rows

    for frame in (raw, wild):
        aaa = frame[frame.symbol == "AAA"]
        flags = spike_rows(aaa["close"].to_numpy(), np.zeros(len(aaa), dtype=np.int64),
                           np.r_[True, np.zeros(len(aaa) - 1, dtype=bool)], 12.0)
        assert flags[100] and flags[:100].sum() == 0


def test_level_shift_and_small_moves_are_not_spikes():
    raw = two_symbols()
    raw.loc[100:199, PRICES] /= 4.0  # a permanent jump (a 4:1 split) does not revert
    raw.loc[50, PRICES] *= 1.03  # a 3% blip is below the 5% floor
    _, rep = clean(raw)
    assert "price_spike" not in by_rule(rep)
    _, rep = clean(raw, spike_sigmas=float("inf"))
    assert by_rule(rep) == {"corporate_action": 1}  # the jump that stays: a split-like action, not a spike


def test_big_opposite_moves_that_do_not_cancel_are_not_spikes():
    """A volatile stretch: -20% then +12% is two real moves, not a bad print that comes back."""
    raw = two_symbols()
    raw.loc[100:, PRICES] *= 0.8
    raw.loc[101:199, PRICES] *= 1.12
    _, rep = clean(raw)
    assert "price_spike" not in by_rule(rep)


def test_spike_sigmas_controls_detection():
    raw, _ = plant_spike(two_symbols(), [100])
    _, rep = clean(raw, spike_sigmas=1e6)  # absurdly strict: nothing is a spike
    assert "price_spike" not in by_rule(rep)


def test_long_gap_counted_and_kept():
    raw = two_symbols()
    raw = raw.drop(index=range(60, 160)).reset_index(drop=True)  # 100 missing 1h bars in AAA
    raw = raw.drop(index=range(20, 30)).reset_index(drop=True)  # 10 missing bars: not long
    out, rep = clean(raw, max_gap_bars=50)
    assert rep.gaps == {"AAA": 1}
    assert by_rule_symbol(rep) == {("long_gap", "AAA"): 1}
    assert rep.rows_dropped == 0 and len(out) == len(raw)
    _, rep = clean(raw, max_gap_bars=5)
    assert rep.gaps == {"AAA": 2}


def test_too_short_symbol_dropped():
    raw = pd.concat([two_symbols(), make_frame(5, "TINY")], ignore_index=True)
    out, rep = clean(raw, min_rows=20)
    assert by_rule_symbol(rep) == {("too_short", "TINY"): 5}
    assert set(out.symbol) == {"AAA", "BBB"} and "TINY" not in rep.bar_size_s
    out, rep = clean(raw)  # min_rows=0: kept
    assert "TINY" in set(out.symbol)


def test_bad_timestamp_and_bad_symbol_dropped():
    raw = two_symbols()
    raw["timestamp"] = raw["timestamp"].astype("datetime64[ns, UTC]")
    raw.loc[[5, 6], "timestamp"] = pd.NaT
    raw.loc[7, "symbol"] = np.nan
    raw.loc[8, "symbol"] = ""
    _, rep = clean(raw)
    assert by_rule_symbol(rep) == {("bad_timestamp", "AAA"): 2, ("bad_symbol", ""): 2}


@pytest.mark.parametrize("zone", [None, "UTC", "America/New_York"])
def test_a_frame_of_pandas_3_timestamps_out_of_the_ns_range_is_counted_not_a_crash(zone):
    """pandas 3 reads '9999-12-31' (a placeholder) in us: clean_ohlcv counts it as bad_timestamp, as load_ohlcv's
    NaT is (the conversion to ns raised OutOfBoundsDatetime)."""
    raw = two_symbols()
    stamps = raw["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy(dtype=object)
    stamps[[3, 4]] = ["9999-12-31 00:00:00", "1500-01-01 00:00:00"]
    raw["timestamp"] = pd.to_datetime(pd.Series(stamps)).dt.as_unit("us")
    if zone:
        raw["timestamp"] = raw["timestamp"].dt.tz_localize(zone)
    out, rep = clean(raw)
    assert by_rule_symbol(rep) == {("bad_timestamp", "AAA"): 2} and len(out) == len(raw) - 2


def test_unsorted_frame_is_reordered_and_counted():
    raw = two_symbols()
    moved = raw.loc[[10, 20, 30]]
    raw = pd.concat([raw.drop(index=[10, 20, 30]), moved], ignore_index=True)  # 3 rows arrive late
    raw = pd.concat([raw[raw.symbol == "BBB"], raw[raw.symbol == "AAA"]], ignore_index=True)  # not unsorted
    out, rep = clean(raw)
    assert by_rule_symbol(rep) == {("unsorted", "AAA"): 3}
    pd.testing.assert_frame_equal(out, two_symbols())


def test_clean_accepts_other_dtypes_of_a_frame():
    """Naive or microsecond timestamps and categorical or integer symbols still give the canonical frame."""
    base = pd.concat([make_frame(50, "10", seed=1), make_frame(50, "9", seed=2)], ignore_index=True)
    base = base.sort_values(["symbol", "timestamp"], ignore_index=True)  # "10" < "9" as strings
    naive = base.assign(timestamp=base.timestamp.dt.tz_localize(None).astype("datetime64[us]"))
    out, _ = clean(naive)
    pd.testing.assert_frame_equal(out, base)
    cat = base.assign(symbol=pd.Categorical(base.symbol, categories=["9", "10"]))
    out, _ = clean(cat.iloc[::-1].reset_index(drop=True))
    pd.testing.assert_frame_equal(out, base)
    ints = base.assign(symbol=base.symbol.astype(int), timestamp=base.timestamp.dt.tz_convert("Asia/Tokyo"))
    out, _ = clean(ints)
    pd.testing.assert_frame_equal(out, base)


def test_everything_dropped_gives_empty_clean_frame():
    raw = two_symbols(20)
    raw["close"] = np.nan
    out, rep = clean(raw)
    assert len(out) == 0 and rep.rows_dropped == 40 and by_rule(rep) == {"bad_close": 40}


def test_keep_columns_are_carried_row_aligned():
    raw = two_symbols()
    raw["oracle"] = np.arange(len(raw), dtype=float)
    raw, _ = plant_bad_close(raw, [10, 11])
    raw = raw.iloc[::-1].reset_index(drop=True)
    out, rep = clean(raw, keep=("oracle",))
    expected = two_symbols().assign(oracle=np.arange(400.0)).drop(index=[10, 11]).reset_index(drop=True)
    pd.testing.assert_frame_equal(out, expected)
    out, rep = clean(raw)  # not kept: named as an extra column
    assert "oracle" not in out.columns and "oracle" in rep.extra_columns


def test_clean_never_mutates_raw():
    raw, _ = plant(two_symbols(), list(PLANTS))
    raw.attrs = {"source": "x", "unsorted_by_symbol": {"AAA": 2}}
    before = raw.copy(deep=True)
    attrs = json.dumps(raw.attrs)
    clean_ohlcv(raw)
    pd.testing.assert_frame_equal(raw, before)
    assert json.dumps(raw.attrs) == attrs


def test_clean_rejects_non_canonical_frame():
    raw = two_symbols().drop(columns="volume")
    with pytest.raises(DataError, match=r"^src: frame is missing column\(s\) 'volume'"):
        clean_ohlcv(raw, "src")
    with pytest.raises(DataError, match="'oracle'"):
        clean_ohlcv(two_symbols(), "src", keep=("oracle",))
    with pytest.raises(DataError, match="not datetime"):
        clean_ohlcv(two_symbols().assign(timestamp="2024-01-01"), "src")


def test_report_methods():
    raw, expected = plant(two_symbols(), ["bad_close", "bad_volume"])
    _, rep = clean(raw)
    assert all(list(c) == ["rule", "symbol", "action", "rows"] for c in rep.counts)
    assert {c["rule"]: c["rows"] for c in rep.counts} == rep.totals() == expected
    assert rep.totals("dropped") == {"bad_close": 5} and rep.totals("changed") == {"bad_volume": 4}
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["rows_in"] == 400 and d["rows_dropped"] == 5 and d["ranges_before"]["close"]["nan"] == 1
    assert d["ranges_before"]["close"]["inf"] == 2 and d["ranges_after"]["close"]["inf"] == 0
    assert d["ranges_before"]["volume"]["negative"] == 2 and d["ranges_after"]["volume"]["zero"] == 4
    text = rep.summary()
    assert "400 rows in, 395 kept, 5 dropped" in text and "bad_close 5" in text and "bad_volume 4" in text
    with pytest.raises(AssertionError):
        QualityReport("x", rows_in=10, rows_kept=9, rows_dropped=1, counts=[])


# ---------------------------------------------------------------------------------------------------------
# bad prints: judged against the symbol's own trailing level, in powers of ten, from what is known at t


def test_bad_prints_are_masked_and_counted_per_symbol():
    raw = two_symbols()
    raw.loc[100, "close"] = 1e300  # AAA near 100
    raw.loc[120, "high"] = 1e13
    raw.loc[140, "volume"] = 1e300
    raw.loc[300, "low"] = 1e-9  # BBB near 20
    out, rep = clean(raw)
    assert by_rule_symbol(rep) == {("bad_print", "AAA"): 3, ("bad_print", "BBB"): 1}
    assert all(np.isnan(out.loc[r, c]) for r, c in ((100, "close"), (120, "high"), (140, "volume"), (300, "low")))
    assert out[NUMS].isna().sum().sum() == 4 and rep.ranges_after["close"]["nan"] == 1
    assert "masked: bad_print 4" in rep.summary()
    _, rep = clean(raw, bad_print_decades=float("inf"), bad_volume_decades=float("inf"))
    assert "bad_print" not in by_rule(rep)


def test_bad_print_is_causal_and_scale_free():
    """The verdict at t uses rows before t only: the rows after a print change nothing about it; and a symbol
    at any scale (a 1e-8 token trading 1e15 units) is judged alike."""
    raw = make_frame(400, "AAA", seed=3)
    raw.loc[200, "close"] = raw.loc[200, "close"] * 1e4
    micro = raw.assign(symbol="MICRO", **{c: raw[c] * 1e-10 for c in PRICES}, volume=raw.volume * 1e12)
    out, rep = clean(pd.concat([raw, micro], ignore_index=True))
    assert by_rule_symbol(rep) == {("bad_print", "AAA"): 1, ("bad_print", "MICRO"): 1}
    cut, _ = clean(raw.iloc[:201])  # the history up to the print alone
    assert np.isnan(cut.loc[200, "close"])
    wild = raw.copy()
    wild.loc[201:, PRICES] *= 50.0  # whatever comes after
    assert np.isnan(clean(wild)[0].loc[200, "close"])


def test_micro_token_with_huge_volumes_keeps_every_row_and_value():
    micro = make_frame(2000, "MICRO", price=1e-8, volume=1e15, seed=8)
    out, rep = clean(micro)
    assert rep.counts == [] and len(out) == 2000
    pd.testing.assert_frame_equal(out, micro)


# ---------------------------------------------------------------------------------------------------------
# corporate actions: real daily prices (tests/data/real) with splits planted


REAL = Path(__file__).resolve().parent / "data" / "real"


@pytest.fixture(scope="module")
def real_raw() -> pd.DataFrame:
    return load_ohlcv(REAL, date_format="", data_timezone="UTC")


def bars_that_change(first: str, n_first: int, then: str, n_then: int, symbol: str = "SWITCH",
                     start: str = "2024-01-01") -> pd.DataFrame:
    """A symbol's bars of one size (`first`, n_first rows), then of another (`then`, n_then rows)."""
    frame = make_frame(n_first + n_then, symbol, first, start, seed=3)
    ts = frame["timestamp"].to_numpy().copy()
    ts[n_first:] = ts[n_first - 1] + pd.Timedelta(then).to_timedelta64() * np.arange(1, n_then + 1)
    return frame.assign(timestamp=pd.DatetimeIndex(ts, tz=UTC))


def test_bars_that_change_size_are_named_with_the_time_and_restart_the_series(real_raw):
    """1-minute bars (4,000) that become 5-minute ones (3,000), beside a symbol of 1-minute bars: counted in the
    symbol's 1-minute bars, every 5-minute step spans missing bars, so all 3,000 of its targets were masked and
    only 01's count of masked targets said anything. The change is counted, named with its time and its two sizes
    in the summary, and the series restarts there (no window mixes the sizes). 5-minute bars that become 1-minute
    ones, and daily bars that become weekly beside a daily symbol, the same; a holiday, a weekend, a night or a
    hole is no change."""
    from tradelib.config import Config
    from tradelib.data import dataset

    raw = pd.concat([bars_that_change("1min", 4000, "5min", 3000), make_frame(19000, "OTHER", "1min")],
                    ignore_index=True)
    at = raw.loc[4000, "timestamp"]
    out, rep = clean(raw)
    assert by_rule_symbol(rep) == {("bar_change", "SWITCH"): 1}
    assert rep.bar_changes == [{"symbol": "SWITCH", "at": str(at), "from_s": 60.0, "to_s": 300.0, "rows": 3000}]
    line = next(x for x in rep.summary().splitlines() if "bar size changes" in x)
    assert "SWITCH" in line and str(at) in line and "1 min bars become 5 min" in line and "masked" in line
    assert out.loc[out["restart"], "timestamp"].tolist() == [at]
    fs, built = dataset.build(Config(window=16), raw)
    row = int(np.flatnonzero((fs.timestamp == at.value) & (fs.symbol_id == fs.symbols.index("SWITCH")))[0])
    assert fs.segment[row] == fs.segment[row - 1] + 1 and built.bar_changes == rep.bar_changes

    back = bars_that_change("5min", 3000, "1min", 4000)  # its bar size is 1 minute: the change is where it begins
    _, rep = clean(back)
    assert rep.bar_changes == [{"symbol": "SWITCH", "at": str(back.loc[3000, "timestamp"]), "from_s": 300.0,
                                "to_s": 60.0, "rows": 4000}]
    assert "masked" not in rep.summary()  # a finer stretch: each of its steps is one bar

    days = pd.bdate_range("2020-01-01", "2022-12-30", tz=UTC)
    weekly = days.append(pd.date_range("2023-01-06", "2023-12-29", freq="W-FRI", tz=UTC))
    daily = days.append(pd.bdate_range("2023-01-02", "2023-12-29", tz=UTC))
    frames = [make_frame(len(t), s, "1D").assign(timestamp=t) for s, t in (("WEEKLY", weekly), ("DAILY", daily))]
    _, rep = clean(pd.concat(frames, ignore_index=True))
    changes = [(c["symbol"], c["at"], c["to_s"] / 86_400) for c in rep.bar_changes]
    assert changes == [("WEEKLY", str(weekly[len(days)]), 7)]
    for quiet in (real_raw, two_symbols()):  # daily bars over 31 years of holidays; hourly bars
        assert "bar_change" not in clean(quiet)[1].totals()


def plant_splits(raw: pd.DataFrame, spin_off: bool = False) -> tuple[pd.DataFrame, dict[str, pd.Timestamp]]:
    """A 2-for-1 split of MSFT in 2005 and a 1-for-3 reverse split of SP500 in 2010: every price from that day
    on divided by 2 (x3), every volume multiplied by 2 (/3), as an unadjusted feed prints them. `spin_off`: also
    NASDAQ's prices x 0.6 from 2012 on (no split's ratio: found by its size in trailing sigmas, with split_sigmas)."""
    out, when = raw.copy(), {}
    plants = [("MSFT", "2005-06-01", 0.5), ("SP500", "2010-03-01", 3.0)] + [("NASDAQ", "2012-06-01", 0.6)] * spin_off
    for symbol, day, ratio in plants:
        rows = (out.symbol == symbol) & (out.timestamp >= pd.Timestamp(day, tz=UTC))
        out.loc[rows, PRICES] *= ratio
        out.loc[rows, "volume"] /= ratio
        when[symbol] = out.loc[rows, "timestamp"].min()
    return out, when


def test_real_prices_have_no_corporate_action_found(real_raw):
    """Split-adjusted MSFT (1986-2017, crashes of 1987, 2000 and 2008 included) and two indices: nothing."""
    _, rep = clean(real_raw)
    assert "corporate_action" not in by_rule(rep) and "bad_print" not in by_rule(rep)


@pytest.mark.parametrize("mode", ["flag", "mask", "adjust"])
def test_planted_splits_are_found_counted_and_handled(real_raw, mode):
    raw, when = plant_splits(real_raw, spin_off=True)
    out, rep = clean_ohlcv(raw, "real", corporate_actions=mode, split_sigmas=20.0)  # the spin-off's test asked for
    assert_clean(out)
    assert [c for c in rep.counts if c["rule"] == "corporate_action" and c["action"] == "kept"] == [
        {"rule": "corporate_action", "symbol": s, "action": "kept", "rows": 1} for s in ("MSFT", "NASDAQ", "SP500")]
    changed = {c["symbol"]: c["rows"] for c in rep.counts
               if c["rule"] == "corporate_action" and c["action"] == "changed"}
    if mode == "adjust":  # every row it scaled counted, as a diff of the frames counts them: those before each jump
        got = out.set_index(["symbol", "timestamp"])[PRICES + ["volume"]]
        rows_before = raw.set_index(["symbol", "timestamp"]).loc[got.index, PRICES + ["volume"]]
        differ = (got != rows_before).any(axis=1).groupby(level="symbol").sum()
        assert changed == {s: int(differ[s]) for s in ("MSFT", "NASDAQ", "SP500")}
        assert changed == {s: int(((raw.symbol == s) & (raw.timestamp < t)).sum()) for s, t in when.items()}
    else:
        assert changed == {}
    _, rep = clean_ohlcv(raw, "real", corporate_actions=mode)  # split ratios only (split_sigmas inf)
    assert {c["symbol"] for c in rep.counts if c["rule"] == "corporate_action"} == {"MSFT", "SP500"}
    assert ("restart" in out) == (mode == "mask")
    if mode == "mask":
        assert set(out.loc[out.restart, "timestamp"]) == set(when.values())
    if mode == "adjust":  # back-adjusted: the prices before each split scaled to join the prices after it
        base, _ = clean_ohlcv(real_raw, "real")
        for symbol, ratio in (("MSFT", 0.5), ("SP500", 3.0)):
            got, ref = out[out.symbol == symbol], base[base.symbol == symbol]
            np.testing.assert_allclose(got[PRICES].to_numpy(), ref[PRICES].to_numpy() * ratio, rtol=1e-12)
            np.testing.assert_allclose(got.volume.to_numpy(), ref.volume.to_numpy() / ratio, rtol=1e-12)


def test_a_masked_split_restarts_the_series_so_no_feature_or_target_spans_it(real_raw):
    from tradelib.config import Config
    from tradelib.data import dataset

    raw, when = plant_splits(real_raw)
    cfg = Config(data_path=str(REAL), window=16, horizon=3)
    fs, rep = dataset.build(cfg, raw)
    base, _ = dataset.build(cfg, real_raw)
    assert rep.totals()["corporate_action"] == 2
    assert fs.segment.max() == base.segment.max() + 2
    for symbol, t in when.items():
        at = int(np.flatnonzero((fs.timestamp == t.value) & (fs.symbol_id == fs.symbols.index(symbol)))[0])
        assert fs.segment[at] == fs.segment[at - 1] + 1
        reach = cfg.target_reach  # no target over the split
        assert np.isnan(fs.y[at - reach : at]).all() and np.isfinite(fs.y[at - reach - 1])
        assert (fs.X[at : at + 3] != base.X[at : at + 3]).any()  # the features restart there ...
    assert np.isfinite(fs.X).all() and np.abs(fs.X).max() <= cfg.clip
    flagged, _ = dataset.build(cfg.replace(corporate_actions="flag"), raw)
    assert flagged.segment.max() == base.segment.max()  # ... while flag only counts


def test_prepare_in_shards_on_disk_restarts_where_the_in_memory_build_does(real_raw, tmp_path, outputs):
    """The restart rows travel with a shard's clean rows through prepare's files: the cache is dataset.build's."""
    from tradelib.config import Config
    from tradelib.data import dataset

    raw, _ = plant_splits(real_raw, spin_off=True)
    path = tmp_path / "planted.parquet"
    raw.to_parquet(path)
    cfg = Config(data_path=str(path), window=16, shard_rows=6000, split_sigmas=20.0)
    fs = dataset.prepare(cfg, verbose=False)
    mem, rep = dataset.build(cfg)
    assert rep.totals()["corporate_action"] == 3
    for name in ("X", "y", "segment", "timestamp", "symbol_id"):
        np.testing.assert_array_equal(getattr(fs, name), getattr(mem, name), err_msg=name)


def test_a_move_across_weeks_without_data_is_no_corporate_action(real_raw):
    """MSFT without 100 sessions of 2005, its price 50% higher after them: over those 21 weeks a move of 50% is
    no corporate action (2 sigmas of the time, 24 of one bar's), so nothing is flagged and adjust leaves the prices
    as they were (it scaled the 4,744 rows before the hole by 1.5). A 2:1 split across the hole is still found."""
    raw = real_raw[real_raw.symbol == "MSFT"].reset_index(drop=True)
    t = raw.timestamp
    hole = (t >= pd.Timestamp("2005-01-03", tz=UTC)) & (t < pd.Timestamp("2005-05-26", tz=UTC))
    after = t >= pd.Timestamp("2005-05-26", tz=UTC)
    last, first = raw.close[hole.idxmax() - 1], raw.open[after.idxmax()]
    for ratio, found in ((1.5 * last / first, False), (0.5 * last / first, True)):
        moved = raw.copy()
        moved.loc[after, PRICES] *= ratio
        moved = moved[~hole]
        out, rep = clean_ohlcv(moved, "real", corporate_actions="adjust")
        assert ("corporate_action" in rep.totals()) == found
        if not found:
            np.testing.assert_array_equal(out[PRICES].to_numpy(), moved[PRICES].to_numpy())


def daily_name(symbol: str, sigma: float, factor: float = 1.0, night: float = 0.0, gap: int = 0, seed: int = 0,
               n: int = 300, at: int = 200) -> pd.DataFrame:
    """A stock's weekday bars moving `sigma` a day; from bar `at` on its prices times `factor` (and its volumes
    divided by it, as a split's are), its open there the last close x factor x exp(`night`), the `gap` bars before
    it missing (a halt, a hole in the feed)."""
    rng = np.random.default_rng(seed)
    overnight, intraday = rng.normal(0, sigma / 2, n), rng.normal(0, sigma * np.sqrt(0.75), n)
    overnight[at] = night
    log_open = np.log(50) + np.cumsum(overnight + intraday) - intraday
    log_close = log_open + intraday
    log_open[at:] += np.log(factor)
    log_close[at:] += np.log(factor)
    o, c = np.exp(log_open), np.exp(log_close)
    volume = rng.lognormal(13, 0.3, n)
    volume[at:] /= factor
    frame = pd.DataFrame({"timestamp": pd.bdate_range("2015-01-01", periods=n, tz=UTC), "symbol": symbol,
                          "open": o, "high": np.maximum(o, c) * 1.002, "low": np.minimum(o, c) * 0.998, "close": c,
                          "volume": volume})
    return frame.drop(range(at - gap, at)).reset_index(drop=True)


def test_a_quiet_stocks_real_move_is_no_corporate_action_and_a_split_that_opens_off_its_ratio_is_one():
    """A stock of 0.5% a day that moves 30-55% on news (a takeover, a failed trial), after a week's halt or not,
    was taken for a corporate action at 20 trailing sigmas (it is 50 to 100), its move masked out of every target
    (or with adjust scaled away): it is a real move. A 2:1, 3:1 or 1:10 split opens off its ratio by the night's
    move (a 5%-a-day stock's 2.5% missed the 1% tolerance) and after a week without data by more: found, and
    adjusted by the split's exact ratio."""
    moves = [daily_name("QUIET_UP", 0.005, 1.40, seed=1), daily_name("QUIET_DOWN", 0.005, 0.65, seed=2),
             daily_name("QUIET_HALT", 0.005, 1.55, gap=5, seed=3), daily_name("CALM_DOWN", 0.01, 0.62, gap=5, seed=4)]
    splits = {"WILD_2": (daily_name("WILD_2", 0.05, 1 / 2, night=0.03, seed=5), 1 / 2),
              "WILD_10": (daily_name("WILD_10", 0.05, 10.0, night=-0.03, seed=6), 10.0),
              "QUIET_3": (daily_name("QUIET_3", 0.005, 1 / 3, night=-0.004, gap=5, seed=7), 1 / 3),
              "CALM_2": (daily_name("CALM_2", 0.01, 1 / 2, night=0.012, gap=5, seed=8), 1 / 2),
              "CALM_20": (daily_name("CALM_20", 0.02, 1 / 20, night=0.01, seed=9), 1 / 20),
              "WILD_50": (daily_name("WILD_50", 0.08, 50.0, night=-0.05, seed=10), 50.0)}
    raw = pd.concat(moves + [f for f, _ in splits.values()], ignore_index=True)
    out, rep = clean_ohlcv(raw, "test", corporate_actions="adjust")
    assert_clean(out)
    assert {c["symbol"] for c in rep.counts if c["rule"] == "corporate_action" and c["action"] == "kept"} == set(splits)
    for symbol, (frame, factor) in splits.items():  # the prices before the split scaled by its exact ratio
        before = frame.timestamp < frame.timestamp[frame.close.pct_change().abs().idxmax()]
        got = out[(out.symbol == symbol)].reset_index(drop=True)
        np.testing.assert_allclose(got.loc[before, "close"], frame.loc[before, "close"] * factor, rtol=1e-12)
    _, rep = clean(raw, corporate_actions="flag", split_sigmas=20.0)  # the spin-off test asked for: moves too
    assert {c["symbol"] for c in rep.counts if c["rule"] == "corporate_action"} >= {"QUIET_UP", "QUIET_DOWN"}


def test_adjusted_splits_give_the_features_of_the_unsplit_prices(real_raw):
    from tradelib.config import Config
    from tradelib.data import dataset

    raw, _ = plant_splits(real_raw)
    cfg = Config(data_path=str(REAL), window=16, corporate_actions="adjust")
    fs, _ = dataset.build(cfg, raw)
    base, _ = dataset.build(cfg, real_raw)
    np.testing.assert_array_equal(fs.segment, base.segment)
    np.testing.assert_allclose(fs.X, base.X, rtol=0, atol=1e-4)
    np.testing.assert_allclose(fs.y, base.y, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------
# the rule interface


def test_a_rule_only_judges_and_the_walker_keeps_the_books(monkeypatch):
    """A new rule that repairs a price after ohlc_outside_range ran: the walker copies the column (the raw frame
    is untouched), counts the rows, and checks OHLC again (the repair broke it: the check fails loudly)."""
    from tradelib.data import clean as cl

    def lift_open(w):
        rows = np.zeros(len(w.alive), dtype=bool)
        rows[5] = True
        return cl.Verdict(rows, repair={"open": (rows, w.a["high"][rows] * 2)})

    rules = (*cl.RULES, cl.Rule("lift_open", "changed", "test", lift_open))
    monkeypatch.setattr(cl, "RULES", rules)
    monkeypatch.setitem(cl.RULE_POS, "lift_open", len(rules) - 1)
    raw = make_frame(50)
    before = raw.copy()
    with pytest.raises(AssertionError, match="OHLC out of range"):
        clean_ohlcv(raw)
    pd.testing.assert_frame_equal(raw, before)

    def halve_volume(w):
        rows = np.arange(len(w.alive)) < 3
        return cl.Verdict(rows, repair={"volume": (rows, w.a["volume"][rows] / 2)})

    rules = (*cl.RULES[:-1], cl.Rule("halve_volume", "changed", "test", halve_volume))
    monkeypatch.setattr(cl, "RULES", rules)
    monkeypatch.setitem(cl.RULE_POS, "halve_volume", len(rules) - 1)
    out, rep = clean_ohlcv(raw)
    assert rep.counts == [{"rule": "halve_volume", "symbol": "AAA", "action": "changed", "rows": 3}]
    np.testing.assert_array_equal(out.volume[:3], raw.volume[:3] / 2)
    assert rep.ranges_after["volume"]["min"] == out.volume.min()  # statistics of the repaired column made afresh
    pd.testing.assert_frame_equal(raw, before)


# ---------------------------------------------------------------------------------------------------------
# property: random corruption of a valid frame


HOSTILE = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e13, 1e21, 1e-12, 1e9]
KINDS = ["open", "high", "low", "close", "volume", "dup", "move", "nat", "swap_hl"]


def reference_kept(raw: pd.DataFrame) -> dict:
    """A slow, obvious re-statement of the drop rules (bad_symbol/_timestamp, bad_close, duplicate):
    (symbol, timestamp) -> the position of the row that must survive."""
    last: dict = {}
    for i, r in enumerate(raw.itertuples(index=False)):
        if pd.isna(r.timestamp) or pd.isna(r.symbol) or r.symbol == "":
            continue
        if not (np.isfinite(r.close) and r.close > 0):
            continue
        last[(r.symbol, r.timestamp)] = i  # later rows win
    return last


def is_valid_row(r) -> bool:
    px = np.array([r.open, r.high, r.low, r.close])
    return bool(np.isfinite(px).all() and (px > 0).all() and np.isfinite(r.volume)
                and 0 <= r.volume and r.high >= max(r.open, r.close) and r.low <= min(r.open, r.close))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 79), st.sampled_from(KINDS), st.sampled_from(HOSTILE)),
                max_size=25), st.integers(0, 3))
def test_random_corruption_property(edits, seed):
    raw = pd.concat([make_frame(40, "AAA", seed=seed), make_frame(40, "ZZ", price=1e-6, seed=seed + 1)],
                    ignore_index=True)
    raw["timestamp"] = raw["timestamp"].astype("datetime64[ns, UTC]")
    extra = []
    for row, kind, value in edits:
        if row not in raw.index:  # moved away earlier
            continue
        if kind in ("open", "high", "low", "close", "volume"):
            raw.loc[row, kind] = value
        elif kind == "dup":
            extra.append(raw.loc[[row]].assign(volume=value))
        elif kind == "move":
            extra.append(raw.loc[[row]])
            raw = raw.drop(index=row)
        elif kind == "nat":
            raw.loc[row, "timestamp"] = pd.NaT
        else:
            raw.loc[row, ["high", "low"]] = raw.loc[row, ["low", "high"]].to_numpy()
    raw = pd.concat([raw, *extra], ignore_index=True)
    before = raw.copy(deep=True)

    out, rep = clean(raw)
    pd.testing.assert_frame_equal(raw, before)
    assert rep.rows_in == len(raw)
    ref = reference_kept(raw)
    assert set(zip(out.symbol, out.timestamp, strict=True)) == set(ref)
    got = out.set_index(["symbol", "timestamp"])  # a valid surviving row comes through exactly (spikes too),
    for key, i in ref.items():  # but for a value orders of magnitude from its symbol's level: masked (NaN)
        r = raw.iloc[i]
        if is_valid_row(r):
            values = got.loc[key, NUMS]
            assert values[values.notna()].tolist() == r[NUMS][values.notna()].tolist()  # micro-priced ZZ included


# ---------------------------------------------------------------------------------------------------------
# layouts


def long_file_frame() -> pd.DataFrame:
    df = two_symbols(50)
    return df.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)  # interleaved


def test_long_csv_with_symbol_column(tmp_path):
    path = tmp_path / "long.csv"
    long_file_frame().to_csv(path, index=False)
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    assert list(raw.columns) == CANON and str(raw.timestamp.dtype) == "datetime64[ns, UTC]"
    assert raw.attrs["unsorted_rows"] == 0 and raw.attrs["source"] == str(path)
    pd.testing.assert_frame_equal(raw, two_symbols(50), check_exact=False, rtol=1e-12)
    assert load_ohlcv(path, symbol="BBB", date_format="", data_timezone="UTC").symbol.unique().tolist() == ["BBB"]
    with pytest.raises(DataError, match="no rows for symbol 'CCC'"):
        load_ohlcv(path, symbol="CCC", date_format="", data_timezone="UTC")


def test_csv_gz_single_symbol_from_stem(tmp_path):
    path = tmp_path / "AAPL.csv.gz"
    make_frame(30).drop(columns="symbol").to_csv(path, index=False)
    with gzip.open(path) as f:
        assert f.read(9) == b"timestamp"
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    assert raw.symbol.unique().tolist() == ["AAPL"] and len(raw) == 30
    assert load_ohlcv(path, symbol="MSFT", date_format="", data_timezone="UTC").symbol.unique().tolist() == ["MSFT"]
    make_frame(30).drop(columns="symbol").to_csv(tmp_path / "SPY.tsv.gz", sep="\t", index=False)
    spy = load_ohlcv(tmp_path / "SPY.tsv.gz", date_format="", data_timezone="UTC")
    pd.testing.assert_frame_equal(spy.drop(columns="symbol"), raw.drop(columns="symbol"))


def test_parquet_long_and_with_time_index(tmp_path):
    df = two_symbols(40)
    df.to_parquet(tmp_path / "long.parquet")
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "long.parquet", date_format="", data_timezone="UTC"), df)
    single = make_frame(40).drop(columns="symbol").set_index("timestamp")
    single.to_parquet(tmp_path / "ETH-USD.parquet")
    raw = load_ohlcv(tmp_path / "ETH-USD.parquet", date_format="", data_timezone="UTC")
    assert raw.symbol.unique().tolist() == ["ETH-USD"]
    pd.testing.assert_series_equal(raw.timestamp, make_frame(40).timestamp)


def test_directory_of_per_symbol_files(tmp_path):
    make_frame(30, seed=1).drop(columns="symbol").to_csv(tmp_path / "AAA.csv", index=False)
    make_frame(20, seed=2).drop(columns="symbol").to_csv(tmp_path / "BBB.csv.gz", index=False)
    make_frame(10, seed=3).drop(columns="symbol").to_parquet(tmp_path / "CCC.parquet")
    (tmp_path / "README.txt").write_text("not data")
    (tmp_path / ".hidden.csv").write_text("junk")
    digests = {p.name: sha(p) for p in tmp_path.iterdir()}
    raw = load_ohlcv(tmp_path, date_format="", data_timezone="UTC")
    assert raw.groupby("symbol").size().to_dict() == {"AAA": 30, "BBB": 20, "CCC": 10}
    assert raw.attrs["skipped_files"] == ["README.txt"] and raw.attrs["n_files"] == 3
    out, rep = clean_ohlcv(raw)
    assert rep.source == str(tmp_path) and rep.load_notes["skipped_files"] == ["README.txt"]
    assert_clean(out)
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == digests  # raw files are never modified


def test_symbol_on_a_folder_is_refused_not_ignored(tmp_path):
    """`symbol=` names or selects within one file; on a folder it was ignored without a word (asked for AAA, every
    symbol came back). Refused, naming the folder and the file to read instead."""
    make_frame(30, seed=1).drop(columns="symbol").to_csv(tmp_path / "AAA.csv", index=False)
    make_frame(20, seed=2).drop(columns="symbol").to_csv(tmp_path / "BBB.csv", index=False)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path))}: symbol='AAA' .* a folder"):
        load_ohlcv(tmp_path, symbol="AAA", date_format="", data_timezone="UTC")
    assert (load_ohlcv(tmp_path / "AAA.csv", symbol="AAA", date_format="", data_timezone="UTC").symbol == "AAA").all()


def test_aliases_mixed_case_and_extra_columns(tmp_path):
    df = make_frame(30)
    alias = pd.DataFrame({"Date": df.timestamp, "Ticker": "x", "O": df.open, "H": df.high, "L": df.low,
                          "Last": df.close, "Adj Close": df.close * 0.9, "VOL": df.volume, "note": "n"})
    alias.to_csv(tmp_path / "a.csv", index=False)
    raw = load_ohlcv(tmp_path / "a.csv", date_format="", data_timezone="UTC")
    assert raw.attrs["extra_columns"] == ["Adj Close", "note"]
    np.testing.assert_allclose(raw.close, df.close, rtol=1e-12)
    _, rep = clean_ohlcv(raw)
    assert rep.extra_columns == ["Adj Close", "note"] and "Adj Close" in rep.summary()

    other = pd.DataFrame({"DATETIME": df.timestamp, "Instrument": "y", "OPEN": df.open, "High": df.high,
                          "low": df.low, "Price": df.close, "qty": df.volume})
    other.to_csv(tmp_path / "b.csv", sep=";", index=False)
    raw = load_ohlcv(tmp_path / "b.csv", date_format="", data_timezone="UTC")
    assert raw.symbol.iloc[0] == "y"
    np.testing.assert_allclose(raw.close, df.close, rtol=1e-12)


def test_unnamed_first_column_is_the_time(tmp_path):
    make_frame(20).drop(columns="symbol").set_index("timestamp").rename_axis(None).to_csv(tmp_path / "u.csv")
    raw = load_ohlcv(tmp_path / "u.csv", date_format="", data_timezone="UTC")
    pd.testing.assert_series_equal(raw.timestamp, make_frame(20).timestamp)


def test_date_and_time_columns_are_combined(tmp_path):
    ts = make_frame(20).timestamp
    df = make_frame(20).drop(columns=["symbol", "timestamp"])
    df.insert(0, "time", ts.dt.strftime("%H:%M:%S"))
    df.insert(0, "date", ts.dt.strftime("%Y-%m-%d"))
    df.to_csv(tmp_path / "dt.csv", index=False)
    pd.testing.assert_series_equal(load_ohlcv(tmp_path / "dt.csv", date_format="", data_timezone="UTC").timestamp, ts)


@pytest.mark.parametrize("fmt", ["iso_offset", "iso_z", "naive", "date", "s", "ms", "us", "ns", "yyyymmdd",
                                 "parquet_tz", "parquet_naive"])
def test_timestamp_formats_normalised_to_utc(tmp_path, fmt):
    freq = "1D" if fmt in ("date", "yyyymmdd") else "1h"
    df = make_frame(30, freq=freq).drop(columns="symbol")
    ts = df.timestamp
    col = {
        "iso_offset": ts.dt.tz_convert("Etc/GMT-2").dt.strftime("%Y-%m-%dT%H:%M:%S%z").str.replace(
            r"(\d\d)(\d\d)$", r"\1:\2", regex=True),  # +02:00 local time
        "iso_z": ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "naive": ts.dt.strftime("%Y-%m-%d %H:%M:%S"),
        "date": ts.dt.strftime("%Y-%m-%d"),
        "yyyymmdd": ts.dt.strftime("%Y%m%d").astype(int),
        "parquet_tz": ts.dt.tz_convert("America/New_York"),
        "parquet_naive": ts.dt.tz_localize(None),
    }.get(fmt)
    if col is None:
        col = epoch(ts, fmt)
    df["timestamp"] = col
    if fmt == "iso_offset":
        assert df.timestamp.iloc[0].endswith("+02:00") and df.timestamp.iloc[0][11:13] == "02"
    path = tmp_path / ("t.parquet" if fmt.startswith("parquet") else "t.csv")
    df.to_parquet(path) if fmt.startswith("parquet") else df.to_csv(path, index=False)
    raw = load_ohlcv(path, date_format="", data_timezone="UTC")
    assert str(raw.timestamp.dtype) == "datetime64[ns, UTC]"
    pd.testing.assert_series_equal(raw.timestamp, ts)


@pytest.mark.parametrize("freq,seconds", [("1min", 60), ("5min", 300), ("1h", 3600), ("1D", 86400)])
def test_bar_size_detected(freq, seconds):
    df = make_frame(500, freq=freq)
    df = df.drop(index=list(range(100, 180)) + [200, 201, 300]).reset_index(drop=True)  # robust to gaps
    _, rep = clean(df)
    assert rep.bar_size_s == {"AAA": float(seconds)} and rep.gaps == {"AAA": 1}
    _, shuffled = clean(df.sample(frac=1.0, random_state=0))
    assert shuffled.bar_size_s == rep.bar_size_s and shuffled.gaps == rep.gaps


def bar_size_of(ts) -> float | None:
    """The bar size in seconds cleaning finds for one symbol with these timestamps."""
    df = make_frame(len(ts)).assign(timestamp=pd.DatetimeIndex(ts).as_unit("ns"))
    return clean(df)[1].bar_size_s["AAA"]


def test_bar_size_daily_with_weekends_and_irregular():
    days = pd.bdate_range("2024-01-01", periods=300, tz=UTC)  # weekdays only: 1-day and 3-day steps
    assert bar_size_of(days) == 86400.0
    rng = np.random.default_rng(0)
    jitter = pd.Timestamp("2024-01-01", tz=UTC) + pd.to_timedelta(np.cumsum(rng.uniform(50, 70, 500)), "s")
    assert 55.0 < bar_size_of(jitter) < 65.0  # no step dominates: the median step
    assert bar_size_of(days[:1]) is None


# ---------------------------------------------------------------------------------------------------------
# files end to end


def test_hostile_csv_end_to_end(tmp_path):
    """All problems in one shuffled CSV, with inf/NaN text, a few bad timestamps and a micro token."""
    raw, expected = plant(two_symbols(), list(PLANTS))
    raw = pd.concat([raw, make_frame(100, "MICRO", price=1e-8, volume=1e15, seed=9)], ignore_index=True)
    raw["timestamp"] = raw.timestamp.dt.strftime("%Y-%m-%d %H:%M:%S")
    raw.loc[[3, 4], "timestamp"] = ["not a time", ""]
    raw = raw.sample(frac=1.0, random_state=0).reset_index(drop=True)
    path = tmp_path / "hostile.csv"
    raw.to_csv(path, index=False)
    digest = sha(path)

    loaded = load_ohlcv(path, date_format="", data_timezone="UTC")
    assert loaded.attrs["bad_timestamps"] == 2 and loaded.attrs["unsorted_rows"] > 0
    out, rep = clean(loaded, source="")  # the source comes from the frame's attrs
    got = by_rule(rep)
    assert got.pop("unsorted") == loaded.attrs["unsorted_rows"]
    expected.pop("unsorted")
    assert got == {**expected, "bad_timestamp": 2}
    assert rep.rows_in == len(raw) and rep.source == str(path)
    micro = out[out.symbol == "MICRO"]
    assert len(micro) == 100 and micro.close.max() < 1e-7 and micro.volume.min() > 1e14
    assert sha(path) == digest  # the raw file is never modified


def test_missing_symbol_in_long_file_is_dropped(tmp_path):
    df = two_symbols(30).astype({"symbol": object})
    df.loc[[3, 40], "symbol"] = None
    df.loc[41, "symbol"] = " BBB "  # whitespace is not part of a ticker
    df.to_csv(tmp_path / "long.csv", index=False)
    _, rep = clean(load_ohlcv(tmp_path / "long.csv", date_format="", data_timezone="UTC"))
    assert by_rule_symbol(rep) == {("bad_symbol", ""): 2} and rep.rows_kept == 58


def test_other_time_formats_are_guessed(tmp_path):
    df = make_frame(40).drop(columns="symbol")
    ts = df.timestamp
    df["timestamp"] = ts.dt.strftime("%m/%d/%Y %H:%M")
    df.loc[7, "timestamp"] = "garbage"
    df.to_csv(tmp_path / "us.csv", index=False)
    raw = load_ohlcv(tmp_path / "us.csv", date_format="", data_timezone="UTC")
    assert raw.attrs["bad_timestamps"] == 1 and raw.attrs["timestamp_format"] == ["format %m/%d/%Y %H:%M"]
    pd.testing.assert_series_equal(raw.timestamp.drop(index=39), ts.drop(index=7).reset_index(drop=True),
                                   check_index=False)


def test_non_numeric_cells_become_nan_and_are_counted(tmp_path):
    df = make_frame(50).drop(columns="symbol")
    df["close"] = df["close"].astype(object)
    df.loc[5, "close"] = "abc"
    df.to_csv(tmp_path / "X.csv", index=False)
    raw = load_ohlcv(tmp_path / "X.csv", date_format="", data_timezone="UTC")
    assert raw.attrs["non_numeric"] == {"close": 1}
    _, rep = clean(raw)
    assert by_rule(rep) == {"bad_close": 1} and rep.load_notes["non_numeric"] == {"close": 1}



def test_a_folders_bad_timestamps_and_non_numeric_cells_name_their_files(tmp_path):
    """The load notes of a folder counted its bad timestamps and text cells in all: the file that holds them was
    for the researcher to find. They are kept per file, and the summary names the files with their counts."""
    for name in ("AAA", "BBB", "CCC"):
        df = make_frame(50).drop(columns="symbol").astype({"timestamp": str, "close": object, "volume": object})
        if name == "BBB":
            df.loc[[3, 7], "timestamp"] = ["garbage", "nope"]
            df.loc[5, "close"] = "abc"
        if name == "CCC":
            df.loc[[9, 11], "volume"] = "-"
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    raw = load_ohlcv(tmp_path, date_format="", data_timezone="UTC")
    assert raw.attrs["bad_timestamps"] == 2 and raw.attrs["bad_timestamps_by_file"] == {"BBB.csv": 2}
    assert raw.attrs["non_numeric"] == {"close": 1, "volume": 2}
    assert raw.attrs["non_numeric_by_file"] == {"BBB.csv": {"close": 1}, "CCC.csv": {"volume": 2}}
    lines = clean(raw)[1].summary().splitlines()
    assert "  unparseable timestamps (bad_timestamp): 2 in 1 file: BBB.csv 2" in lines
    assert ("  cells not numbers (read as missing): 3 in 2 files: CCC.csv 2 (volume 2), BBB.csv 1 (close 1)"
            in lines)


def test_true_and_false_are_not_numbers(tmp_path):
    """'true'/'false' in a volume column of 0s and 1s were read as booleans, 1.0 and 0.0, not counted; a Parquet
    boolean column too: they are cells that are not numbers, counted (or, most of a column, an error)."""
    df = make_frame(50).drop(columns="symbol").assign(volume=np.arange(50) % 2)
    df["volume"] = df["volume"].astype(object)
    df.loc[[5, 8], "volume"] = ["true", "false"]
    df.to_csv(tmp_path / "X.csv", index=False)
    raw = load_ohlcv(tmp_path / "X.csv", date_format="", data_timezone="UTC")
    assert raw.attrs["non_numeric"] == {"volume": 2} and raw.volume.isna().sum() == 2
    assert raw.volume.drop(index=[5, 8]).tolist() == (np.arange(50) % 2).astype(float)[np.r_[0:5, 6:8, 9:50]].tolist()
    make_frame(10).assign(volume=[True, False] * 5).to_parquet(tmp_path / "b.parquet")
    assert "column 'volume': 10 of 10 values are not numbers (e.g. 'True')" in load_error(tmp_path / "b.parquet")

# ---------------------------------------------------------------------------------------------------------
# errors: one line, naming the file and the problem


def load_error(path: Path) -> str:
    with pytest.raises(DataError) as e:
        load_ohlcv(path, date_format="", data_timezone="UTC")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path) + ": ")
    return msg


def test_error_missing_path(tmp_path):
    assert "path does not exist" in load_error(tmp_path / "nope.csv")
    assert issubclass(DataError, ValueError)


def test_error_empty_and_header_only(tmp_path):
    (tmp_path / "e.csv").write_bytes(b"")
    assert "empty file" in load_error(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("date,open,high,low,close,volume\n")
    assert "no rows" in load_error(tmp_path / "h.csv")
    make_frame(3).iloc[:0].to_parquet(tmp_path / "e.parquet")
    assert "no rows" in load_error(tmp_path / "e.parquet")


@pytest.mark.parametrize("name,content,problem", [
    ("x.txt", b"garbage \x00 garbage", "not a CSV or Parquet file"),
    ("x.json", b'{"open": 1}', "not a CSV or Parquet file (suffix '.json'"),
    ("x.csv", bytes(range(256)) * 20, "cannot parse as CSV"),
    ("x.csv.gz", b"this is not gzip", "cannot parse as CSV"),
    ("x.parquet", b"timestamp,open\n1,2\n", "cannot read as Parquet"),
])
def test_error_not_csv_or_parquet(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    assert problem in load_error(tmp_path / name)


def test_error_trailing_separator_is_named(tmp_path):
    """Rows that end with the separator have one field more than the header: said as the likely cause."""
    df = make_frame(5)
    (tmp_path / "x.csv").write_text(df.to_csv(index=False, lineterminator=",\n").replace(",\n", "\n", 1))
    msg = load_error(tmp_path / "x.csv")
    assert "Expected 7 columns, got 8" in msg and "line 2 (the first of one field more) ends with the separator ','" \
        in msg
    df.to_csv(tmp_path / "y.csv", index=False)
    (tmp_path / "y.csv").write_text((tmp_path / "y.csv").read_text() + "2024-01-01,AAA,1,1,1,1,1,9\n")
    assert "ends with the separator" not in load_error(tmp_path / "y.csv")  # one field more, not at the end


def test_trailing_separator_past_the_first_mib_is_named(tmp_path):
    """A file whose later rows end with the separator (an export appended to one that did not) is named so too,
    with the line, though the rows read for the file's decimal mark (its first MiB) show none."""
    big = make_frame(30_000)
    big.to_csv(tmp_path / "x.csv", index=False)
    assert (tmp_path / "x.csv").stat().st_size > 1 << 20
    with open(tmp_path / "x.csv", "a") as f:
        f.write(big.iloc[:3].to_csv(index=False, header=False, lineterminator=",\n"))
    assert f"line {len(big) + 2} (the first of one field more) ends with the separator ','" in load_error(
        tmp_path / "x.csv")


def test_a_header_ending_with_the_separator_is_no_unnamed_column(tmp_path):
    """Header and rows ending with the separator: the empty column it reads as is said as such, never as a column
    '' (a blank in 'ignored columns' and in the columns a message lists; beside an unnamed first column, a column
    named twice)."""
    df = make_frame(5).drop(columns="symbol")
    (tmp_path / "x.csv").write_text(df.to_csv(index=False, lineterminator=",\n"))
    raw = load_ohlcv(tmp_path / "x.csv", date_format="", data_timezone="UTC")
    assert raw.attrs["extra_columns"] == ["(empty: the rows end with the separator)"]
    assert "ignored columns: (empty: the rows end with the separator)" in clean(raw)[1].summary()
    (tmp_path / "i.csv").write_text(df.rename(columns={"timestamp": ""}).to_csv(index=False, lineterminator=",\n"))
    pd.testing.assert_series_equal(load_ohlcv(tmp_path / "i.csv", date_format="", data_timezone="UTC")["timestamp"],
                                   raw["timestamp"])
    (tmp_path / "m.csv").write_text(df.drop(columns="close").to_csv(index=False, lineterminator=",\n"))
    assert "(found: timestamp, open, high, low, volume)" in load_error(tmp_path / "m.csv")

def test_error_missing_column_lists_found(tmp_path):
    df = make_frame(5).drop(columns=["symbol", "close"]).rename(columns={"timestamp": "date",
                                                                        "volume": "vol"})
    df.to_csv(tmp_path / "x.csv", index=False)
    assert load_error(tmp_path / "x.csv") == (
        f"{tmp_path / 'x.csv'}: missing required column 'close' (found: date, open, high, low, vol)")
    df.drop(columns="vol").to_csv(tmp_path / "y.csv", index=False)
    assert "missing required columns 'close', 'volume'" in load_error(tmp_path / "y.csv")


def test_error_unparseable_timestamps(tmp_path):
    df = make_frame(10).drop(columns="symbol")
    df["timestamp"] = ["soon"] * 8 + ["2024-01-01", "2024-01-02"]
    df.to_csv(tmp_path / "x.csv", index=False)
    msg = load_error(tmp_path / "x.csv")
    assert "column 'timestamp': 8 of 10 timestamps are unparseable (e.g. 'soon')" in msg


def test_error_mostly_non_numeric(tmp_path):
    df = make_frame(10).drop(columns="symbol").assign(volume="lots")
    df.to_csv(tmp_path / "x.csv", index=False)
    assert "column 'volume': 10 of 10 values are not numbers (e.g. 'lots')" in load_error(tmp_path / "x.csv")


def test_error_directory_without_data(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    assert "no CSV or Parquet files" in load_error(tmp_path)


def test_error_in_directory_names_the_file(tmp_path):
    make_frame(10).to_csv(tmp_path / "AAA.csv", index=False)
    (tmp_path / "BBB.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"BBB\.csv: missing required columns"):
        load_ohlcv(tmp_path, date_format="", data_timezone="UTC")


# ---------------------------------------------------------------------------------------------------------
# docs


def test_every_rule_documented_in_the_order_it_runs():
    """docs/data.md's rule table is the RULES table: same rules, same order, same sentence."""
    rows = [line.split("|") for line in DOCS.read_text().splitlines() if line.startswith("| ") and "`" in line]
    documented = [(cells[2].strip().strip("`"), cells[3].strip()) for cells in rows if cells[1].strip().isdigit()]
    assert documented == [(r.name, r.text) for r in RULES]




def test_ingest_compare_reads_each_side_with_its_own_code(tmp_path):
    """tools/ingest_compare.py (docs/perf.md's CSV figure) runs the older commit's loader, not this checkout's."""
    import subprocess
    import sys

    from tradelib.data.synth import generate_market

    from .conftest import older_commit

    old = "9cbeb95"  # the last commit with the flat tradelib/data.py
    root = older_commit(old)
    path = tmp_path / "prices.csv"
    market = generate_market(n_symbols=2, n_bars=300, seed=7).drop(columns="oracle")
    market.to_csv(path, index=False)
    out = subprocess.run([sys.executable, str(root / "tools" / "ingest_compare.py"), str(path), "--old", old,
                          "--rounds", "1"], capture_output=True, text=True, check=True).stdout.splitlines()
    runs = {r["which"]: r for r in map(json.loads, out[:2])}
    assert runs["old"]["module"] == "tradelib.data" and runs["new"]["module"] == "tradelib.data.load"
    assert runs["old"]["rows"] == runs["new"]["rows"] == len(market) and out[2].startswith(f"old {old}:")


def test_a_parquet_file_beyond_the_memory_limit_is_said_to_be_out_of_memory(tmp_path):
    """Under an address-space limit (ulimit -v, a scheduler's) reading a file too large for it said
    "cannot read as Parquet", as if the file were damaged: now out of memory, with the file's size."""
    n = 1_000_000
    t = pd.date_range("2024-01-02", periods=n, freq="min", tz="UTC")
    path = tmp_path / "big.parquet"
    pd.DataFrame({"timestamp": t, "symbol": "AAA", **{c: np.linspace(1, 2, n) for c in
                                                       ("open", "high", "low", "close", "volume")}}).to_parquet(path)
    code = ("import resource, sys\nfrom tradelib.data.load import load_ohlcv\n"
            "vm = next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmSize')) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + 20_000_000, resource.RLIM_INFINITY))\n"
            f"load_ohlcv({str(path)!r}, date_format='', data_timezone='UTC')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tradelib.data.load.DataError: ") and "out of memory reading it (0.0" in last, last


@pytest.mark.parametrize("decades", [400.0, 1e300])
def test_bad_print_decades_past_a_float_find_nothing_like_inf(decades):
    """10**400 is no float: a threshold that far off finds no bad print, as inf does (an OverflowError before)."""
    raw = two_symbols()
    raw.loc[100, "close"] = 1e300
    out, rep = clean(raw, bad_print_decades=decades, bad_volume_decades=decades)
    off, _ = clean(raw, bad_print_decades=float("inf"), bad_volume_decades=float("inf"))
    assert "bad_print" not in by_rule(rep)
    pd.testing.assert_frame_equal(out, off)
