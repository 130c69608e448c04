"""Features are scale-free, causal, finite and bounded; splits never leak."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tradelib.config import Config, ConfigError
from tradelib.data import clean, dataset
from tradelib.data.dataset import features_of
from tradelib.data.features import feature_makers, feature_params
from tradelib.data.segments import segment_ids
from tradelib.data.sessions import long_gap_rows
from tradelib.data.synth import generate_market
from tradelib.train.sources import window_ends

FCFG = Config(window=16, horizon=1)


def clean_market(n_symbols=3, n_bars=800, seed=1, hostile=True):
    raw = generate_market(n_symbols=n_symbols, n_bars=n_bars, seed=seed, hostile=hostile)
    return clean.clean_ohlcv(raw, "synthetic", keep=("oracle",))[0]


def raw_feature_matrix(clean: pd.DataFrame) -> np.ndarray:
    codes = pd.factorize(clean["symbol"])[0]
    ts = pd.DatetimeIndex(clean["timestamp"]).as_unit("ns").asi8
    seg = segment_ids(codes, long_gap_rows(ts, codes, np.full(len(codes), 300 * 10**9), 50))
    return raw_features(clean, seg)


def raw_features(clean: pd.DataFrame, seg: np.ndarray) -> np.ndarray:
    """Every feature before scaling, as one float64 [n, F] matrix."""
    return np.column_stack([make() for make in feature_makers(clean, seg, "UTC").values()])


def test_features_finite_bounded_float32_on_hostile_synthetic():
    fs = features_of(clean_market(), FCFG)
    assert fs.X.dtype == np.float32 and np.isfinite(fs.X).all()
    assert np.abs(fs.X).max() <= FCFG.clip
    assert set(np.unique(fs.split)) <= {-1, 0, 1, 2}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(min_value=100, max_value=700), seed=st.integers(0, 1000))
def test_no_look_ahead(cut, seed):
    """Changing every bar after t changes no feature at or before t."""
    clean = clean_market(n_symbols=1, n_bars=800, seed=3, hostile=False)
    before = raw_feature_matrix(clean)
    rng = np.random.default_rng(seed)
    changed = clean.copy()
    scale = np.exp(rng.normal(0, 0.05, len(changed) - cut))
    for col in ("open", "high", "low", "close"):
        changed.loc[cut:, col] = changed.loc[cut:, col].to_numpy() * scale
    changed.loc[cut:, "volume"] = changed.loc[cut:, "volume"].to_numpy() * rng.uniform(0.1, 10, len(changed) - cut)
    after = raw_feature_matrix(changed)
    np.testing.assert_array_equal(before[:cut], after[:cut])
    assert not np.allclose(before[cut:], after[cut:], equal_nan=True)


@settings(max_examples=10, deadline=None)
@given(price_exp=st.integers(-10, 6), volume_exp=st.integers(-3, 15))
def test_scale_free(price_exp, volume_exp):
    """Multiplying a symbol's prices by 10^a and volumes by 10^b leaves its features unchanged."""
    clean = clean_market(n_symbols=2, n_bars=600, seed=5, hostile=False)
    scaled = clean.copy()
    for col in ("open", "high", "low", "close"):
        scaled[col] = scaled[col] * 10.0**price_exp
    scaled["volume"] = scaled["volume"] * 10.0**volume_exp
    a, b = features_of(clean, FCFG), features_of(scaled, FCFG)
    np.testing.assert_allclose(a.X, b.X, atol=1e-4)
    np.testing.assert_allclose(a.y, b.y, atol=1e-9, equal_nan=True)


def test_micro_token_features_match_a_large_cap():
    """The seed's 1e-8 price / 1e15 volume token: same features as the same path at 100 / 1e6."""
    clean = clean_market(n_symbols=1, n_bars=600, seed=9, hostile=False)
    micro = clean.copy()
    for col in ("open", "high", "low", "close"):
        micro[col] = micro[col] / micro["close"].iloc[0] * 1e-8
    micro["volume"] = micro["volume"] / micro["volume"].median() * 1e15
    big = clean.copy()
    for col in ("open", "high", "low", "close"):
        big[col] = big[col] / big["close"].iloc[0] * 100
    np.testing.assert_allclose(features_of(micro, FCFG).X, features_of(big, FCFG).X, atol=1e-4)


