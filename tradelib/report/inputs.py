"""What the report is computed from: `load_inputs` reads a run folder (predictions, summary, curves, the
facts training wrote, the feature cache when there) and computes every table into a `ReportInputs`.

04_report calls `inputs = load_inputs(run_dir, ReportSettings.of(cfg), fs=load_featureset(run_dir))`, then
`report.build_report` (report.json), `figures.make_figures` (the PNGs) and `words` (the text).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib import runs
from tradelib.config import Config, cost_grid, run_market_zone, run_setting, settings_values
from tradelib.progress import stage_lines
from tradelib.report import backtest as bk
from tradelib.report import explore
from tradelib.report import metrics as ev
from tradelib.report.tables import number

TRADED = "target_traded"  # the predictions frame's column: the target at the traded lag (ev.lagged_target)
FACTS_FILE = "train_facts.json"  # what training writes for the report (tradelib/train/facts.py)
DECAY_LAGS = 10  # the IC decay table's last lag, in bars
SHORT_SPAN_DAYS = 28  # a calendar over fewer days sees too few weekends to count a year of marks
MIN_TEST_PERIODS = 60  # fewer test periods than this: every figure is a few draws
STAGE_LINES_ROWS = 250_000  # from this many predictions (about 15 s on 2 cores) a line says each stage
BETA_T = 3.0  # a neutral book's beta this many standard errors from 0 is warned about


@dataclass
class ReportInputs:
    """Everything the report is computed from, kept as frames so figures need not re-read the run folder.

    Every IC here is against the target at the traded lag (trade_delay: the return from t+d to t+d+h,
    `TRADED`), except `ic_lag0` (before the trade delay) and the decay over lags. `book` holds the backtest's
    settings (cost, bar, mode, periods a year, delay, annualisation), the same for every book the report trades.
    With `headline_only` (`load_inputs`) the fields after `predictors` keep their defaults."""

    run_dir: Path
    summary: dict
    predictions: pd.DataFrame  # with TRADED: the target at the traded lag
    steps: pd.DataFrame
    epochs: pd.DataFrame
    book: dict  # `bk.backtest`'s settings
    horizon: int
    horizon_source: str
    typical_symbols: float  # symbols at a typical timestamp
    family: str  # the headline IC family
    family_reason: str
    mode_reason: str
    ic_timestamp: pd.DataFrame  # cross-sectional IC per timestamp
    ic_day: pd.DataFrame  # IC per session (metrics.session_dates)
    zone: str  # the market's clock the run read its sessions on (config.run_market_zone): the per-day IC's days
    ic: dict  # family -> ev.ic_summary / ev.pooled_summary
    ic_lag0: dict  # family -> summary against the lag-0 target
    backtest: bk.BacktestResult
    break_even_bps: float
    predictors: pd.DataFrame  # (headline_only: the model and the oracle)
    deciles: pd.DataFrame | None = None
    per_symbol: pd.DataFrame | None = None
    costs: pd.DataFrame | None = None
    splits: dict = field(default_factory=dict)
    decay: pd.DataFrame | None = None  # the headline IC at lags 0..10
    break_even_ci: dict = field(default_factory=dict)
    trials: dict = field(default_factory=dict)  # what the deflated Sharpe counts
    test_span: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    facts: dict | None = None  # train_facts.json: what training wrote for the report
    sweep: pd.DataFrame | None = None  # 02's batch-size sweep (`loader_sweep`): read once for the text and figures
    quality: dict | None = None
    constant_features: list = field(default_factory=list)  # `explore.constant_features` (none known without a cache)
    loss: dict | None = None  # loss_context: the loss's unit, and why validation sits below training
    folds: pd.DataFrame | None = None  # a walk-forward's `fold_table`
    # the headline IC per period: per timestamp, or each timestamp's share of the pooled IC
    ic_series: pd.DataFrame | None = None


@dataclass(frozen=True)
class ReportSettings:
    """What the report is computed with: Config's report knobs (where their defaults live), the cost grid parsed."""

    cost_bps: float
    position_mode: str
    periods_per_year: float
    trade_delay: int
    min_symbols_cs: int
    cost_grid_bps: tuple[float, ...]
    bootstrap_samples: int
    bootstrap_seed: int

    @classmethod
    def of(cls, cfg: Config | None = None, **overrides) -> ReportSettings:
        """The settings of `cfg` (default: Config's defaults), with `overrides` by name (04_report and a sweep
        pass the run's Config; a comparison this run's book)."""
        values = settings_values(cls, cfg, overrides, "report")
        values["cost_grid_bps"] = cost_grid(values["cost_grid_bps"])
        return cls(**values)


