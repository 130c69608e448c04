"""data_timezone: timestamps written without a zone read as another zone's local times (an exchange's, a vendor's),
each checked against pandas' own tz_localize / tz_convert."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tradelib.config import Config, ConfigError
from tradelib.data import cache, dataset
from tradelib.data.clean import clean_ohlcv
from tradelib.data.features import FEATURE_NAMES, feature_makers
from tradelib.data.load import load_ohlcv

NY = "America/New_York"
FMT = "%Y-%m-%d %H:%M:%S"


def bars(instants: pd.DatetimeIndex, seed: int = 0) -> pd.DataFrame:
    """One symbol's bars at these UTC instants."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, len(instants))))
    return pd.DataFrame({"instant": instants, "open": close, "high": close * 1.001, "low": close * 0.999,
                         "close": close, "volume": rng.integers(1, 1000, len(instants)).astype(float)})


def ny_session_bars() -> pd.DataFrame:
    """09:30-16:00 New York 5-minute bars of the weekdays around the 2024-03-10 DST change."""
    days = pd.bdate_range("2024-03-04", "2024-03-15")
    local = pd.DatetimeIndex([d + pd.Timedelta(minutes=570 + 5 * i) for d in days for i in range(78)])
    return bars(local.tz_localize(NY).tz_convert("UTC"))


def write(df: pd.DataFrame, path, zone: str):
    df.assign(timestamp=df["instant"].dt.tz_convert(zone).dt.strftime(FMT)).drop(columns="instant").to_csv(
        path, index=False)
    return path


def test_a_new_york_local_file_read_in_its_zone_is_the_utc_file(tmp_path):
    """Written naive in New York time across a DST change: with data_timezone America/New_York the clean frame is
    the one of the same bars written in UTC (and the one pandas' tz_localize gives); read as UTC, as by default,
    every bar is 4 or 5 hours early."""
    df = ny_session_bars()
    (tmp_path / "utc").mkdir()
    local, utc = write(df, tmp_path / "AAA.csv", NY), write(df, tmp_path / "utc" / "AAA.csv", "UTC")
    got, report = clean_ohlcv(load_ohlcv(local, date_format="", data_timezone=NY))
    want, _ = clean_ohlcv(load_ohlcv(utc, date_format="", data_timezone="UTC"))
    pd.testing.assert_frame_equal(got, want)
    expected = pd.to_datetime(pd.read_csv(local)["timestamp"]).dt.tz_localize(NY).dt.tz_convert("UTC")
    np.testing.assert_array_equal(got["timestamp"].to_numpy(), expected.to_numpy())
    assert f"timestamps: {len(df):,} written without a zone read as {NY} (data_timezone)" in report.summary()
    as_utc = load_ohlcv(local, date_format="", data_timezone="UTC")["timestamp"]
    early = (got["timestamp"] - as_utc).dt.total_seconds() / 3600
    assert set(early) == {4.0, 5.0}


def test_dst_skipped_and_repeated_local_times_are_dropped_and_counted(tmp_path):
    """Hourly bars around the clock, written in New York wall time: 01:00 of 2024-11-03 is written twice (the hour
    the clocks go back), and a planted 02:30 of 2024-03-10 never existed. The three are bad_timestamp rows, counted
    and said; every other row is at its own instant."""
    spring = pd.date_range("2024-03-09 12:00", "2024-03-10 12:00", freq="h", tz="UTC")
    autumn = pd.date_range("2024-11-02 12:00", "2024-11-03 12:00", freq="h", tz="UTC")
    df = bars(spring.append(autumn))
    path = write(df, tmp_path / "AAA.csv", NY)
    text = pd.read_csv(path)
    planted = text.iloc[[0]].assign(timestamp="2024-03-10 02:30:00")
    pd.concat([text.iloc[:1], planted, text.iloc[1:]]).to_csv(path, index=False)

    raw = load_ohlcv(path, date_format="", data_timezone=NY)
    assert raw.attrs["timezone"] == {"zone": NY, "naive": len(df) + 1, "nonexistent": 1, "ambiguous": 2,
                                     "dates": []}
    clean, report = clean_ohlcv(raw)
    assert report.totals("dropped") == {"bad_timestamp": 3}
    assert "local times dropped as bad_timestamp: 1 skipped by the clocks going forward, 2 repeated by the clocks " \
           "going back" in report.summary()
    repeated = df["instant"].dt.tz_convert(NY).dt.strftime(FMT) == "2024-11-03 01:00:00"
    assert repeated.sum() == 2
    np.testing.assert_array_equal(clean["timestamp"].to_numpy(),
                                  df.loc[~repeated, "instant"].astype("datetime64[ns, UTC]").to_numpy())