def test_splits_are_chronological_and_purged():
    fcfg = Config(window=16, horizon=3)
    fs = features_of(clean_market(n_bars=1200), fcfg)
    ts = fs.timestamp
    assert ts[fs.split == 0].max() < ts[fs.split == 1].min() < ts[fs.split == 1].max() < ts[fs.split == 2].min()
    bar = 300 * 10**9
    gap = (fcfg.target_reach + fcfg.window) * bar
    assert ts[fs.split == 1].min() - ts[fs.split == 0].max() >= gap
    assert ts[fs.split == 2].min() - ts[fs.split == 1].max() >= gap
    # no training target reaches a validation row: the last training target ends before validation starts
    last_train_target_end = ts[window_ends(fs, 0, fcfg.window)].max() + fcfg.target_reach * bar
    assert last_train_target_end < ts[fs.split == 1].min()


def test_normalisation_is_fitted_on_training_rows_only():
    clean = clean_market(n_bars=1000)
    fs = features_of(clean, FCFG)
    late = clean.copy()
    test_rows = fs.split == 2
    late.loc[test_rows, "volume"] = late.loc[test_rows, "volume"] * 1000  # only test-period rows move
    fs2 = features_of(late, FCFG)
    assert fs.meta["norm"] == fs2.meta["norm"]


def test_unknown_targets_stay_nan_not_zero():
    cfg = Config(window=8, horizon=4)
    fs = features_of(clean_market(n_symbols=2, n_bars=500), cfg)
    for s in np.unique(fs.symbol_id):
        rows = np.flatnonzero(fs.symbol_id == s)
        assert np.isnan(fs.y[rows[-cfg.target_reach:]]).all() and np.isfinite(fs.y[rows[-cfg.target_reach - 1]])
    assert np.isfinite(fs.y[window_ends(fs, 0, 8)]).all()


@pytest.mark.parametrize("delay", [1, 3, 20])
def test_the_target_starts_target_delay_bars_after_t(delay):
    """y at t is the target from t of the row `target_delay` rows later in t's segment (the return a book
    trading that many bars after its signal earns), NaN where that row is in another segment; nothing else
    moves but the purge, which grows by the delay. The predictions' lag-0 target (`target_from_t`) is the
    undelayed one again, so a report shifts it by its own trade delay; with a delay beyond the window, NaN
    where the row that delay before is in another segment (never another symbol's)."""
    clean = clean_market(n_symbols=3, n_bars=900)  # hostile: gaps that cut segments, masked targets
    base = features_of(clean, Config(window=16, horizon=2, target_delay=0))
    late = features_of(clean, Config(window=16, horizon=2, target_delay=delay))
    n = len(base)
    assert base.segment.max() + 1 > 3 and np.isnan(base.y).sum() > 3 * 2  # segments and masks to get right
    at = np.minimum(np.arange(n) + delay, n - 1)
    same = (np.arange(n) + delay < n) & (base.segment[at] == base.segment)
    np.testing.assert_array_equal(late.y, np.where(same, base.y[at], np.nan).astype(np.float32))
    for name in ("X", "fwd_return", "ret_next", "last_return", "timestamp", "segment"):
        np.testing.assert_array_equal(getattr(late, name), getattr(base, name), err_msg=name)
    assert late.meta["splits"]["purge_bars"] == base.meta["splits"]["purge_bars"] + delay
    assert ((late.split == base.split) | ((late.split == -1) & (base.split > 0))).all()
    rows = np.concatenate([window_ends(late, split, 16) for split in (0, 1, 2)])
    back = (rows >= delay) & (base.segment[np.maximum(rows - delay, 0)] == base.segment[rows])
    np.testing.assert_array_equal(late.target_from_t(rows), np.where(back, base.y[rows], np.nan))
    assert back.all() == (delay < 16)  # a window's first row is in t's segment: so is the row delay < window before
    assert late.target_delay == delay and base.target_delay == 0