def load_inputs(
    run_dir: Path,
    settings: ReportSettings,
    fs=None,
    X_train: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
    X_test: np.ndarray | None = None,
    bar_seconds: float | None = None,
    ridge_alpha: float = 1.0,
    headline_only: bool = False,
) -> ReportInputs:
    """Read a run folder and compute every table the report shows.

    The ridge baseline needs features: pass `X_train, y_train, X_test` (X_test row-aligned with the
    predictions), or a FeatureSet `fs`: fitted on its training rows and applied to fs.X[predictions.row] a block
    of rows at a time (`ridge_fit_rows`: the cache may be mapped, larger than memory); without either it is
    skipped (a walk-forward's predictions bring their own). The bar size comes from `bar_seconds`, else fs.meta,
    else the timestamps; periods per year from `settings.periods_per_year` (> 0), else the test span's calendar
    (see `_annualisation`).
    `headline_only`: only what `report.headline_numbers` reads (a sweep's table, a comparison): the ICs, the
    book, the model and the oracle side by side; no other baseline, table or error bar.
    From STAGE_LINES_ROWS predictions on, a line says each stage as it begins (minutes on millions of them).
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    trade_delay, min_symbols_cs = settings.trade_delay, int(settings.min_symbols_cs)
    df = runs.read_predictions(run_dir)
    runs.check_predictions(run_dir, len(df))  # none: say so, not what the empty calendar or IC would
    say = stage_lines("report", len(df) >= STAGE_LINES_ROWS, t0)
    say(f"{len(df):,} test predictions of {run_dir.name} read")
    df[TRADED] = ev.lagged_target(df, trade_delay)
    summary = runs.report_summary(run_dir)
    steps, epochs = runs.training_curves(run_dir)
    ridge = None
    if headline_only:
        pass
    elif X_train is not None and y_train is not None and X_test is not None:
        w, b = ev.ridge_fit(X_train, y_train, ridge_alpha)
        ridge = np.asarray(X_test, dtype=np.float64) @ w + b
    elif fs is not None and "row" in df and "ridge" not in df:  # (a walk-forward brings its own, per fold)
        say(f"the ridge baseline, fitted on the training rows of {len(fs.X):,}")
        if len(df) and df["row"].max() >= len(fs.X):
            raise ValueError(f"{run_dir / 'predictions.parquet'}: row {df['row'].max():,} is past the {len(fs.X):,} "
                             f"rows of the feature cache {fs.meta.get('cache_key')}: not predictions of those features")
        w, b = ev.ridge_fit_rows(fs.X, fs.y, np.asarray(fs.split) == 0, ridge_alpha)
        ridge = ev.ridge_predict(fs.X, df["row"].to_numpy(), w, b)
    bar = bar_seconds or _bar_seconds_from_fs(fs) or ev.infer_bar_seconds(df)
    zone = run_market_zone(summary.get("config") or {})
    ann, bars_per_session = _annualisation(df, fs, float(bar), settings.periods_per_year, zone)
    horizon, horizon_source = _horizon(summary, fs)
    per_ts = ev.symbols_per_timestamp(df)
    typical = ev.typical_symbols(per_ts)
    mode, mode_reason = bk.resolve_position_mode(typical, settings.position_mode, min_symbols_cs)
    say("the model's ICs and backtest")
    family, reason = ev.headline_family(per_ts, mode)  # the IC of this book's bet
    lags = {f: ev.overlap_lags(horizon, f, bars_per_session) for f in ev.IC_FAMILIES}
    by_ts, by_day = ev.ic_by_timestamp(df, target_col=TRADED), ev.ic_by_day(df, target_col=TRADED, zone=zone)
    book = {"cost_bps": float(settings.cost_bps), "bar_seconds": float(bar), "mode": mode,
            "periods_per_year": ann["periods_per_year"], "trade_delay": trade_delay, "annualised": ann}
    bt = bk.backtest(df, "prediction", **book)
    ic = {"cross_sectional": ev.ic_summary(by_ts, lags["cross_sectional"]),  # (the series computed above)
          "daily": ev.ic_summary(by_day, lags["daily"]),
          "pooled": ev.pooled_summary(df, "prediction", TRADED, lags["pooled"])}
    baselines = ev.baseline_predictions(df, ridge)
    if headline_only:
        baselines = {k: v for k, v in baselines.items() if k == "oracle"}
    say(f"the ICs before the delay, and the {len(baselines)} baselines' ICs and backtests")
    inputs = ReportInputs(
        run_dir=run_dir, summary=summary, predictions=df, steps=steps, epochs=epochs, book=book, horizon=horizon,
        horizon_source=horizon_source, typical_symbols=typical, family=family,
        family_reason=reason, mode_reason=mode_reason, ic_timestamp=by_ts, ic_day=by_day, zone=zone, ic=ic,
        ic_lag0={f: ev.family_summary(df, f, lags[f], zone=zone) for f in ev.IC_FAMILIES}, backtest=bt,
        break_even_bps=bk.break_even_bps(bt),
        predictors=bk.evaluate_all(df, baselines, family, lags[family], target_col=TRADED, model=(ic, bt), zone=zone,
                                   **book),
    )
    if headline_only:
        return inputs
    say("deciles, per symbol, IC decay, the break-even's bootstrap")
    block, n_runs = bk.bootstrap_block(len(bt.pnl), horizon, trade_delay), sweep_runs(run_dir)
    inputs.deciles = ev.decile_table(df, target_col=TRADED, lags=lags["pooled"])
    inputs.per_symbol = ev.per_symbol_metrics(df, target_col=TRADED)
    inputs.costs = bk.cost_sensitivity(bt, settings.cost_grid_bps)
    inputs.decay = decay_judged(ev.ic_decay(df, family, lags[family], DECAY_LAGS), trade_delay, n_runs)
    inputs.ic_series = ev.pooled_by_timestamp(df, target_col=TRADED) if family == "pooled" else by_ts
    inputs.break_even_ci = bk.break_even_interval(bt, block, int(settings.bootstrap_samples),
                                                  int(settings.bootstrap_seed))
    inputs.trials = bk.trial_count(inputs.predictors, n_runs)
    inputs.test_span, inputs.facts = test_span(df, fs, summary), read_facts(run_dir)
    inputs.sweep = loader_sweep(run_dir)
    inputs.splits = split_dates(summary, fs, inputs.test_span)
    inputs.quality = _meta(fs).get("quality") or None
    inputs.constant_features = explore.constant_features(fs) if getattr(fs, "X", None) is not None else []
    inputs.warnings = report_warnings(inputs, min_symbols_cs)
    folds = summary.get("folds") or []
    last = f"fold-{folds[-1].get('fold', len(folds) - 1)}" if folds and not inputs.facts else ""
    inputs.loss = loss_context(inputs, read_facts(run_dir / last) if last else None, last)
    inputs.folds = fold_table(inputs) if "fold" in df else None
    say("the tables computed")
    return inputs


def load_featureset(run_dir: Path, left_out: str = f"ridge baseline and data quality left out, and a test span under "
                                                   f"{SHORT_SPAN_DAYS} days annualised by its own days"):
    """The FeatureSet a run trained on, from the cache folder its summary names, else from this outputs/'s
    cache of the same key (a run folder copied from a colleague, its cache rebuilt here: the key holds the data's
    bytes, the feature parameters and the feature code); None (and says why, and what is `left_out` without it)
    when neither loads, in which case the ridge baseline and the data-quality section are left out and a test span
    under SHORT_SPAN_DAYS is annualised by its own days."""
    from tradelib.data import cache

    summary = runs.report_summary(Path(run_dir))
    named, key = summary.get("cache_dir"), summary.get("cache_key")
    places = list(dict.fromkeys(p for p in (named and Path(named), key and cache.folder_for(key)) if p))
    problems = []
    for folder in places:
        if not cache.has(folder):
            problems.append(f"{folder} not found")
            continue
        try:
            fs = cache.load(folder, mmap=True)  # verified, read from disk as used: the cache may exceed memory
        except cache.CacheError as exc:
            problems.append(f"{folder} is damaged ({exc})")
            continue
        if key and fs.meta.get("cache_key") != key:  # the folder a copied summary.json names holds other features
            problems.append(f"{folder} holds the cache {fs.meta.get('cache_key')}, not the run's {key}")
            continue
        return fs
    rebuild = " (rebuild it with `tradelib prepare` and the run's parameters, from the same data and code)"
    print(f"feature cache {'; '.join(problems) or 'not named in summary.json'}: {left_out}{rebuild if key else ''}")
    return None


def read_facts(run_dir: Path) -> dict | None:
    """train_facts.json (written by training: the LR at every optimizer step, the windows and the zero
    yardstick per split); None for a run without it."""
    path = Path(run_dir) / FACTS_FILE
    try:
        facts = json.loads(path.read_text()) if path.exists() else None
        problem = facts_problem(facts) if facts is not None else ""
    except (OSError, ValueError) as exc:
        problem = str(exc)
    if problem:
        print(f"{path} unreadable ({problem}): the LR schedule and the zero-prediction yardstick are left out")
        return None
    return facts


def facts_problem(facts) -> str:
    """What keeps train_facts.json from being what training writes (an edited or crafted file), or ""."""
    def numbers(values) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    if not isinstance(facts, dict):
        return f"a JSON {type(facts).__name__}, not an object"
    lr, zero = facts.get("lr") or [], facts.get("zero_mse") or {}
    if not (isinstance(lr, list) and numbers(lr)):
        return "lr is not a list of numbers"
    if not (isinstance(zero, dict) and numbers(zero.values()) and numbers([facts.get("target_scale") or 0])):
        return "zero_mse or target_scale is not numbers"
    if not numbers([facts.get("warmup") or 0]):
        return "warmup is not a number"
    return ""


def loader_sweep(run_dir: Path) -> pd.DataFrame | None:
    """02_profiling's batch-size sweep of this run (the seed's DataLoader and the device loader measured side
    by side on this device, `speedup` = device / dataloader at each batch size; the columns of
    `profiling.batch_size_sweep`); None when 02 did not run."""
    path = Path(run_dir) / "batch_size_sweep.csv"
    if not path.exists():
        return None
    try:
        sweep = pd.read_csv(path)
        missing = [c for c in ("loader", "batch_size", "samples_per_s") if c not in sweep.columns]
        text = [c for c in ("batch_size", "samples_per_s") if c in sweep.columns
                and not pd.api.types.is_numeric_dtype(sweep[c])]
        problem = (f"no column {', '.join(missing)}" if missing else
                   f"column {', '.join(text)} is not numbers" if text else "")
    except (OSError, ValueError) as exc:  # (pandas' parser errors are ValueErrors)
        problem = str(exc)
    if problem:  # a colleague's folder, or another program's file of that name
        print(f"{path} unreadable ({problem}): 02's loader sweep is left out")
        return None
    return sweep


def _meta(fs) -> dict:
    """A FeatureSet's meta; {} without a feature set."""
    return getattr(fs, "meta", None) or {}


