"""Features are scale-free, causal, finite and bounded; splits never leak."""

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradelib import data
from tradelib.config import Config
from tradelib.features import build_features, feature_makers, feature_params, segment_ids
from tradelib.sources import window_ends
from tradelib.synth import generate_market

FCFG = Config(window=16, horizon=1)


def clean_market(n_symbols=3, n_bars=800, seed=1, hostile=True):
    raw = generate_market(n_symbols=n_symbols, n_bars=n_bars, seed=seed, hostile=hostile)
    return data.clean_ohlcv(raw, "synthetic", keep=("oracle",))[0]


def raw_feature_matrix(clean: pd.DataFrame) -> np.ndarray:
    codes = pd.factorize(clean["symbol"])[0]
    ts = pd.DatetimeIndex(clean["timestamp"]).as_unit("ns").asi8
    seg = segment_ids(codes, ts, np.full(len(ts), 300 * 10**9), 50)
    return raw_features(clean, seg)


def raw_features(clean: pd.DataFrame, seg: np.ndarray) -> np.ndarray:
    """Every feature before scaling, as one float64 [n, F] matrix."""
    return np.column_stack([make() for make in feature_makers(clean, seg).values()])


def test_features_finite_bounded_float32_on_hostile_synthetic():
    fs = build_features(clean_market(), FCFG)
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
    a, b = build_features(clean, FCFG), build_features(scaled, FCFG)
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
    np.testing.assert_allclose(build_features(micro, FCFG).X, build_features(big, FCFG).X, atol=1e-4)


def test_splits_are_chronological_and_purged():
    fcfg = Config(window=16, horizon=3)
    fs = build_features(clean_market(n_bars=1200), fcfg)
    ts = fs.timestamp
    assert ts[fs.split == 0].max() < ts[fs.split == 1].min() < ts[fs.split == 1].max() < ts[fs.split == 2].min()
    bar = 300 * 10**9
    gap = (fcfg.horizon + fcfg.window) * bar
    assert ts[fs.split == 1].min() - ts[fs.split == 0].max() >= gap
    assert ts[fs.split == 2].min() - ts[fs.split == 1].max() >= gap
    # no training target reaches a validation row: the last training target ends before validation starts
    last_train_target_end = ts[window_ends(fs, 0, fcfg.window)].max() + fcfg.horizon * bar
    assert last_train_target_end < ts[fs.split == 1].min()


def test_normalisation_is_fitted_on_training_rows_only():
    clean = clean_market(n_bars=1000)
    fs = build_features(clean, FCFG)
    late = clean.copy()
    test_rows = fs.split == 2
    late.loc[test_rows, "volume"] = late.loc[test_rows, "volume"] * 1000  # only test-period rows move
    fs2 = build_features(late, FCFG)
    assert fs.meta["norm"] == fs2.meta["norm"]


def test_unknown_targets_stay_nan_not_zero():
    fs = build_features(clean_market(n_symbols=2, n_bars=500), Config(window=8, horizon=4))
    for s in np.unique(fs.symbol_id):
        last4 = np.flatnonzero(fs.symbol_id == s)[-4:]
        assert np.isnan(fs.y[last4]).all()
    assert np.isfinite(fs.y[window_ends(fs, 0, 8)]).all()


def test_vol_scaled_target():
    clean = clean_market(n_symbols=2, n_bars=600, hostile=False)
    plain = build_features(clean, FCFG)
    scaled = build_features(clean, Config(window=16, vol_scaled_target=True))
    rvol = raw_features(clean, plain.segment)[:, plain.feature_names.index("rvol_32")]
    ok = np.isfinite(scaled.y) & (rvol > 0)
    np.testing.assert_allclose(scaled.y[ok], (plain.fwd_return[ok] / rvol[ok]).astype(np.float32), rtol=1e-4)


def test_feature_parameters_are_configs_features_group():
    params = feature_params(Config(window=48, horizon=2))
    assert params["window"] == 48 and params["horizon"] == 2 and "lr" not in params and "data_path" not in params
    assert build_features(clean_market(n_bars=600), Config(window=48, horizon=2)).meta["feature_config"] == params


def test_feature_ranges_before_scaling_are_recorded_and_finite():
    """01 shows each feature's range before and after scaling; before is finite even on hostile data."""
    from tradelib.explore import feature_table

    fs = build_features(clean_market(), FCFG)
    raw = fs.meta["raw_ranges"]
    assert list(raw) == fs.feature_names
    assert all(np.isfinite([r["min"], r["max"]]).all() and r["min"] <= r["max"] for r in raw.values())
    assert raw["ret_64"]["unknown"] >= 64  # the first 64 rows of each series have no 64-bar history
    table = feature_table(fs)
    assert {"raw_min", "raw_max", "min", "max", "at_clip"} <= set(table.columns)
    assert (table["max"] <= FCFG.clip).all() and (table["non_finite"] == 0).all()


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
    clean, report = data.clean_ohlcv(raw, "hostile", keep=("oracle",))
    assert report.rows_in == report.rows_kept + report.rows_dropped == len(raw)
    fs = build_features(clean, FCFG)
    assert np.isfinite(fs.X).all() and np.abs(fs.X).max() <= FCFG.clip
    assert np.isfinite(fs.y[window_ends(fs, 0, FCFG.window)]).all()