def test_a_symbol_needs_a_window_and_its_delayed_target():
    """Cleaning keeps a symbol with window + target_delay + horizon + 1 rows and drops one a row shorter."""
    cfg = Config(window=8, horizon=2, target_delay=3)
    need = cfg.window + cfg.target_reach + 1
    raw = generate_market(n_symbols=4, n_bars=600, seed=2, hostile=False)
    first = raw.groupby("symbol").cumcount()
    raw = raw[~((raw["symbol"] == "SYM02") & (first >= need)) & ~((raw["symbol"] == "SYM03") & (first >= need - 1))]
    fs, rep = dataset.build(cfg, raw.reset_index(drop=True))
    assert fs.symbols == ["SYM00", "SYM01", "SYM02"] and rep.totals("dropped") == {"too_short": need - 1}


def test_vol_scaled_target():
    clean = clean_market(n_symbols=2, n_bars=600, hostile=False)
    plain = features_of(clean, Config(window=16, target_delay=0))
    scaled = features_of(clean, Config(window=16, vol_scaled_target=True, target_delay=0))
    rvol = raw_features(clean, plain.segment)[:, plain.feature_names.index("rvol_32")]
    ok = np.isfinite(scaled.y) & (rvol > 0)
    np.testing.assert_allclose(scaled.y[ok], (plain.fwd_return[ok] / rvol[ok]).astype(np.float32), rtol=1e-4)


def test_feature_parameters_are_configs_features_group():
    params = feature_params(Config(window=48, horizon=2))
    assert params["window"] == 48 and params["horizon"] == 2 and "lr" not in params and "data_path" not in params
    assert features_of(clean_market(n_bars=600), Config(window=48, horizon=2)).meta["feature_config"] == params


def test_feature_ranges_before_scaling_are_recorded_and_finite():
    """01 shows each feature's range before and after scaling; before is finite even on hostile data."""
    from tradelib.report.explore import feature_table

    fs = features_of(clean_market(), FCFG)
    raw = fs.meta["raw_ranges"]
    assert list(raw) == fs.feature_names
    assert all(np.isfinite([r["min"], r["max"]]).all() and r["min"] <= r["max"] for r in raw.values())
    assert raw["ret_64"]["unknown"] >= 64  # the first 64 rows of each series have no 64-bar history
    table = feature_table(fs)
    assert {"raw_min", "raw_max", "min", "max", "at_clip"} <= set(table.columns)
    assert (table["max"] <= FCFG.clip).all() and (table["non_finite"] == 0).all()


def test_01s_tables_read_the_quality_report_and_the_features_as_they_are():
    """01's three tables: rows per cleaning rule (the report's totals, the symbols touched, the one touched most),
    each raw column's range and bad-value counts, each feature's range before and after scaling."""
    from tradelib.report import explore, tables

    raw = generate_market(n_symbols=5, n_bars=900, seed=4)
    fs, report = dataset.build(Config(window=16, horizon=1), raw)
    quality = report.to_dict()
    counts = explore.counts_table(quality)
    shown = tables.cleaning_table(counts).set_index(["action", "rule"])
    actions = set(counts["action"])
    assert actions == {"dropped", "changed", "kept"}  # kept: flagged, the row stays
    for action in actions:
        for rule, rows in report.totals(action).items():
            if rows:
                mine = counts[(counts["action"] == action) & (counts["rule"] == rule) & (counts["rows"] > 0)]
                top = mine.sort_values(["rows", "symbol"], ascending=[False, True]).iloc[0]
                assert shown.loc[(action, rule)].tolist() == [f"{rows:,}", str(mine["symbol"].nunique()),
                                                              f"{top['symbol']} ({top['rows']:,})"]
    assert len(shown) == sum(1 for a in actions for n in report.totals(a).values() if n)
    ranges = explore.ranges_table(quality)
    view = tables.ranges_view(ranges)
    assert view.columns.tolist() == ["stage", "column", "min", "max", "NaN", "inf", "zero", "negative"]
    assert view["min"].tolist() == [f"{v:.3g}" for v in ranges["min"]]
    assert view["NaN"].tolist() == [f"{v:,}" for v in ranges["nan"]] and (view["NaN"] != "0").any()
    ft = explore.feature_table(fs)
    train = ft[ft["split"] == "train"]
    features = tables.features_view(train)
    assert features["feature"].tolist() == fs.feature_names
    assert features["scaled"].tolist() == [f"{a:,.3f} to {b:,.3f}" for a, b in zip(train["min"], train["max"])]
    assert features["at the clip"].tolist() == [f"{v:.2%}" for v in train["at_clip"]]