def _bar_seconds_from_fs(fs) -> float | None:
    """The median of the feature set's bar size per symbol; None without one."""
    bars = [float(v) for v in (_meta(fs).get("bar_seconds") or {}).values() if v is not None and np.isfinite(v)]
    return float(np.median(bars)) if bars else None


def _horizon(summary: dict, fs) -> tuple[int, str]:
    """The target horizon in bars: the run's config, else the feature set's, else 1 (and the report says so)."""
    for source, conf in (("the run's config", summary.get("config") or {}),
                         ("the feature set", _meta(fs).get("feature_config") or {})):
        if isinstance(conf.get("horizon"), int):
            return int(conf["horizon"]), source
    return 1, "not recorded: assumed 1"


def _annualisation(df: pd.DataFrame, fs, bar: float, periods_per_year: float, zone: str) -> tuple[dict, float]:
    """(annualisation dict, bars per session): the given periods_per_year, else the calendar of the test span
    itself, its days on the market's clock `zone` (holes in the training years do not move it). A test span too
    short to see weekends (< 4 weeks) takes the whole data's periods a year (fs.meta, when the cache is there): over
    a few days an exchange shows no weekend, and its marks a year would count none."""
    test = ev.annualisation(df, bar, periods_per_year=0.0, zone=zone)
    full = _meta(fs).get("calendar")
    if full and test["span_days"] < SHORT_SPAN_DAYS and full.get("span_days", 0) >= SHORT_SPAN_DAYS:
        test = {**test, "periods_per_year": full["periods_per_year"], "method": full["method"],
                "description": f"{test['description']}; too short to see a week's pattern, so periods a year are "
                               f"the whole data's: {full['description']}"}
    bars_per_session = float(test.get("bars_per_session") or 1.0)
    if periods_per_year and periods_per_year > 0:
        return {**ev.annualisation(df, bar, periods_per_year=periods_per_year), "source": "given"}, bars_per_session
    return {**test, "source": "measured on the test span",
            "description": f"measured on the test span: {test['description']}"}, bars_per_session