def test_the_zone_applies_to_naive_times_only(tmp_path):
    """Timestamps with their offset (a zone's winter and summer offsets in one column), epoch numbers and dates
    alone (daily bars: a day, not an instant) read the same whatever data_timezone says; a naive Parquet datetime
    column is local time like naive text."""
    df = ny_session_bars()
    offsets = df.assign(timestamp=df["instant"].dt.tz_convert(NY).map(lambda t: t.isoformat()))
    offsets.drop(columns="instant").to_csv(tmp_path / "off.csv", index=False)
    seconds = (df["instant"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1s")
    df.assign(timestamp=seconds).drop(columns="instant").to_csv(tmp_path / "epoch.csv", index=False)
    days = bars(pd.date_range("2024-03-01", "2024-03-20", freq="B", tz="UTC"))
    days.assign(timestamp=days["instant"].dt.strftime("%Y-%m-%d")).drop(columns="instant").to_csv(
        tmp_path / "daily.csv", index=False)
    for name in ("off.csv", "epoch.csv", "daily.csv"):
        ny = load_ohlcv(tmp_path / name, date_format="", data_timezone=NY)
        utc = load_ohlcv(tmp_path / name, date_format="", data_timezone="UTC")
        pd.testing.assert_series_equal(ny["timestamp"], utc["timestamp"], obj=name)
    assert load_ohlcv(tmp_path / "daily.csv", date_format="", data_timezone=NY).attrs["timezone"]["dates"] == [
        "daily.csv"]
    pd.testing.assert_series_equal(load_ohlcv(tmp_path / "off.csv", date_format="", data_timezone="UTC")["timestamp"],
                                   df["instant"].astype("datetime64[ns, UTC]").rename("timestamp"))
    naive = df.assign(timestamp=df["instant"].dt.tz_convert(NY).dt.tz_localize(None)).drop(columns="instant")
    naive.to_parquet(tmp_path / "p.parquet")
    got = load_ohlcv(tmp_path / "p.parquet", date_format="", data_timezone=NY)["timestamp"]
    pd.testing.assert_series_equal(got, df["instant"].astype("datetime64[ns, UTC]").rename("timestamp"))


def test_a_zone_name_is_checked_and_keys_the_cache(tmp_path):
    with pytest.raises(ConfigError, match="parameter 'data_timezone' is 'America/NewYork'; expected an IANA"):
        Config(data_timezone="America/NewYork")
    path = ny_session_bars().pipe(write, tmp_path / "AAA.csv", NY)
    keys = {cache.cache_key(Config(data_path=str(path), data_timezone=z)) for z in ("UTC", NY, "Europe/Berlin")}
    assert len(keys) == 3


def test_a_market_zone_keys_the_cache_only_when_it_is_not_utc(tmp_path):
    """market_timezone changes the time-of-day features: in the key when the market's clock is not UTC, absent
    (the key made before it) by default."""
    with pytest.raises(ConfigError, match="parameter 'market_timezone' is 'New York'; expected an IANA"):
        Config(market_timezone="New York")
    path = ny_session_bars().pipe(write, tmp_path / "AAA.csv", "UTC")
    for data_path in (str(path), "synthetic"):
        parts = cache.key_parts(Config(data_path=data_path))
        assert "market_timezone" not in parts and "data_timezone" not in parts
        assert cache.key_parts(Config(data_path=data_path, market_timezone="UTC")) == parts
        assert cache.key_parts(Config(data_path=data_path, market_timezone=NY))["market_timezone"] == NY
    keys = {cache.cache_key(Config(data_path=str(path), data_timezone=d, market_timezone=m))
            for d, m in (("UTC", ""), ("UTC", NY), (NY, ""), (NY, "UTC"))}
    assert len(keys) == 4



def test_time_of_day_reads_the_market_clock_across_a_dst_change(tmp_path):
    """New York's 09:30 open was minute 870 of the UTC day before 2024-03-10 and 810 after it on tod_sin/tod_cos:
    now one minute, 570, on both sides, whether the file is written in New York time (data_timezone, the market's
    clock by default) or in UTC (market_timezone). Both builds are the same, and pandas' tz_convert agrees."""
    df = ny_session_bars()
    (tmp_path / "utc").mkdir()
    local, utc = write(df, tmp_path / "AAA.csv", NY), write(df, tmp_path / "utc" / "AAA.csv", "UTC")
    fs, _ = dataset.build(Config(data_path=str(local), data_timezone=NY, window=16))
    wall = pd.to_datetime(fs.timestamp, utc=True).tz_convert(NY)
    opens = wall.strftime("%H:%M") == "09:30"
    assert opens.sum() == 10 and len(set(wall[opens].strftime("%Z"))) == 2  # EST and EDT opens
    tod = fs.X[:, [FEATURE_NAMES.index("tod_sin"), FEATURE_NAMES.index("tod_cos")]]
    assert len(np.unique(tod[opens], axis=0)) == 1
    other, _ = dataset.build(Config(data_path=str(utc), market_timezone=NY, window=16))
    np.testing.assert_array_equal(fs.X, other.X)
    np.testing.assert_array_equal(fs.timestamp, other.timestamp)

    clean, _ = clean_ohlcv(load_ohlcv(utc, date_format="", data_timezone="UTC"))
    makers = feature_makers(clean, np.zeros(len(clean), dtype=np.int32), NY)
    minute = wall.hour * 60 + wall.minute  # (the clean rows are the build's: one symbol, no row masked)
    np.testing.assert_allclose(makers["tod_sin"](), np.sin(2 * np.pi * minute / 1440), atol=1e-12)
    np.testing.assert_allclose(makers["tod_cos"](), np.cos(2 * np.pi * minute / 1440), atol=1e-12)



@pytest.mark.parametrize("data_path", ["synthetic", "tests/data/real"])
def test_by_default_time_of_day_is_the_utc_clock(data_path):
    """The default (data_timezone UTC, market_timezone empty) keeps the UTC minute of the day: the scaled tod
    columns are an affine map of the sine and cosine of each bar's UTC minute, and the build is the one with
    market_timezone UTC."""
    cfg = Config(data_path=data_path, synth_symbols=2, synth_bars=3000)
    fs, _ = dataset.build(cfg)
    np.testing.assert_array_equal(fs.X, dataset.build(cfg.replace(market_timezone="UTC"))[0].X)
    t = pd.to_datetime(fs.timestamp, utc=True)
    angle = 2 * np.pi * np.asarray(t.hour * 60 + t.minute) / 1440
    for name, fn in (("tod_sin", np.sin), ("tod_cos", np.cos)):
        x, want = fs.X[:, FEATURE_NAMES.index(name)].astype(np.float64), fn(angle)
        scale, shift = np.polyfit(want, x, 1) if np.ptp(want) > 0 else (0.0, x[0])
        np.testing.assert_allclose(x, scale * want + shift, atol=1e-5)