def test_01s_cleaning_table_on_clean_data_says_nothing_was_cleaned():
    """The real daily bars drop nothing: the table was a header with no row under it."""
    from tradelib.report import explore, tables

    raw = generate_market(n_symbols=2, n_bars=300, seed=3, hostile=False)
    frame, report = clean.clean_ohlcv(raw, "clean", keep=("oracle",))
    counts = explore.counts_table(report.to_dict())
    assert (counts["rows"] == 0).all()  # rules that found nothing, if listed at all
    shown = tables.cleaning_table(counts)
    assert shown.to_dict("records") == [{"action": "–", "rule": "no row dropped, changed, masked or flagged",
                                         "rows": "0", "symbols": "0", "most in": "–"}]


def test_the_time_of_day_features_are_found_constant_on_daily_bars_only():
    """tod_sin and tod_cos of daily bars: every bar at midnight UTC, one value, scaled to 0 throughout (the report
    and 01 say so); on 5-minute bars every feature varies. Read in blocks smaller than the rows, as a cache is."""
    from tradelib.report import explore

    raw = generate_market(n_symbols=3, n_bars=400, seed=1, hostile=False)
    fs, _ = dataset.build(Config(window=16, horizon=1), raw)
    assert explore.constant_features(fs, block=100) == []
    days = pd.Series(pd.bdate_range("2001-01-01", periods=400, tz="UTC"))
    raw["timestamp"] = days.iloc[raw.groupby("symbol").cumcount()].to_numpy()
    fs, _ = dataset.build(Config(window=16, horizon=1), raw)
    train = fs.X[fs.split == 0]
    assert (train.min(axis=0) == train.max(axis=0)).tolist() == [f.startswith("tod_") for f in fs.feature_names]
    assert explore.constant_features(fs, block=100) == ["tod_sin", "tod_cos"]


HOSTILE = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e-12, 1e15, 1e19])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells=st.lists(st.tuples(st.integers(0, 1599), st.sampled_from(["open", "high", "low", "close", "volume"]),
                                HOSTILE), min_size=1, max_size=60),
       scale=st.sampled_from([1e-8, 1.0, 1e6]))
def test_features_finite_and_bounded_on_hostile_input(cells, scale):
    """Any mix of NaN, inf, zeros, negatives and absurd magnitudes in the raw bars: after cleaning, every
    feature is finite and within the clip, and every row is accounted for."""
    raw = generate_market(n_symbols=2, n_bars=800, seed=2, hostile=False)
    raw[["open", "high", "low", "close"]] *= scale
    for row, col, value in cells:
        raw.loc[row, col] = value
    frame, report = clean.clean_ohlcv(raw, "hostile", keep=("oracle",))
    assert report.rows_in == report.rows_kept + report.rows_dropped == len(raw)
    fs = features_of(frame, FCFG)
    assert np.isfinite(fs.X).all() and np.abs(fs.X).max() <= FCFG.clip
    assert np.isfinite(fs.y[window_ends(fs, 0, FCFG.window)]).all()


# ---------------------------------------------------------------------------------------------------------
# causality of cleaning + features, horizons and purges in bars, date splits


def _iso(raw: pd.DataFrame, row: int) -> str:
    return pd.Timestamp(raw["timestamp"].iloc[row]).isoformat()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(cut=1200, cells=[], spikes=[], dups=[])
@given(cut=st.integers(1100, 1480),
       cells=st.lists(st.tuples(st.integers(0, 2999), st.sampled_from(["open", "high", "low", "close", "volume"]),
                                HOSTILE), max_size=30),
       spikes=st.lists(st.integers(-6, 6), max_size=4), dups=st.lists(st.integers(0, 2999), max_size=3))