def decay_judged(decay: pd.DataFrame, traded_lag: int, runs: int = 1) -> pd.DataFrame:
    """The IC decay with the report's verdict at each lag (`significant`, of a positive IC) and the t it rests on,
    deflated over the trials it is judged among (`deflated_t`, `bk.deflated_t`). Lag 0 and the traded lag are the
    headline's, judged as it judges them: t >= 2, and in a sweep of `runs` runs also deflated over them. The other
    lags are a scan, and a scan of 9 lags of a random walk shows a t >= 2 at some lag far more often than one lag
    does, so each is deflated over them (times the runs) and significant above `bk.SIGNIFICANT`, as the best
    predictor is over the predictors."""
    alone = decay["lag"].isin([0, traded_lag]).to_numpy()
    scanned = int((~alone).sum())
    t = decay["t_stat"].to_numpy(dtype=float)
    ic = decay["ic"].to_numpy(dtype=float)
    deflated = [bk.deflated_t(v, runs if one else scanned * runs) for v, one in zip(t, alone)]
    significant = [bool(i > 0 and (bk.significant(v, d, runs) if one else d > bk.SIGNIFICANT))
                   for i, v, d, one in zip(ic, t, deflated, alone)]
    return decay.assign(deflated_t=deflated, significant=significant)


def sweep_runs(run_dir: Path) -> int:
    """How many runs the sweep this run belongs to holds (its sweep.json), else 1."""
    plan = Path(run_dir).parent / "sweep.json"
    try:
        return max(len(json.loads(plan.read_text()).get("runs") or []), 1) if plan.exists() else 1
    except (OSError, ValueError):
        return 1


def _iso(ns) -> str | None:
    """ISO time; an inclusive end of day (a date given as train_end / val_end) as the date itself."""
    if ns is None:
        return None
    if (int(ns) + 1) % (86_400 * 10**9) == 0:
        return pd.Timestamp(int(ns), tz="UTC").strftime("%Y-%m-%d") + " (whole day, UTC)"
    return pd.Timestamp(int(ns), tz="UTC").isoformat()


def split_dates(summary: dict, fs, span: dict) -> dict:
    """The split boundaries as ISO times, whichever way they were set (fs.meta, else the run's config and
    the test rows' own `test_span`); a walk-forward's from its summary, fold by fold."""
    if summary.get("folds"):
        return walk_forward_splits(summary)
    cuts = _meta(fs).get("splits")
    if cuts:
        out = {k: (_iso(v) if k not in ("method", "purge_bars") else v) for k, v in cuts.items()}
        return {**out, "source": "feature set"}
    conf = summary.get("config") or {}
    dated = bool(conf.get("train_end"))
    return {"method": "dates" if dated else "fractions", "train_end": conf.get("train_end") or None,
            "val_end": conf.get("val_end") or None, "train_frac": None if dated else conf.get("train_frac"),
            "val_frac": None if dated else conf.get("val_frac"),
            "test_start": span["first_prediction"], "test_end": span["last_prediction"],
            "source": "run config and test rows"}