def test_cleaning_and_features_never_look_ahead(cut, cells, spikes, dups):
    """The raw data cut at T, cleaned and turned into features, gives for every row up to T exactly what the
    full history gives: hostile cells anywhere, reverting price spikes around T (one at T itself, which only
    the bar after T confirms), duplicate rows. Split dates are fixed, so the normalisation is the same.
    Labels look ahead by definition: they must agree wherever their end and its confirming bar are <= T."""
    raw = generate_market(n_symbols=2, n_bars=1500, seed=11, hostile=False)  # rows 0..1499: S0, then S1
    when = raw.loc[cut, "timestamp"]
    cfg = Config(window=16, horizon=2, train_end=_iso(raw, 600), val_end=_iso(raw, 900))
    for off in [0, *spikes]:  # a 30x print that reverts on the next bar, on symbol 0
        raw.loc[cut + off, ["open", "high", "low", "close"]] *= 30.0
    for row, col, value in cells:
        raw.loc[row, col] = value
    raw = pd.concat([raw, raw.loc[dups].assign(volume=7.0)]).sort_values(["symbol", "timestamp"], kind="stable")
    full = dataset.build(cfg, raw.reset_index(drop=True))[0]
    part = dataset.build(cfg, raw[raw["timestamp"] <= when].reset_index(drop=True))[0]
    upto = full.timestamp <= pd.Timestamp(when).value
    assert upto.sum() == len(part)
    for name in ("X", "timestamp", "symbol_id", "segment", "split", "last_return"):
        np.testing.assert_array_equal(getattr(full, name)[upto], getattr(part, name), err_msg=name)
    assert full.meta["norm"] == part.meta["norm"] and full.meta["target_scale"] == part.meta["target_scale"]
    idx, sid = np.arange(len(part)), part.symbol_id
    for name, ahead in (("y", cfg.target_reach + 1), ("fwd_return", cfg.horizon + 1), ("ret_next", 2)):
        known = (idx + ahead < len(part)) & (sid[np.minimum(idx + ahead, len(part) - 1)] == sid)
        np.testing.assert_array_equal(getattr(full, name)[upto][known], getattr(part, name)[known], err_msg=name)
    if not cells and not spikes:  # the spike at T alone: the full history (the bar after T) confirms it ...
        assert full.meta["masked_targets"]["spike_rows"] == part.meta["masked_targets"]["spike_rows"] + 1 == 1
        t = int(np.flatnonzero(part.timestamp == pd.Timestamp(when).value)[0])  # ... so the target ending at T
        end = t - cfg.target_reach  # the row whose target ends at T
        assert np.isnan(full.y[end]) and np.isfinite(part.y[end])  # is masked there only


def test_a_hole_just_under_max_gap_bars_is_never_spanned():
    """41 missing bars (under max_gap_bars = 50, so the segment goes on) right before validation: with a purge
    in clock time and targets in rows, the last training targets would end inside validation. Targets are in
    bars of the calendar (a target over the hole is masked) and the purge is horizon + window rows of each
    symbol, so none does."""
    raw = generate_market(n_symbols=1, n_bars=2400, seed=4, hostile=False)
    cfg = Config(window=16, horizon=3, target_delay=0, max_gap_bars=50, train_end=_iso(raw, 1000),
                 val_end=_iso(raw, 1700))
    holed = raw.drop(index=range(990, 1031)).reset_index(drop=True)  # bars 990..1030 missing
    fs = features_of(clean.clean_ohlcv(holed, "holed", keep=("oracle",))[0], cfg)
    assert fs.segment.max() == 0  # one segment: windows may cross the hole, targets may not
    last_train = np.flatnonzero(fs.split == 0)[-1]  # bar 989
    np.testing.assert_array_equal(np.isnan(fs.y[last_train - 3: last_train + 1]), [False, True, True, True])
    assert fs.meta["masked_targets"]["spans_missing_bar"] == 3
    bar = 300 * 10**9
    ends = window_ends(fs, 0, cfg.window)
    assert fs.timestamp[ends].max() + cfg.horizon * bar < fs.timestamp[fs.split == 1].min()
    purged = np.flatnonzero(fs.split == -1)
    assert purged[: cfg.horizon + cfg.window].tolist() == list(range(last_train + 1, last_train + 20))
    # the old rule, (horizon + window) bars of clock time, would have started validation right after the hole
    assert fs.timestamp[last_train + 1] - fs.timestamp[last_train] == 42 * bar > (cfg.horizon + cfg.window) * bar