def walk_forward_splits(summary: dict) -> dict:
    """A walk-forward's periods: the out-of-sample span its test periods tile, and each fold's periods."""
    folds = summary["folds"]
    keys = ("train_start", "train_end", "val_start", "val_end", "test_start", "test_end")
    return {"method": "walk-forward", "n_folds": len(folds), "fold_window": summary.get("fold_window"),
            "fold_init": summary.get("fold_init"), "test_start": folds[0].get("test_start"),
            "test_end": folds[-1].get("test_end"), "folds": [{"fold": f["fold"], **{k: f.get(k) for k in keys}}
                                                            for f in folds], "source": "run summary"}


def test_span(df: pd.DataFrame, fs, summary: dict) -> dict:
    """The test span as traded: the first and last prediction, the periods, and (with the feature cache, one
    split) the rows lost before the first prediction: to the purge after the validation split, and to the
    window's warm-up (test rows with a target but fewer than `window` test rows behind them)."""
    ts = pd.to_datetime(df["timestamp"], utc=True)
    out = {"first_prediction": ts.min().isoformat() if len(ts) else None,
           "last_prediction": ts.max().isoformat() if len(ts) else None,
           "periods": int(ts.nunique()), "predictions": int(len(df)),
           "purged_rows": None, "warmup_rows": None, "test_rows": None}
    cut = _meta(fs).get("splits")
    if not cut or summary.get("folds") or cut.get("val_end") is None:
        return out
    t, split = np.asarray(fs.timestamp), np.asarray(fs.split)
    after = t > int(cut["val_end"])
    if cut.get("test_end") is not None:
        after &= t <= int(cut["test_end"])
    test = split == 2
    out.update(purged_rows=int(np.count_nonzero(after & (split == -1))), test_rows=int(np.count_nonzero(test)),
               test_start=_iso(cut.get("test_start")))
    windows = summary.get("test_windows")
    if isinstance(windows, int):
        out["warmup_rows"] = int(np.count_nonzero(test & np.isfinite(fs.y))) - windows
    return out


def report_warnings(inputs: ReportInputs, min_symbols_cs: int) -> list[str]:
    """What a reader must know before trusting the figures: a model trained for another trade delay than the
    book's, predictions that are one value (every IC undefined), a warm-up as long as the run, inputs that hold one
    value over the training rows, a test span of few periods, a cross-section of few symbols, a market-neutral book
    that carries market beta all the same (|t| >= `BETA_T`: at |t| >= 1.96 one of the five random-walk markets of
    tests/test_noise.py, t 2.4, would be warned about)."""
    out = []
    c, s = inputs.summary.get("config") or {}, inputs.summary
    learned, traded = int(run_setting(c, "target_delay")), inputs.book["trade_delay"]
    if learned != traded:
        out.append(f"the model learned the return starting {learned} bar(s) after its signal (target_delay), the book "
                   f"trades it {traded} bar(s) after (trade_delay): the headline IC and the book measure a target "
                   f"it was not trained for; train with target_delay {traded}, or report with trade_delay {learned}")
    steps, warm = s.get("optimizer_steps"), c.get("warmup_steps")
    if isinstance(steps, int) and isinstance(warm, int) and warm >= steps:
        out.append(f"warmup_steps {warm} reaches the run's {steps} optimizer steps (the schedule caps the warm-up at "
                   f"a tenth of the run): size the run for this data (params/daily.yaml for daily bars)")
    if ev.constant_predictions(inputs.predictions["prediction"]):
        out.append(f"the model's {len(inputs.predictions):,} test predictions are one value: every IC is undefined "
                   f"and the book's positions do not depend on the model; it learned nothing from its inputs (see "
                   f"the training loss and the features' clip)")
    if inputs.constant_features:
        tod = all(name.startswith("tod_") for name in inputs.constant_features)
        out.append(f"{len(inputs.constant_features)} of the model's inputs ({', '.join(inputs.constant_features)}) "
                   f"hold one value over the training rows: scaled to 0 throughout, they tell the model nothing"
                   + (" (the time-of-day features on daily bars, every bar at the same time)" if tod else ""))
    periods = inputs.test_span.get("periods") or 0
    if periods < MIN_TEST_PERIODS:
        out.append(f"the test span holds {periods} periods (< {MIN_TEST_PERIODS}): every figure below rests on a few "
                   f"draws")
    typical = inputs.typical_symbols
    if inputs.book["mode"] == "neutral" and typical < ev.MIN_PERIOD_ROWS:
        out.append(f"the neutral book rests on {typical:g} symbol(s) at a typical timestamp: too few to rank, so the "
                   f"cross-sectional IC is n/a; position_mode sign trades each one's direction")
    elif inputs.book["mode"] == "neutral" and typical < min_symbols_cs:
        out.append(f"the neutral book and the cross-sectional IC rest on {typical:g} symbols at a typical timestamp "
                   f"(< {min_symbols_cs}): a correlation across so few is noisy and biased towards 0")
    stats = inputs.backtest.stats
    market = stats["market"]
    if inputs.book["mode"] == "neutral" and abs(market["beta_t"]) >= BETA_T:
        low, high = market["beta_ci"]
        out.append(f"the market-neutral book (net exposure {number(stats['net_exposure'], '+.2f')}) carries market "
                   f"beta {number(market['beta'], '+.2f')} (95% {number(low, '+.2f')} to {number(high, '+.2f')}, t "
                   f"{market['beta_t']:.1f}): it is long "
                   f"names that move {'more' if market['beta'] > 0 else 'less'} with the market than those it is "
                   f"short, so part of what it earns or loses is the market's; its alpha beyond the market is what "
                   f"it earns of its own")
    return out


def loss_context(inputs: ReportInputs, facts: dict | None = None, whose: str = "") -> dict:
    """The training loss's unit, and, when validation sits below training, why, from measurements: what
    predicting 0 scores on each split's windows (a quieter validation period scores lower), dropout (on in
    training only), and the training figure being a mean over an epoch of improving weights. `facts`: another
    train_facts.json than the run's, `whose` (a walk-forward's last fold, whose epoch the last epoch row is)."""
    conf = inputs.summary.get("config") or {}
    out = {"unit": "mean squared error of the target in units of its training scale", "target_scale": None,
           "zero_mse": {}, "val_below_train": None, "reasons": [], "whose": whose if facts else ""}
    facts = facts or inputs.facts or {}
    if facts.get("zero_mse"):  # measured by training on its own windows (train_facts.json)
        out["target_scale"] = facts.get("target_scale")
        out["zero_mse"] = {k: facts["zero_mse"].get(k) for k in ("train", "val")}
    ep = inputs.epochs.dropna(subset=["train_loss", "val_loss"])
    if not len(ep):
        return out
    train, val = float(ep["train_loss"].iloc[-1]), float(ep["val_loss"].iloc[-1])
    out.update(last_train_loss=train, last_val_loss=val, val_below_train=val < train)
    if val >= train:
        return out
    z = out["zero_mse"]
    if z and z["val"] < z["train"]:
        rel_val, rel_train = val / z["val"], train / z["train"]
        out["reasons"].append(
            f"the validation period{f' of {whose}' if whose else ''} is quieter: predicting 0 scores "
            f"{z['val']:.3f} on its windows against "
            f"{z['train']:.3f} on the training windows; against that yardstick validation is {rel_val:.3f} and "
            f"training {rel_train:.3f}" + (", so the gap is the period's, not the model's" if rel_val >= rel_train
                                          else ""))
    if float(conf.get("dropout") or 0) > 0:
        out["reasons"].append(f"dropout {conf['dropout']} is on while training and off for validation")
    out["reasons"].append(("also, " if out["reasons"] else "") + "the training loss is the mean over an epoch in "
                          "which the weights were still improving, the validation loss that of the weights at its end")
    return out


def lr_schedule(facts: dict | None, steps: pd.DataFrame, optimizer_steps: int | None = None) -> pd.DataFrame | None:
    """The learning rate of every optimizer step from step 1 (the warm-up included, which the logged values, one
    per log interval, miss), as training wrote it (train_facts.json's `lr`, entry i the rate of step i + 1, from
    the trainer's own schedule); None without it, or when it does not reproduce every logged value (a resume that
    changed the run's length)."""
    lr = np.asarray((facts or {}).get("lr") or [], dtype=float)
    if not lr.size:
        return None
    logged = steps.dropna(subset=["lr"])
    at = logged["step"].to_numpy(dtype=np.int64)
    if (at < 1).any() or (at > lr.size).any() or not np.allclose(lr[at - 1], logged["lr"], rtol=1e-6, atol=0):
        return None
    last = int(max(at.max() if at.size else 0, optimizer_steps or 0))
    curve = pd.DataFrame({"step": np.arange(1, min(last, lr.size) + 1)})
    curve["lr"] = lr[: len(curve)]
    curve.attrs["warmup"] = int(facts.get("warmup") or 0)
    return curve