def test_date_splits_keep_whole_days_and_are_stated():
    raw = generate_market(n_symbols=2, n_bars=2000, seed=5, hostile=False)  # 2024-01-01 .. 2024-01-07, 5 minutes
    fs = features_of(clean.clean_ohlcv(raw, "dated", keep=("oracle",))[0],
                        Config(window=8, horizon=1, train_end="2024-01-03", val_end="2024-01-05 12:00"))
    ts = pd.to_datetime(fs.timestamp, utc=True)
    assert ts[fs.split == 0].max() == pd.Timestamp("2024-01-03 23:55", tz="UTC")  # the whole of Jan 3rd
    assert ts[fs.split == 1].min() > pd.Timestamp("2024-01-04", tz="UTC")
    assert ts[fs.split == 1].max() <= pd.Timestamp("2024-01-05 12:00", tz="UTC") < ts[fs.split == 2].min()
    cut = fs.meta["splits"]
    assert cut["method"] == "dates" and cut["purge_bars"] == 10
    assert pd.Timestamp(cut["test_start"], tz="UTC") == ts[fs.split == 2].min()
    # every symbol purges target_delay + horizon + window of its own rows after each of the two boundaries
    assert (np.bincount(fs.symbol_id[fs.split == -1]) == 2 * 10).all()
    with pytest.raises(ValueError, match="test split is empty"):
        features_of(clean.clean_ohlcv(raw, "dated")[0], Config(train_end="2024-01-03", val_end="2024-02-01"))


@pytest.mark.parametrize("values, problem", [
    ({"train_end": "2024-01-03"}, "go together"),
    ({"train_end": "2024-01-05", "val_end": "2024-01-03"}, "must come before"),
    ({"train_end": "yesterday-ish", "val_end": "2024-01-03"}, "expected a date"),
    ({"train_end": "2023-12-31", "val_end": "today"}, "moves with the clock"),  # (pandas reads now and today)
    ({"train_end": "now", "val_end": "2099-01-01"}, "moves with the clock"),
    ({"train_end": "2023", "val_end": "2024-06-30"}, "a year or month that pandas reads as its first day only"),
    ({"train_end": "2023-06-30", "val_end": "2024-06"}, "a year or month"),
    ({"cost_grid_bps": "0,-1"}, "cost_grid_bps"),
    ({"cost_grid_bps": "0,1e6"}, "from 0 to 10000 bps"),  # beyond all of what is traded: not a cost
    ({"cost_bps": 1e300}, "cost_bps"),
])
def test_bad_split_dates_and_cost_grid_are_refused(values, problem):
    with pytest.raises(ConfigError, match=problem):
        Config(**values)


def test_segments_break_at_long_gaps_and_max_gap_bars_0_breaks_none():
    """A gap of more than max_gap_bars bars starts a segment; max_gap_bars 0 turns gaps off (as cleaning reads it),
    leaving one segment per symbol, not one per row."""
    bar = 300 * 10**9
    codes = np.array([0, 0, 0, 0, 1, 1, 1])
    ts = np.array([0, 1, 2, 60, 0, 1, 2]) * bar
    bars = np.full(len(codes), bar)
    assert segment_ids(codes, long_gap_rows(ts, codes, bars, 50)).tolist() == [0, 0, 0, 1, 2, 2, 2]
    assert segment_ids(codes, long_gap_rows(ts, codes, bars, 0)).tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_a_column_mostly_at_its_median_is_scaled_by_its_mean_deviation():
    """Prices of about $4 on a one-cent grid: most one-bar returns are 0, so the MAD of ret_1 (and body) is 0.
    Their scale is then 1.2533 x the mean absolute deviation from the median, not 1, which left them at their
    raw size (a std of 0.002 beside features of 1): the model could not see the last bar's return."""
    raw = generate_market(n_symbols=4, n_bars=4000, seed=1, hostile=False)
    for _, g in raw.groupby("symbol"):
        raw.loc[g.index, ["open", "high", "low", "close"]] = np.round(g[["open", "high", "low", "close"]]
                                                                      * (4.0 / g["close"].iloc[0]), 2)
    fs = dataset.build(Config(window=16), raw)[0]
    train = fs.split == 0
    for name in ("ret_1", "body"):
        j = fs.feature_names.index(name)
        x = feature_makers(raw, fs.segment, "UTC")[name]()[train].astype(np.float32).astype(np.float64)
        x = x[np.isfinite(x)]
        assert np.median(np.abs(x - np.median(x))) == 0  # more than half of them at the median
        assert fs.meta["norm"]["scale"][j] == pytest.approx(1.2533 * np.mean(np.abs(x - np.median(x))), rel=1e-12)
        assert 0.5 < fs.X[train, j].std() < 2
    assert np.abs(fs.X).max() <= 5.0