def fold_table(inputs: ReportInputs) -> pd.DataFrame:
    """A walk-forward's figures per fold and over all folds (`fold` "all": the stitched predictions, the report's
    own figures), each on that fold's test rows with the report's book: the three named ICs, the headline IC's
    overlap-robust t, the ridge baseline (fitted per fold) and the oracle on the headline IC, and the backtest.
    Every IC against the target at the traded lag; each fold's net Sharpe with its standard error, 95% interval and
    its deflated Sharpe over the folds (trials: the folds compared, so the best fold is not read as skill; "all":
    the summary's `net_sharpe_dsr`, over the report's trials); its
    market beta and its alpha beyond it (a year's worth, with its t)."""
    df, fam = inputs.predictions, inputs.family
    lags = inputs.ic[fam]["lags"]
    periods = {f["fold"]: f for f in inputs.summary.get("folds") or []}
    everything = {"test_start": (periods.get(0) or {}).get("test_start"),
                  "test_end": (periods.get(len(periods) - 1) or {}).get("test_end")}
    rows = []
    for k, d in [*df.groupby("fold", sort=True), ("all", df)]:
        if k == "all":
            when, ics, book = everything, inputs.ic, inputs.backtest
        else:  # a fold's own rows: its last targets do not reach into the next fold (as in summary.json)
            d = d.assign(**{TRADED: ev.lagged_target(d, inputs.book["trade_delay"])})
            when = periods.get(int(k), {})
            ics = {f: ev.family_summary(d, f, lags, target_col=TRADED, zone=inputs.zone) for f in ev.IC_FAMILIES}
            book = bk.backtest(d, "prediction", **inputs.book)
        net, nan = book.stats["net"], float("nan")
        inf = net["sharpe_inference"]
        rows.append({
            "fold": str(k), **{key: when.get(key) for key in ("train_start", "train_end", "test_start", "test_end")},
            "test_rows": int(len(d)), "cross_sectional_ic": ics["cross_sectional"]["ic"],
            "cross_sectional_rank_ic": ics["cross_sectional"]["rank_ic"], "daily_ic": ics["daily"]["ic"],
            "daily_rank_ic": ics["daily"]["rank_ic"], "pooled_ic": ics["pooled"]["ic"], "t_stat": ics[fam]["t_stat"],
            "ridge_ic": ev.family_summary(d, fam, lags, "ridge", TRADED)["ic"] if "ridge" in d else nan,
            "oracle_ic": ev.family_summary(d, fam, lags, "oracle", TRADED)["ic"] if "oracle" in d else nan,
            "net_sharpe": net["sharpe"], "net_sharpe_se": inf["se"], "net_sharpe_ci_low": inf["ci_low"],
            "net_sharpe_ci_high": inf["ci_high"], "net_sharpe_psr": inf["psr"],
            "net_sharpe_period": inf["sharpe_period"], "net_sharpe_se_period": inf["se_period"],
            "gross_sharpe": book.stats["gross"]["sharpe"], "net_total_return": net["total_return"],
            "max_drawdown": net["max_drawdown"], "turnover": net["turnover"], "break_even_bps": bk.break_even_bps(book),
            "market_beta": book.stats["market"]["beta"], "market_alpha": book.stats["market"]["alpha"],
            "market_alpha_t": book.stats["market"]["alpha_t"],
        })
    table = pd.DataFrame(rows)
    per = table[table["fold"] != "all"]
    var = bk.trial_variance(per["net_sharpe_period"], per["net_sharpe_se_period"])
    # a fold is one of the folds compared; "all" is the report's own book, deflated over the report's trials
    n, v = inputs.trials.get("n_trials") or 1, inputs.trials.get("trial_variance") or 0.0
    table["net_sharpe_dsr"] = [bk.deflated_sharpe(r.net_sharpe_period, r.net_sharpe_se_period,
                                                  *((n, v) if r.fold == "all" else (len(per), var)))["dsr"]
                               for r in table.itertuples()]
    return table
