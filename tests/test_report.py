"""report.py on synthetic run folders with a planted correlation, and runs_table over several folders."""

import json
import math
import re
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from tradelib import runs as rn
from tradelib.report import backtest as bk
from tradelib.report import figures as rf
from tradelib.report import inputs as ri
from tradelib.report import metrics as ev
from tradelib.report import report as rp
from tradelib.report import words as rw

DEFAULTS = ri.ReportSettings.of()  # Config's report settings

RHO = 0.3  # planted corr(prediction, target)


def make_run(run_dir, seed=0, rho=RHO, summary_extra=None, n_sym=4, n_days=3, lag=1, freq="5min", n_bars=None):
    """A run folder as train.py writes it: summary.json, metrics.jsonl, predictions.parquet (5-minute bars).
    The prediction is planted at corr `rho` with the target `lag` bars later (the return a book trading with
    trade_delay = lag earns), and nothing else: its lag-0 IC is noise."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    ts = pd.date_range("2024-05-01", periods=n_bars or 288 * n_days, freq=freq, tz="UTC")
    n = len(ts) * n_sym
    z = rng.standard_normal((n_sym, len(ts)))
    ahead = np.concatenate([z[:, lag:], rng.standard_normal((n_sym, lag))], axis=1).ravel()  # the target lag later
    z = z.ravel()
    feature = ahead + rng.standard_normal(n)  # the ridge baseline's one feature: corr 1/sqrt(2) with it
    pd.DataFrame(
        {
            "row": np.arange(n),
            "timestamp": np.tile(ts, n_sym),
            "symbol": np.repeat([f"S{i}" for i in range(n_sym)], len(ts)),
            "prediction": rho * ahead + math.sqrt(1 - rho**2) * rng.standard_normal(n),
            "target": z,
            "fwd_return": 1e-3 * z,
            "ret_next": 1e-3 * z,
            "last_return": 1e-3 * rng.standard_normal(n),
            "oracle": 0.8 * ahead + 0.6 * rng.standard_normal(n),
        }
    ).to_parquet(run_dir / "predictions.parquet", index=False)
    lines = [
        {"kind": "step", "step": s, "epoch": 0, "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 1.0,
         "samples_per_s": 5e4, "data_wait_share": 0.02, "skipped_steps": 0}
        for s in range(1, 6)
    ]  # fmt: skip
    lines.append({"kind": "epoch", "epoch": 0, "train_loss": 0.5, "val_loss": 0.7, "epoch_time_s": 4.0})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    summary = {
        "run_id": run_dir.name, "config": {"batch_size": 1024, "target_delay": 1}, "device": "cuda",
        "device_name": "NVIDIA H200",
        "loader": "device", "model": "lstm", "batch_size": 1024, "grad_accum_steps": 1, "samples_per_s": 5e4,
        "it_per_s": 48.8, "batches_per_epoch": 100, "data_wait_share": 0.02, "peak_mem_bytes": 2_500_000_000,
        "gpu_util": None, "mfu": 0.12, "epoch_time_s": 4.0, "cross_sectional_ic": 0.3, "daily_ic": 0.3,
        "pooled_ic": 0.3, "finished": "2024-06-01T10:00:00",
    }  # fmt: skip
    extra = summary_extra or {}
    summary.update({**extra, "config": {**summary["config"], **extra.get("config", {})}})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    features = {"X_train": feature[:, None], "y_train": ahead, "X_test": feature[:, None]}
    return run_dir, features


def strict_json(path):
    """Parse as strict JSON: NaN/Infinity literals raise."""

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_build_report_writes_strict_json_with_planted_ic(tmp_path):
    run, feats = make_run(tmp_path / "run-a")
    (run / "report.html").write_text("the previous report")  # of another report.json: not left beside this one
    report = rp.build_report(run, settings=ri.ReportSettings.of(cost_bps=5.0), **feats)
    assert not (run / "report.html").exists()
    on_disk = strict_json(run / "report.json")
    assert on_disk["summary"] == report["summary"]
    for key in ["summary", "conventions", "ic", "ic_by_timestamp", "ic_by_day", "predictors", "per_symbol",
                "deciles", "backtest", "costs", "training"]:
        assert key in on_disk
    assert "compare" not in on_disk
    s = on_disk["summary"]
    assert s["ic_lag"] == 1  # every IC against the return the book earns, one bar after the signal
    for name in ("daily_ic", "pooled_ic"):
        assert s[name] == pytest.approx(RHO, abs=0.05), name
        assert s[name + "_lag0"] == pytest.approx(0.0, abs=0.05), name  # before the trade delay: nothing planted
    decay = {r["lag"]: r["ic"] for r in on_disk["ic_decay"]}
    assert list(decay) == list(range(11)) and decay[1] == s["pooled_ic"] and abs(decay[0]) < 0.05
    assert 0.15 < s["cross_sectional_ic"] < RHO  # a correlation over 4 symbols is biased towards 0
    # 4 symbols: auto trades each one's sign (min_symbols_cs 5), so the IC of that book leads, not a ranking's
    assert s["position_mode"] == "sign" and s["headline_ic"] == "pooled"
    assert "directional (sign) book over 4 symbol(s)" in s["headline_reason"]
    assert s["cross_sectional_periods"] == 288 * 3 - 1 and s["daily_periods"] == 3 and s["bar_seconds"] == 300.0
    assert s["ic_t_stat"] == s["pooled_t_stat"] > 2 and s["ic_t_method"].startswith("iid")  # horizon 1
    assert s["oracle_daily_ic"] == pytest.approx(0.8, abs=0.05) and s["oracle_cross_sectional_ic"] > 0.6
    assert s["directional_accuracy"] > 0.55 and s["net_sharpe"] is not None
    assert s["samples_per_s"] == 5e4 and s["peak_mem_gb"] == pytest.approx(2.5)
    assert s["device"] == "cuda" and s["gpu_util"] is None  # null in summary.json stays null
    assert s["baseline_ic"]["zero"] is None  # undefined IC -> null, not NaN
    assert [p["predictor"] for p in on_disk["predictors"]] == ["model", "zero", "momentum", "ridge", "oracle"]
    ridge = on_disk["predictors"][3]
    assert ridge["daily_ic"] == pytest.approx(math.sqrt(0.5), abs=0.05)
    assert s["baseline_ic"]["ridge"] == ridge["pooled_ic"]  # the baselines in the headline's IC
    assert len(on_disk["deciles"]) == 10 and on_disk["per_symbol"][-1]["symbol"] == "ALL"
    assert on_disk["backtest"]["net"]["sharpe"] <= on_disk["backtest"]["gross"]["sharpe"]
    assert on_disk["training"]["best_val_loss"] == 0.7
    costs = on_disk["costs"]["net_sharpe_by_cost"]
    assert [c["cost_bps"] for c in costs] == [0, 1, 2, 5, 10, 20]
    assert costs[3]["net_sharpe"] == pytest.approx(s["net_sharpe"])


def test_report_states_its_conventions(tmp_path):
    """Which IC, which t, which annualisation, the delay, the cost, the positions and the split dates."""
    run, _ = make_run(tmp_path / "run-a", summary_extra={"config": {"horizon": 3, "train_frac": 0.7,
                                                                     "val_frac": 0.15}})
    settings = ri.ReportSettings.of(cost_bps=2.0, position_mode="neutral", trade_delay=2)
    report = rp.build_report(run, settings=settings)
    c = report["conventions"]
    assert c["headline_ic"] == "cross_sectional" and c["horizon_bars"] == 3
    assert c["t_stat"].startswith("Hansen-Hodrick HAC, 2 lags")  # a 3-bar target overlaps 2 timestamps
    assert c["annualisation"]["method"] == "continuous"  # 5-minute bars on every day of the week
    assert c["annualisation"]["periods_per_year"] == pytest.approx(365.25 * 288)
    assert (c["trade_delay_bars"], c["cost_bps"], c["position_mode"]) == (2, 2.0, "neutral")
    assert c["splits"]["method"] == "fractions" and c["splits"]["test_start"].startswith("2024-05-01")
    assert report["summary"]["abs_net_exposure"] < 1e-9  # the neutral book
    md = rw.summary_markdown(report) + "\n" + rw.conventions_markdown(report)
    for text in ("cross-sectional IC (per timestamp)", "Why this IC", "Hansen-Hodrick HAC, 2 lags",
                 "traded 2 bar(s) after", "break-even cost", "Headline IC =", "Splits by fractions", "neutral",
                 "test 2024-05-01 00:00 to"):
        assert text in md, text


def test_periods_per_year_overrides_the_calendar(tmp_path):
    run, _ = make_run(tmp_path / "run-a")
    auto = rp.build_report(run, settings=DEFAULTS)["summary"]
    given = rp.build_report(run, settings=ri.ReportSettings.of(periods_per_year=252.0))
    assert given["summary"]["periods_per_year"] == 252.0
    assert given["conventions"]["annualisation"]["method"] == "given"
    ratio = math.sqrt(252.0 / (365.25 * 288))
    assert given["summary"]["net_sharpe"] == pytest.approx(auto["net_sharpe"] * ratio)
    assert given["summary"]["cross_sectional_ic"] == auto["cross_sectional_ic"]  # ICs do not annualise


def test_annualisation_is_the_test_spans_own_and_says_so(tmp_path):
    """Holes in the training years (a calendar of 234 periods over all splits) do not move the test span's
    annualisation; report.json says 'measured' or 'given' as it was."""
    from types import SimpleNamespace

    run, feats = make_run(tmp_path / "daily", freq="B", n_bars=300, n_sym=6)
    holes = {"periods_per_year": 234.2, "method": "sessions", "description": "exchange calendar (holes)",
             "bar_seconds": 86_400.0, "n_sessions": 2000, "span_days": 3100.0, "sessions_per_year": 234.2,
             "bars_per_session": 1.0}
    fs = SimpleNamespace(meta={"calendar": holes})
    rep = rp.build_report(run, settings=DEFAULTS, fs=fs, **feats)
    ann = rep["conventions"]["annualisation"]
    assert ann["source"] == "measured on the test span" and 255 < ann["periods_per_year"] < 265  # 5 days a week
    assert rep["backtest"]["annualisation"].startswith("measured on the test span")
    assert "given" not in rep["backtest"]["annualisation"] and rep["backtest"]["annualisation_method"] == "sessions"
    given = rp.build_report(run, settings=ri.ReportSettings.of(periods_per_year=252.0), fs=fs, **feats)
    assert given["backtest"]["annualisation"].startswith("given") and given["summary"]["periods_per_year"] == 252.0
    assert rep["summary"]["bar"] == "1 day" and "6 symbols of 1 day bars" in rw.summary_markdown(rep)
    assert rep["summary"]["position_mode"] == "neutral" and "auto: 6 symbols" in rep["summary"]["position_mode_reason"]


def test_the_per_day_ic_and_the_calendar_read_days_on_the_runs_market_clock(tmp_path):
    """Globex bars written in UTC (18:00 to 17:00 New York), a run with market_timezone New York: the per-day IC's
    days are its sessions, as the build counts them (105: New York time less 18 h, by pandas); on the UTC clock
    the summer sessions' first hour (22:00-23:00 UTC) was a day of its own (126). A run from before the time
    zone settings reads as UTC."""
    from .test_sessions import globex_frame

    stamps = pd.DatetimeIndex(globex_frame()["timestamp"].unique())
    ny = stamps.tz_convert("America/New_York").tz_localize(None)
    sessions = (ny - pd.Timedelta(hours=18)).normalize()
    reports = {}
    for name, config in [("ny", {"market_timezone": "America/New_York"}), ("before", {})]:
        run, _ = make_run(tmp_path / name, n_bars=len(stamps), summary_extra={"config": config})
        df = pd.read_parquet(run / "predictions.parquet")
        df.assign(timestamp=np.tile(stamps, 4)).to_parquet(run / "predictions.parquet", index=False)
        reports[name] = ri.load_inputs(run, DEFAULTS, headline_only=True)
    ny_run, before = reports["ny"], reports["before"]
    assert sessions.nunique() == 105 and len(ny_run.ic_day) == ny_run.ic["daily"]["n_periods"] == 105
    assert list(ny_run.ic_day["period"].dt.tz_localize(None)) == sorted(sessions.unique())
    assert ny_run.zone == "America/New_York" and before.zone == "UTC" and len(before.ic_day) == 126
    assert ny_run.book["annualised"]["n_sessions"] == 105 and before.book["annualised"]["n_sessions"] == 126
    # summary.json's per-day IC (named_ics, what training writes) reads the same days as the report's
    named = {zone: ev.named_ics(ny_run.predictions, 1, zone=zone)["daily_ic"] for zone in ("America/New_York", "UTC")}
    assert named["America/New_York"] == pytest.approx(ny_run.ic["daily"]["ic"], rel=1e-12)
    assert named["UTC"] == pytest.approx(before.ic["daily"]["ic"], rel=1e-12) != named["America/New_York"]


def test_inputs_that_hold_one_value_over_the_training_rows_are_warned_about(tmp_path):
    """Daily bars: tod_sin and tod_cos are one value on every row, scaled to columns of zeros the model cannot use;
    nothing said them. The report warns, naming them; a feature that varies on the training rows alone is not
    named, nor one that is constant only outside them."""
    from types import SimpleNamespace

    run, feats = make_run(tmp_path / "daily", freq="B", n_bars=300, n_sym=6)
    rng = np.random.default_rng(0)
    split = np.repeat(np.int8([0, 1, 2]), [800, 400, 600])
    X = rng.normal(size=(len(split), 4)).astype(np.float32)
    X[:, 1:3] = 0.0  # what scaling makes of a constant column
    X[split != 0, 1] = 0.7  # constant on the training rows: named all the same
    X[split != 0, 3] = 0.0  # varies on the training rows: not named
    fs = SimpleNamespace(meta={}, X=X, split=split, feature_names=["ret_1", "tod_sin", "tod_cos", "body"])
    rep = rp.build_report(run, settings=DEFAULTS, fs=fs, **feats)
    said = [w for w in rep["summary"]["warnings"] if "one value" in w]
    assert said == ["2 of the model's inputs (tod_sin, tod_cos) hold one value over the training rows: scaled to 0 "
                    "throughout, they tell the model nothing (the time-of-day features on daily bars, every bar at "
                    "the same time)"]
    assert f"**Warning**: {said[0]}." in rw.summary_markdown(rep)
    quiet = rp.build_report(run, settings=DEFAULTS, fs=SimpleNamespace(meta={}, X=X[:, [0, 3]], split=split,
                                                                        feature_names=["ret_1", "body"]), **feats)
    assert not [w for w in quiet["summary"]["warnings"] if "one value" in w]


def test_warnings_for_a_short_span_few_symbols_and_a_warm_up_as_long_as_the_run(tmp_path):
    run, _ = make_run(tmp_path / "short", freq="B", n_bars=40, n_sym=3,
                      summary_extra={"config": {"warmup_steps": 50}, "optimizer_steps": 21})
    rep = rp.build_report(run, settings=DEFAULTS)
    warnings = " | ".join(rep["warnings"])
    assert "warmup_steps 50 reaches the run's 21 optimizer steps" in warnings
    assert "holds 40 periods (< 60)" in warnings
    # auto, below min_symbols_cs: a sign book, led by the pooled IC (one bar a day): no ranking to warn about
    assert rep["summary"]["position_mode"] == "sign" and rep["summary"]["headline_ic"] == "pooled"
    assert "symbols at a typical timestamp" not in warnings
    assert rw.summary_markdown(rep).count("**Warning**") == 2
    neutral = rp.build_report(run, settings=ri.ReportSettings.of(position_mode="neutral"))
    assert neutral["summary"]["headline_ic"] == "cross_sectional"
    assert "the neutral book and the cross-sectional IC rest on 3 symbols at a typical timestamp (< 5)" in (
        " | ".join(neutral["warnings"]))
    run2, _ = make_run(tmp_path / "long", freq="B", n_bars=300, n_sym=6,
                       summary_extra={"config": {"warmup_steps": 5}, "optimizer_steps": 500})
    assert rp.build_report(run2, settings=DEFAULTS)["warnings"] == []


def test_a_model_whose_predictions_are_one_value_is_warned_about(tmp_path):
    """A model that outputs a constant (features clipped to nothing, a collapsed network) has every IC undefined;
    the report said nothing of why (warnings []), and named_ics gave NaN without a reason."""
    run, _ = make_run(tmp_path / "flat", freq="B", n_bars=300, n_sym=6,
                      summary_extra={"config": {"warmup_steps": 5}, "optimizer_steps": 500})
    df = pd.read_parquet(run / "predictions.parquet")
    df.assign(prediction=np.float32(0.25)).to_parquet(run / "predictions.parquet")
    rep = rp.build_report(run, settings=DEFAULTS)
    assert [w for w in rep["warnings"] if f"model's {len(df):,} test predictions are one value" in w]
    assert ev.named_ics(df.assign(prediction=0.25), 1)["constant_predictions"] is True
    assert ev.named_ics(df, 1)["constant_predictions"] is False
    assert ev.constant_predictions(np.array([np.nan, 1.0, np.inf, 1.0])) and ev.constant_predictions(np.array([]))
    assert not ev.constant_predictions(np.array([1.0, np.nan, 1.0 + 1e-12]))


def events_run(run_dir, at: list[int]):
    """make_run's 4 symbols with predictions of noise, but at the timestamps `at`: 5 sd each, and the traded
    returns a bar later 50 sd in their direction."""
    run, _ = make_run(run_dir, rho=0.0)
    df = pd.read_parquet(run / "predictions.parquet")
    times = np.sort(df["timestamp"].unique())
    for i in at:
        signal, traded = (df["timestamp"] == times[i]).to_numpy(), (df["timestamp"] == times[i + 1]).to_numpy()
        side = np.sign(df.loc[signal, "prediction"].to_numpy())
        df.loc[signal, "prediction"], df.loc[traded, "target"] = 5 * side, 50 * side  # rows in symbol order
    df.to_parquet(run / "predictions.parquet", index=False)
    return run, times


def test_an_ic_carried_by_a_few_timestamps_is_said_to_rest_on_them(tmp_path):
    """The 4-symbol sign book is led by the pooled IC, plotted as each timestamp's share (its mean so far ends
    at the pooled IC). Carried by 9 timestamps (1% of 863), the IC is significant and the report says it rests
    on a few periods, naming the one that carried it most; carried by one it is not significant, and only the
    figure without it is given; a signal spread over every timestamp (make_run's) keeps its figure without its
    best and worst 1%."""
    at = list(range(100, 820, 80))
    run, times = events_run(tmp_path / "nine", at)
    inputs = ri.load_inputs(run, DEFAULTS)
    report = rp.build_report(run, inputs=inputs)
    s, md = report["summary"], rw.summary_markdown(report)
    assert s["headline_ic"] == "pooled" and s["pooled_ic"] > 0.3 and s["ic_t_stat"] > 2
    assert inputs.ic_series["ic"].mean() == pytest.approx(s["pooled_ic"], rel=1e-9)
    figs = rf.make_figures(inputs)
    low = figs["ic"].axes[1]  # the mean so far
    assert low.lines[0].get_ydata()[-1] == pytest.approx(s["pooled_ic"], rel=1e-9)
    close(figs)
    rest = s["ic_without_best"]
    assert (rest["periods"], rest["of"]) == (9, 863)
    assert rest["best"] in {pd.Timestamp(times[i]).isoformat() for i in at}
    assert abs(rest["ic"]) < 0.05  # recomputed over the other rows
    assert f"the largest shares in its direction, first the signal at {rest['best'][:16].replace('T', ' ')})" in md
    assert "significant, but it rests on a few periods" in md
    run, _ = events_run(tmp_path / "one", at=[100])
    report = rp.build_report(run, settings=DEFAULTS)
    s, md = report["summary"], rw.summary_markdown(report)
    assert s["pooled_ic"] > 0.1 and s["ic_t_stat"] < 2 and abs(s["ic_without_best"]["ic"]) < 0.05
    assert "Without the 9 of its 863 periods" in md and "rests on a few periods" not in md
    run, _ = make_run(tmp_path / "spread")
    s = rp.build_report(run, settings=DEFAULTS)["summary"]
    assert s["ic_without_best"]["ic"] == pytest.approx(s["pooled_ic"], rel=0.1)


def test_the_lag_0_ic_is_called_untradable_only_when_it_exceeds_the_traded_one(tmp_path):
    """A signal planted at the traded lag lasts past the delay; one planted at lag 0 is one no book a bar later
    earns; one planted against the prediction at lag 0 (an IC of -0.3 there, noise at lag 1) does neither."""
    for lag, said in ((1, "the signal lasts past the trade delay."), (0, "no book trading 1 bar(s) later earns that.")):
        run, _ = make_run(tmp_path / f"lag{lag}", lag=lag)
        md = rw.summary_markdown(rp.build_report(run, settings=DEFAULTS))
        assert said in md and md.count("earns that") + md.count("lasts past") == 1
    run, _ = make_run(tmp_path / "inverted", lag=0, rho=-RHO)  # significant against the prediction at lag 0, noise
    md = rw.summary_markdown(rp.build_report(run, settings=DEFAULTS))  # at lag 1: neither lasts nor is earned
    assert "Before the trade delay" in md and "earns that" not in md and "lasts past" not in md


def test_a_book_trading_another_delay_than_the_model_learned_is_warned(tmp_path):
    """A run that learned the return from t (target_delay 0, and every run from before the setting), reported
    for a book trading a bar later: the headline measures a target the model was not trained for."""
    for learned, config in ((0, {"target_delay": 0}), (0, {"target_delay": None}), (1, {})):
        run, _ = make_run(tmp_path / f"d{learned}-{config.get('target_delay', 1)}", summary_extra={"config": config})
        if config.get("target_delay", 1) is None:  # a summary written before the setting
            s = json.loads((run / "summary.json").read_text())
            del s["config"]["target_delay"]
            (run / "summary.json").write_text(json.dumps(s))
        rep = rp.build_report(run, settings=DEFAULTS)
        said = [w for w in rep["warnings"] if "target_delay" in w]
        if learned == 1:
            assert said == [] and "learned target: the return from t+1 to t+2" in rw.summary_markdown(rep)
            assert "bar(s) after its signal (target_delay), the book trades it 0" in " ".join(
                rp.build_report(run, settings=ri.ReportSettings.of(trade_delay=0))["warnings"])
        else:
            assert said == ["the model learned the return starting 0 bar(s) after its signal (target_delay), the "
                            "book trades it 1 bar(s) after (trade_delay): the headline IC and the book measure a "
                            "target it was not trained for; train with target_delay 1, or report with trade_delay 0"]
            again = rp.build_report(run, settings=ri.ReportSettings.of(trade_delay=0))["warnings"]
            assert not [w for w in again if "target_delay" in w]
            assert "learned target: the return from t+0 to t+1" in rw.summary_markdown(rep)


def test_a_neutral_book_long_the_names_that_move_with_the_market_is_said_to_carry_beta(tmp_path):
    """Six names whose returns load 0.4 to 1.6 on one market factor: a neutral book whose predictions lean to the
    high-loading names has net exposure 0 and beta well above 0 (t above 3), said in a warning with its interval;
    the same market with predictions blind to the loadings carries none (its interval holds 0) and is not warned
    about."""
    rng = np.random.default_rng(11)
    loading = np.linspace(0.4, 1.6, 6)
    said = {}
    for lean in (1.0, 0.0):
        run, _ = make_run(tmp_path / f"lean{lean:g}", n_sym=6)
        df = pd.read_parquet(run / "predictions.parquet")
        market = np.tile(rng.standard_normal(df["timestamp"].nunique()), 6)
        b = np.repeat(loading, len(df) // 6)
        df["ret_next"] = 1e-3 * (b * market + 0.5 * rng.standard_normal(len(df)))
        df["prediction"] = lean * (b - 1.0) + 0.3 * rng.standard_normal(len(df))
        df.to_parquet(run / "predictions.parquet", index=False)
        rep = rp.build_report(run, settings=ri.ReportSettings.of(position_mode="neutral"))
        s = rep["summary"]
        assert abs(s["net_exposure"]) < 1e-12
        said[lean] = [w for w in rep["warnings"] if "carries market beta" in w]
        if lean:
            low, high = s["market_beta_ci"]
            t = rep["backtest"]["market"]["beta_t"]
            assert low > 0.1 and t > 3 and said[lean] == [
                "the market-neutral book (net exposure +0.00) carries market beta "  # never '-0.00'
                f"{s['market_beta']:+.2f} (95% {low:+.2f} to {high:+.2f}, t {t:.1f}): it is long names that move "
                f"more with the market than those it is short, so part of what it earns or loses is the market's; "
                f"its alpha beyond the market is what it earns of its own"]
        else:
            assert s["market_beta_ci"][0] < 0 < s["market_beta_ci"][1] and said[lean] == []


def test_a_net_sharpe_that_costs_drive_below_minus_10_is_not_flagged(tmp_path):
    """A book that trades every hourly bar at 20 bps loses the cost each bar, nearly the same each time, so its
    net Sharpe falls far below -10 and its arithmetic alpha below -1000% a year beside a gross Sharpe of a few: real
    figures of what the costs do, no look-ahead or bad print, so neither is flagged (nor marked implausible in the
    table). A gross Sharpe beyond 10 still is, and the net one with it (the test below)."""
    run, _ = make_run(tmp_path / "hourly", rho=0.0, seed=5, freq="1h", n_bars=24 * 120)
    rep = rp.build_report(run, settings=ri.ReportSettings.of(cost_bps=20.0))
    s = rep["summary"]
    gross = s["gross_sharpe"]
    net = s["net_sharpe"]
    pnl = pd.read_parquet(run / "predictions.parquet")  # by hand: a sign book over the 4 symbols, traded a bar later
    w = np.sign(pnl.pivot(index="timestamp", columns="symbol", values="prediction")).shift(1).fillna(0.0) / 4
    r = np.expm1(pnl.pivot(index="timestamp", columns="symbol", values="ret_next"))
    cost = 20e-4 * w.diff().fillna(w).abs().sum(axis=1)  # the first position a trade from 0
    hand = ((w * r).sum(axis=1) - cost).agg(["mean", "std"])
    assert net == pytest.approx(hand["mean"] / hand["std"] * math.sqrt(s["periods_per_year"]))
    assert abs(gross) < 10 and net < -10 and s["market_alpha"] < -10  # the costs' doing: -17 a year is 20 bps an hour
    assert s["flags"] == {}
    assert "flagged" not in rw.summary_markdown(rep)
    from tradelib.report import tables

    assert not tables.backtest_table(rep["backtest"], s["flags"]).set_index("figure").loc[
        "Sharpe", "net of costs"].endswith("(implausible)")


def test_a_buy_and_hold_figure_no_market_makes_is_flagged_as_the_books_are(tmp_path):
    """The default synthetic run's buy & hold read Sharpe 16.4 over a few days, unflagged beside the book's flagged
    ones: it is flagged the same way, without the look-ahead (buy & hold trades no signal) or the planted signal."""
    from tradelib.report import tables

    run, _ = make_run(tmp_path / "drift", summary_extra={"config": {"data_path": "synthetic"}})
    frame = pd.read_parquet(run / "predictions.parquet")
    frame[["ret_next", "fwd_return"]] += 3e-4  # every symbol drifts up: a market rising 9% a day
    frame.to_parquet(run / "predictions.parquet", index=False)
    rep = rp.build_report(run, settings=ri.ReportSettings.of(cost_bps=5.0))
    s = rep["summary"]
    hold = rep["backtest"]["buy_hold"]
    r = np.expm1(frame.pivot(index="timestamp", columns="symbol", values="ret_next")).mean(axis=1)
    r.iloc[0] -= 5e-4  # buy & hold pays the cost once, at entry
    assert s["buy_hold_sharpe"] == pytest.approx(r.mean() / r.std() * math.sqrt(s["periods_per_year"]), rel=1e-3)
    assert s["buy_hold_sharpe"] > 10 and hold["annual_return"] > 10
    for key in ("buy_hold_sharpe", "buy_hold_annual_return"):
        assert key in s["flags"], key
        assert "look-ahead" not in s["flags"][key] and "planted" not in s["flags"][key]
    assert s["flags"]["buy_hold_sharpe"].startswith(f"Sharpe {s['buy_hold_sharpe']:.3g} is beyond +-10: no market")
    low, high = s["buy_hold_sharpe_ci"]
    assert (f"buy & hold {s['buy_hold_sharpe']:.2f} (95% {low:.2f} to {high:.2f}) (flagged: Sharpe "
            in rw.summary_markdown(rep))
    shown = tables.backtest_table(rep["backtest"], s["flags"]).set_index("figure")["buy & hold"]
    assert shown["Sharpe"] == f"{s['buy_hold_sharpe']:.2f} (implausible)"
    assert shown["annual return"].endswith("(implausible)")


def test_implausible_figures_are_flagged_and_survival_needs_the_whole_interval(tmp_path):
    """Three days of 5-minute bars with a planted signal annualise to an impossible Sharpe: flagged with a reason;
    'survives costs' is said only when the break-even interval lies above the cost."""
    run, _ = make_run(tmp_path / "run-a")
    rep = rp.build_report(run, settings=ri.ReportSettings.of(cost_bps=5.0))
    s = rep["summary"]
    assert s["gross_sharpe"] > 10 and "gross_sharpe" in s["flags"] and "beyond +-10" in s["flags"]["gross_sharpe"]
    assert "synthetic market" not in s["flags"]["gross_sharpe"]
    assert "flagged: Sharpe" in rw.summary_markdown(rep)
    for data_path in ("synthetic", " Synthetic", ""):  # every spelling Config reads as the embedded market
        planted, _ = make_run(tmp_path / f"run-s{len(data_path)}", summary_extra={"config": {"data_path": data_path}})
        flag = rp.build_report(planted, settings=ri.ReportSettings.of(cost_bps=5.0))["summary"]["flags"]["gross_sharpe"]
        assert "beyond +-10" in flag and "embedded synthetic market" in flag, data_path  # the reason: the data is ours
        flags = rp.build_report(planted, settings=ri.ReportSettings.of(cost_bps=50.0))["summary"]["flags"]
        assert "embedded synthetic" not in flags["net_sharpe"]  # costs lost it: no strong signal explains a loss
        assert rw.run_configuration({"config": {"data_path": data_path}}, {})[0][1].startswith("synthetic market")
    from tradelib.report import tables

    shown = tables.backtest_table(rep["backtest"], s["flags"]).set_index("figure")
    assert shown.loc["Sharpe", "gross (before costs)"].endswith("(implausible)")
    for book, key in (("net of costs", "net_sharpe_ci"), ("gross (before costs)", "gross_sharpe_ci"),
                      ("buy & hold", "buy_hold_sharpe_ci")):  # every Sharpe with its interval, as the summary has it
        assert shown.loc["Sharpe 95% interval", book] == f"{s[key][0]:,.2f} to {s[key][1]:,.2f}"
    low, high = s["net_annual_return_ci"]  # and the annual return with its own
    assert shown.loc["annual return 95% interval", "net of costs"] == f"{low:+.1%} to {high:+.1%}"
    md = rw.summary_markdown(rep)
    assert f"net annual return {s['net_annual_return']:.1%} (95% {low:.1%} to {high:.1%})" in md
    a_low, a_high = s["market_alpha_ci"]  # what the book earns beyond its market exposure, with its error bars
    b_low, b_high = s["market_beta_ci"]
    assert (f"market beta {s['market_beta']:+.2f} (95% {b_low:+.2f} to {b_high:+.2f}) and alpha beyond it "
            f"{s['market_alpha']:+.1%} a year (95% {a_low:+.1%} to {a_high:+.1%}, t {s['market_alpha_t']:.2f})") in md
    assert ("market_alpha" in s["flags"]) is (abs(s["market_alpha"]) > 10)  # an arithmetic year beyond +-1000%
    assert ("(flagged: alpha" in md) is ("market_alpha" in s["flags"])
    assert f"net Sharpe **{s['net_sharpe']:.2f}** (SE " in md and "** (flagged" not in md  # the interval, then why
    assert f"gross {s['gross_sharpe']:.2f} (95% {s['gross_sharpe_ci'][0]:.2f} to" in md
    for key in ("net_sharpe_ci", "gross_sharpe_ci", "buy_hold_sharpe_ci"):
        assert f"95% {s[key][0]:.2f} to {s[key][1]:.2f}" in md, key
    for row in rep["costs"]["net_sharpe_by_cost"]:
        assert f"95% {row['net_sharpe_ci_low']:.2f} to {row['net_sharpe_ci_high']:.2f}" in md
    costs = tables.costs_table(pd.DataFrame(rep["costs"]["net_sharpe_by_cost"]))
    assert costs["95% interval"].str.contains(" to ").all()
    row = rep["costs"]["net_sharpe_by_cost"][3]  # the report's 5 bps: the summary's annual return and interval
    assert [row["net_annual_return_ci_low"], row["net_annual_return_ci_high"]] == s["net_annual_return_ci"]
    assert costs["its 95% interval"][3] == f"{low:+.1%} to {high:+.1%}"
    # the same net total return in both tables, to the same digit (the costs table read -7.21%, the backtest -7.2%)
    net_total = f"{row['net_total_return']:+.1%}"
    assert costs["net total return"][3] == shown.loc["total return", "net of costs"] == net_total
    assert shown.loc["Sharpe", "buy & hold"].endswith("(implausible)") is (abs(s["buy_hold_sharpe"]) > 10)
    low, high = s["break_even_ci"]
    assert s["survives_costs"] is (True if low > 5.0 else False if high < 5.0 else None)
    noise, _ = make_run(tmp_path / "noise", rho=0.0, seed=3, freq="B", n_bars=300, n_sym=6)
    cheap = ri.ReportSettings.of(cost_bps=0.5)
    quiet = rp.build_report(noise, settings=cheap)["summary"]
    assert quiet["survives_costs"] is not True and quiet["flags"] == {}
    if quiet["survives_costs"] is None:
        assert "cannot tell" in rw.summary_markdown(rp.build_report(noise, settings=cheap))


def test_the_deflated_sharpe_counts_the_sweep_the_run_belongs_to(tmp_path):
    run, _ = make_run(tmp_path / "sweep-x" / "run-b")
    alone = ri.load_inputs(run, DEFAULTS).trials
    assert alone == {**alone, "predictors": 2, "sweep_runs": 1, "n_trials": 2}  # model and momentum trade
    (tmp_path / "sweep-x" / "sweep.json").write_text(json.dumps({"runs": {"run-a": {}, "run-b": {}, "run-c": {}}}))
    inputs = ri.load_inputs(run, DEFAULTS)
    assert inputs.trials["sweep_runs"] == 3 and inputs.trials["n_trials"] == 6
    s = rp.summary_block(inputs)
    assert s["dsr_trials"] == 6 and s["net_sharpe_dsr"] <= s["net_sharpe_psr"]


def test_the_headline_of_a_sweeps_run_is_significant_only_after_allowing_for_the_sweeps_runs(tmp_path):
    """A pooled IC of t 2.4 is significant as one test, and the signal lasts past the delay; as one of a sweep's 4
    runs (the best of which a reader picks) its |t| deflated over them, Phi(2.4 - E[max z of 4]) = 0.91, is not.
    On a random walk the best of a sweep of 4 seeds read 'significant' and 'lasts past the trade delay' (t 2.56)."""
    run, _ = make_run(tmp_path / "sweep-x" / "run-b", rho=0.05)
    alone = rp.build_report(run, settings=DEFAULTS)
    s = alone["summary"]
    assert 2 < s["ic_t_stat"] < 2.8 and s["sweep_runs"] == 1
    assert s["ic_t_deflated"] == pytest.approx(NormalDist().cdf(s["ic_t_stat"]))
    md = rw.summary_markdown(alone)
    assert "significant (|t| >= 2))" in md and "the signal lasts past the trade delay" in md
    (tmp_path / "sweep-x" / "sweep.json").write_text(json.dumps({"runs": {f"run-{c}": {} for c in "abcd"}}))
    swept = rp.build_report(run, settings=DEFAULTS)
    s = swept["summary"]
    assert s["sweep_runs"] == 4 and s["ic_t_deflated"] == pytest.approx(bk.deflated_t(s["ic_t_stat"], 4))
    assert s["ic_t_deflated"] < 0.975
    md = rw.summary_markdown(swept)
    assert "|t| >= 2, but not significant once the 4 runs of its sweep are allowed for (deflated t 0.91" in md
    assert "significant (|t| >= 2)" not in md and "lasts past the trade delay" not in md
    strong = swept | {"summary": s | {"ic_t_deflated": 0.99}}
    assert "significant (|t| >= 2; deflated over the 4 runs of its sweep 0.99 > 0.975)" in rw.summary_markdown(strong)


def test_the_walk_forwards_all_row_deflates_the_stitched_book_as_the_summary_does(tmp_path):
    """The fold table's `all` row is the report's own book: its deflated Sharpe is the summary's, over the report's
    trials, not the PSR (1 trial) under the deflated Sharpe's name (on a random walk's 3-fold run, 0.96 beside the
    summary's 0.54)."""
    run, _ = make_run(tmp_path / "run-a", rho=0.03)
    pred = pd.read_parquet(run / "predictions.parquet")
    pred["fold"] = pd.factorize(pred["timestamp"])[0] * 3 // pred["timestamp"].nunique()
    pred.to_parquet(run / "predictions.parquet", index=False)
    inputs = ri.load_inputs(run, ri.ReportSettings.of(cost_bps=0.0))
    s = rp.summary_block(inputs)
    assert inputs.trials["n_trials"] > 1 and 0.05 < s["net_sharpe_psr"] < 0.999
    every = inputs.folds.set_index("fold").loc["all"]
    assert every["net_sharpe_psr"] == pytest.approx(s["net_sharpe_psr"])
    assert every["net_sharpe_dsr"] == pytest.approx(s["net_sharpe_dsr"])
    assert every["net_sharpe_dsr"] < s["net_sharpe_psr"] - 0.01


def test_build_report_without_features_skips_ridge(tmp_path):
    run, _ = make_run(tmp_path / "run-a")
    report = rp.build_report(run, settings=DEFAULTS)
    assert "ridge" not in report["summary"]["baseline_ic"]
    assert "ridge" not in [p["predictor"] for p in report["predictors"]]


def test_compare_block_and_markdown(tmp_path):
    slow = {"samples_per_s": 1900.0, "loader": "dataloader"}
    base, _ = make_run(tmp_path / "baseline", seed=1, rho=0.1, summary_extra=slow)
    run, feats = make_run(tmp_path / "fast", seed=2)
    report = rp.build_report(run, compare_with=base, settings=DEFAULTS, **feats)
    cmp = strict_json(run / "report.json")["compare"]
    assert cmp["run_id"] == "baseline" and cmp["other"]["loader"] == "dataloader"
    sps = cmp["metrics"]["samples_per_s"]
    assert (sps["this"], sps["other"]) == (5e4, 1900.0)
    assert sps["ratio"] == pytest.approx(5e4 / 1900)
    for name in ("cross_sectional_ic", "daily_ic", "pooled_ic"):  # like with like: each against the same figure
        assert cmp["metrics"][name]["other"] == pytest.approx(0.1, abs=0.05)
        assert cmp["metrics"][name]["delta"] == pytest.approx(report["summary"][name] - cmp["metrics"][name]["other"])
    assert cmp["this"]["periods_per_year"] == cmp["other"]["periods_per_year"]  # annualised alike
    md = rw.summary_markdown(report)
    ci = {k: cmp["net_sharpe_ci"][k] for k in ("this", "other")}  # both runs' net Sharpe with error bars
    assert ci["this"] == report["summary"]["net_sharpe_ci"] and ci["other"][0] < ci["other"][1]
    assert all(f"95% {c[0]:.2f} to {c[1]:.2f}" in md for c in ci.values())
    beta, beta_ci = cmp["metrics"]["market_beta"], cmp["market_beta_ci"]  # and each book's beta with its own
    other_beta = rp.build_report(base, settings=DEFAULTS)["summary"]
    assert (beta["this"], beta_ci["this"]) == (report["summary"]["market_beta"], report["summary"]["market_beta_ci"])
    assert (beta["other"], beta_ci["other"]) == (other_beta["market_beta"], other_beta["market_beta_ci"])
    assert f"market beta {beta['other']:+.2f} (95% {beta_ci['other'][0]:+.2f} to" in md
    assert f"pooled IC (all test rows) {report['summary']['pooled_ic']:.3f}**" in md  # a 4-symbol sign book's
    assert "zero n/a" in md and ", ridge 0." in md and md.count("oracle 0.") == 1
    assert "| model |" not in md and "|---" not in md  # the predictor table: once, in its own section
    assert "baseline" in md and "(x26.3)" in md  # the speed-up 5e4 / 1900
    noisy = {**slow, "busy_note": "timed while 1.5 of 2 cores were busy elsewhere"}  # not comparable: no ratio
    busy, _ = make_run(tmp_path / "busy", seed=1, rho=0.1, summary_extra=noisy)
    md = rw.summary_markdown(rp.build_report(run, compare_with=busy, settings=DEFAULTS, **feats))
    assert "(not comparable: `busy` timed while other processes kept the machine busy)" in md and "x26" not in md
    sps = strict_json(run / "report.json")["compare"]["metrics"]["samples_per_s"]  # report.json gives none either
    assert (sps["this"], sps["other"], sps["delta"], sps["ratio"]) == (5e4, 1900.0, None, None)


def test_compare_with_a_run_whose_predictions_do_not_read_says_so(tmp_path):
    """The compared run's predictions.parquet crafted or damaged (no prediction column): its summary.json's figures
    stand in, as for a run without predictions, and the report says so with the reason, where it said nothing."""
    run, feats = make_run(tmp_path / "run", seed=0)
    other, _ = make_run(tmp_path / "other", seed=1)
    pd.read_parquet(other / "predictions.parquet").drop(columns="prediction").to_parquet(
        other / "predictions.parquet", index=False)
    report = rp.build_report(run, compare_with=other, settings=DEFAULTS, **feats)
    assert "predictions.parquet" in report["compare"]["unread"] and "prediction" in report["compare"]["unread"]
    md = rw.summary_markdown(report)
    assert "Its predictions were not read (" in md and "its figures are its summary.json's" in md
    whole, _ = make_run(tmp_path / "whole", seed=2)  # a run that reads: no such line
    assert "not read" not in rw.summary_markdown(rp.build_report(run, compare_with=whole, settings=DEFAULTS, **feats))


def test_compare_with_a_run_on_another_calendar_annualises_it_by_its_own(tmp_path):
    """5-minute bars both, a 24/7 market against a US session (weekdays, 78 bars): the other run's net Sharpe is
    the one its own report gives (its own periods a year), not re-annualised by this run's 105,192; a
    periods_per_year given to this run applies to both."""
    other, _ = make_run(tmp_path / "session", seed=1, n_days=35)
    preds = pd.read_parquet(other / "predictions.parquet")
    t = pd.to_datetime(preds["timestamp"], utc=True)
    minute = t.dt.hour * 60 + t.dt.minute
    preds[(t.dt.day_of_week < 5) & (minute >= 14 * 60 + 30) & (minute < 21 * 60)].to_parquet(
        other / "predictions.parquet", index=False)
    own = rp.build_report(other, settings=DEFAULTS)["summary"]
    assert own["periods_per_year"] == pytest.approx(365.25 * 5 / 7 * 78, rel=0.01)
    run, feats = make_run(tmp_path / "crypto", seed=2)
    cmp = rp.build_report(run, compare_with=other, settings=DEFAULTS, **feats)["compare"]
    assert cmp["this"]["periods_per_year"] == pytest.approx(365.25 * 288)
    assert cmp["other"]["periods_per_year"] == pytest.approx(own["periods_per_year"])
    assert cmp["metrics"]["net_sharpe"]["other"] == pytest.approx(own["net_sharpe"])
    given = rp.build_report(run, compare_with=other, settings=ri.ReportSettings.of(periods_per_year=252.0 * 78))
    assert given["compare"]["other"]["periods_per_year"] == 252.0 * 78


def test_compare_with_a_run_of_a_short_test_span_annualises_it_by_its_data(tmp_path, monkeypatch):
    """Three days of 5-minute bars are too short to see a week's pattern, so a report annualises by its whole data's
    calendar (its feature cache's); compared with another run, that run is annualised the same way, by its own
    cache, not by the 105,192 a year its three days read: the same run compared with itself reads the same."""
    from types import SimpleNamespace

    data = {"periods_per_year": 252.0 * 78, "method": "sessions", "span_days": 300.0,
            "description": "the whole data's calendar"}
    fs = SimpleNamespace(meta={"calendar": data, "bar_seconds": {"S0": 300.0}})
    monkeypatch.setattr(rp, "load_featureset", lambda run_dir, left_out: fs, raising=False)
    run, feats = make_run(tmp_path / "short", seed=2)
    rep = rp.build_report(run, compare_with=run, settings=DEFAULTS, fs=fs, **feats)
    assert rep["summary"]["periods_per_year"] == 252.0 * 78
    cmp = rep["compare"]
    assert cmp["other"]["periods_per_year"] == cmp["this"]["periods_per_year"] == 252.0 * 78
    assert cmp["metrics"]["net_sharpe"]["other"] == pytest.approx(rep["summary"]["net_sharpe"])


def test_compare_with_a_throughput_only_run_uses_its_named_ics(tmp_path):
    """A run without predictions compares what its summary.json holds, figure by figure."""
    other = tmp_path / "bench-only"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"samples_per_s": 1000.0, "cross_sectional_ic": 0.05,
                                                    "pooled_ic": 0.07, "loader": "dataloader"}))
    run, _ = make_run(tmp_path / "run")
    m = rp.build_report(run, compare_with=other, settings=DEFAULTS)["compare"]["metrics"]
    assert m["cross_sectional_ic"]["other"] == 0.05 and m["pooled_ic"]["other"] == 0.07
    assert m["daily_ic"]["other"] is None  # not in that summary: nothing to compare, never another IC


def test_runs_table_over_run_folders(tmp_path):
    make_run(tmp_path / "b-late", summary_extra={"finished": "2024-06-02T09:00:00"})
    make_run(tmp_path / "c-early", seed=1, summary_extra={"finished": "2024-06-01T09:00:00", "samples_per_s": 1900})
    (tmp_path / "a-killed").mkdir()  # no summary.json: skipped
    (tmp_path / "a-killed" / "metrics.jsonl").write_text("")
    (tmp_path / "d-torn").mkdir()
    (tmp_path / "d-torn" / "summary.json").write_text('{"run_id": "d", "samp')  # torn write: skipped
    summary = json.loads((tmp_path / "b-late" / "summary.json").read_text())
    del summary["mfu"], summary["loader"]
    (tmp_path / "b-late" / "summary.json").write_text(json.dumps(summary))

    runs = rn.runs_table(tmp_path)
    assert list(runs["run_id"]) == ["c-early", "b-late"]  # by finish time, not name
    for col in ["run_id", "model", "loader", "device", "batch_size", "grad_accum_steps", "samples_per_s",
                "it_per_s", "batches_per_epoch", "data_wait_share", "gpu_util", "peak_mem_gb", "mfu",
                "epoch_time_s", "cross_sectional_ic", "cross_sectional_rank_ic", "daily_ic", "pooled_ic",
                "finished"]:  # fmt: skip
        assert col in runs
    assert list(runs["samples_per_s"]) == [1900.0, 5e4]
    assert runs.loc[1, "peak_mem_gb"] == pytest.approx(2.5)
    assert math.isnan(runs.loc[1, "mfu"]) and runs.loc[0, "mfu"] == 0.12
    assert runs["gpu_util"].isna().all() and pd.isna(runs.loc[1, "loader"])
    assert len(rn.runs_table(tmp_path / "nowhere")) == 0
    from tradelib.report import tables

    (tmp_path / "e-lag0").mkdir()  # a run whose ICs were taken before the trade delay says so beside them
    (tmp_path / "e-lag0" / "summary.json").write_text(json.dumps({"run_id": "e", "ic_lag": 0, "pooled_ic": 0.2}))
    shown = tables.runs_table(rn.runs_table(tmp_path)).set_index("run")
    assert shown.loc["e-lag0", "IC lag"] == "0" and shown.loc["b-late", "IC lag"] == "–"  # b: not recorded


@pytest.mark.slow
def test_make_figures_writes_pngs(tmp_path):
    run, _ = make_run(tmp_path / "run-a", n_sym=2, n_days=2)
    inputs = ri.load_inputs(run, DEFAULTS)
    inputs.quality = {"counts": [{"rule": "nonpositive_price", "symbol": "S0", "action": "dropped", "rows": 3}]}
    figs = rf.make_figures(inputs, run)
    assert set(figs) == {"training", "equity", "underwater", "costs", "deciles", "ic", "ic_decay", "throughput",
                         "quality"}
    for name in figs:
        assert (run / f"{name}.png").stat().st_size > 1000
    close(figs)


def test_a_large_reports_figures_say_each_figure(tmp_path, monkeypatch, capsys):
    """04's figures cell drew for 25 s without a word on 590k predictions: from STAGE_LINES_ROWS predictions (as
    load_inputs says its stages) a line names each figure as it is drawn."""
    run, _ = make_run(tmp_path / "run", n_sym=2, n_days=2)
    inputs = ri.load_inputs(run, DEFAULTS)
    capsys.readouterr()
    monkeypatch.setattr(rf, "STAGE_LINES_ROWS", len(inputs.predictions))
    figs = rf.make_figures(inputs, run)
    lines = capsys.readouterr().out.splitlines()
    assert all(re.fullmatch(r"figures, \d+s: .+", line) for line in lines), lines
    names = ["training", "equity", "underwater", "costs", "deciles", "ic", "ic_decay", "throughput"]
    assert [line.split(": ", 1)[1] for line in lines] == [f"{n}.png ({i} of 8)" for i, n in enumerate(names, 1)]
    assert set(figs) == set(names)
    close(figs)


def close(figs: dict) -> None:
    """make_figures' figures closed: pyplot keeps each open (a notebook shows them), and a module's third set
    passed matplotlib's 20-figure warning."""
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)


def test_box_stats_are_matplotlibs_per_symbol_with_only_the_extreme_fliers():
    """01's raw and feature boxes: per symbol, what matplotlib's boxplot_stats gives on that symbol's finite
    values (in log10 space on a log axis, read back), rows in any order; the fliers cut to the lowest and highest."""
    from matplotlib import cbook

    from tradelib.report import plots

    rng = np.random.default_rng(5)
    n = 3000
    codes = rng.integers(-1, 4, n)  # -1: a row without a symbol; code 3 has no name below, 2 no finite value
    values = np.exp(rng.standard_t(3, n) * 3)
    values[rng.choice(n, 40, replace=False)] = np.nan
    values[rng.choice(n, 5, replace=False)] = np.inf
    values[rng.choice(n, 30, replace=False)] = 0.0  # no log: dropped on the log axis, kept on the linear one
    values[codes == 2] = np.nan
    names = ["A", "B", "C"]
    for log in (False, True):
        boxes = plots.box_stats(values, codes, names, log=log)
        assert [b["label"] for b in boxes] == ["A", "B"]
        for box, code in zip(boxes, (0, 1)):
            v = values[(codes == code) & np.isfinite(values) & ((values > 0) if log else True)]
            theirs = cbook.boxplot_stats(np.log10(v) if log else v)[0]
            back = (lambda x: 10.0 ** x) if log else (lambda x: x)  # noqa: E731
            for key in ("med", "q1", "q3", "whislo", "whishi", "mean"):
                assert box[key] == pytest.approx(back(theirs[key]), rel=1e-12), (log, key)
            fliers = back(theirs["fliers"])
            assert fliers.size > 2 and list(box["fliers"]) == pytest.approx([fliers.min(), fliers.max()], rel=1e-12)
    assert plots.box_stats(np.ones(4), np.zeros(4, dtype=int), ["A"])[0]["fliers"].size == 0


def test_the_ic_bars_are_the_rectangles_ax_bar_draws_as_one_collection():
    """plot_ic's bars (one PolyCollection: ax.bar's patch per bar took 5.8 s over 11,700 periods): the same
    rectangles as ax.bar with the same width and colours, a NaN period flat."""
    import matplotlib.colors
    import matplotlib.pyplot as plt

    from tradelib.report import plots

    when = pd.Series(pd.date_range("2024-01-02", periods=7, freq="D", tz="UTC")).drop(index=3).reset_index(drop=True)
    ic = np.array([0.3, -0.2, 0.0, np.nan, 0.5, -0.4])
    width = pd.Timedelta(hours=19)
    fig, (a, b) = plt.subplots(2)
    theirs = a.bar(when, np.nan_to_num(ic), width=width, color=np.where(ic > 0, "tab:green", "tab:red"))
    plots._time_bars(b, when, ic, width, label="IC")
    ours = b.collections[0]
    assert len(ours.get_paths()) == len(theirs) == 6
    for path, bar, colour in zip(ours.get_paths(), theirs, ours.get_facecolors()):
        x, y = path.vertices[:, 0], path.vertices[:, 1]
        assert (x.min(), x.max()) == pytest.approx((bar.get_x(), bar.get_x() + bar.get_width()), abs=1e-9)
        assert (y.min(), y.max()) == pytest.approx(sorted((bar.get_y(), bar.get_y() + bar.get_height())), abs=1e-12)
        assert matplotlib.colors.to_rgb(colour) == pytest.approx(matplotlib.colors.to_rgb(bar.get_facecolor()))
    assert b.get_xlim()[0] < theirs[0].get_x() and b.get_xlim()[1] > theirs[-1].get_x() + theirs[-1].get_width()
    plt.close(fig)


def test_loader_sweep_sets_the_two_loaders_side_by_side(tmp_path):
    from tradelib.report.inputs import loader_sweep

    assert loader_sweep(tmp_path) is None
    pd.DataFrame({"loader": ["dataloader", "device", "dataloader", "device"], "batch_size": [64, 64, 256, 256],
                  "samples_per_s": [100.0, 400.0, 200.0, 300.0], "speedup": [None, 4.0, None, 1.5],
                  "data_wait_share": [0.5, 0.01, 0.3, 0.01], "step_time_s": [1, 1, 1, 1]}
                 ).to_csv(tmp_path / "batch_size_sweep.csv", index=False)
    sweep = loader_sweep(tmp_path)
    assert list(sweep.columns) == ["loader", "batch_size", "samples_per_s", "speedup", "data_wait_share",
                                   "step_time_s"]
    assert sweep.dropna(subset=["speedup"]).set_index("batch_size")["speedup"].to_dict() == {64: 4.0, 256: 1.5}


def test_best_predictors_never_the_oracle_nor_a_predictor_that_never_trades():
    predictors = pd.DataFrame({"predictor": ["model", "zero", "momentum", "ridge", "oracle"],
                               "cross_sectional_ic": [0.02, np.nan, 0.01, 0.03, 0.4],
                               "t_stat": [3.0, np.nan, 1.0, 4.0, 30.0],
                               "sharpe_net": [2.0, 0.0, 1.0, 3.0, 9.0], "coverage": [1.0, 0.0, 1.0, 1.0, 1.0],
                               "sharpe_net_period": [0.2, 0.0, 0.1, 0.3, 0.9],
                               "sharpe_net_se_period": [0.05, np.nan, 0.05, 0.05, 0.05]})
    trials = bk.trial_count(predictors, sweep_runs=1)
    assert trials["n_trials"] == 3 and trials["predictors"] == 3  # model, momentum, ridge compete
    # zero's Sharpe of 0 and the oracle's 9 are the largest: neither is a result to beat
    assert bk.best_predictors(predictors, "cross_sectional", trials) == {"cross_sectional_ic": "ridge",
                                                                          "sharpe_net": "ridge"}
    many = bk.trial_count(predictors, sweep_runs=10_000)  # after ten thousand tries, t = 4 is what luck gives
    assert bk.best_predictors(predictors, "cross_sectional", many) == {}
    losing = predictors.assign(sharpe_net=[-2.0, 0.0, -5.0, -1.0, 9.0], sharpe_net_period=[-0.2, 0, -0.5, -0.1, 0.9],
                               cross_sectional_ic=[-0.02, np.nan, -0.01, -0.03, 0.4])
    assert bk.best_predictors(losing, "cross_sectional", trials) == {}  # never on a loss
    from tradelib.report import tables

    cells = tables.predictor_highlight(predictors, {"cross_sectional_ic": "ridge", "sharpe_net": "ridge"})
    assert cells == ((3, "cross-sectional IC"), (3, "net Sharpe"))


def test_the_decay_words_call_a_lag_significant_only_after_allowing_for_the_lags_scanned():
    """A t of 2.4 at one of the 9 lags besides lag 0 and the traded lag is what a scan of noise shows (docs/metrics.md):
    the words say it is short of significance; a t of 6 there is significant after deflating over the 9. Lag 0 and
    the traded lag keep the headline's verdict, t >= 2."""
    rows = pd.DataFrame({"lag": range(11), "ic": 0.001, "rank_ic": 0.0, "t_stat": 0.3, "n_periods": 120})
    rows.loc[10, ["ic", "t_stat"]] = 0.03, 2.4
    decay = ri.decay_judged(rows, 1)
    assert not decay["significant"].any() and decay.loc[10, "deflated_t"] == pytest.approx(bk.deflated_t(2.4, 9))
    text = rw.decay_markdown({"ic_decay": decay.to_dict("records"), "summary": {"ic_lag": 1}})
    assert "significant at no lag (lag 0 and the traded lag at t >= 2, as above; the 9 other lags after allowing " \
           "for the scan, at a deflated t > 0.975); t >= 2 at lag(s) 10, short of significance once the 9 lags " \
           "scanned are allowed for (deflated t 0.81)" in text
    assert "significant (t >= 2) at lags 10" not in text  # what it said before
    rows.loc[3, ["ic", "t_stat"]] = 0.08, 6.0
    rows.loc[1, ["ic", "t_stat"]] = 0.03, 2.1  # the traded lag: the headline's t >= 2, a single test
    decay = ri.decay_judged(rows, 1)
    assert decay["significant"].tolist() == [k in (1, 3) for k in range(11)]
    text = rw.decay_markdown({"ic_decay": decay.to_dict("records"), "summary": {"ic_lag": 1}})
    assert "; significant at lag(s) 1, 3 (lag 0 and" in text and "t >= 2 at lag(s) 10, short" in text
    rows.loc[3, "ic"] = -0.08  # a negative IC is no signal the book takes, however large its t
    assert ri.decay_judged(rows, 1)["significant"].tolist() == [k == 1 for k in range(11)]
    swept = ri.decay_judged(rows, 1, runs=4)  # in a sweep of 4: the traded lag's t of 2.1 is deflated over them
    assert not swept.loc[1, "significant"] and swept.loc[1, "deflated_t"] == pytest.approx(bk.deflated_t(2.1, 4))
    assert swept.loc[10, "deflated_t"] == pytest.approx(bk.deflated_t(2.4, 36))
    plain = rows.assign(ic=0.001, t_stat=0.3)
    assert rw.decay_markdown({"ic_decay": ri.decay_judged(plain, 1).to_dict("records"),
                              "summary": {"ic_lag": 1}}).endswith("; significant at no lag.")


def test_the_decay_figure_draws_solid_only_the_lags_the_words_call_significant(tmp_path):
    """ic_decay.png's solid bars are the report's verdict (`decay_judged`), as the words say it: a scanned lag's t
    of 2.4 (noise, at some lag of a scan) and a negative IC's t of -6 are pale; lag 0 and the traded lag at t >= 2
    and a scanned t of 6 are solid. (Before, every |t| >= 2 was solid.)"""
    from matplotlib.colors import to_rgba

    from tradelib.report import plots

    rows = pd.DataFrame({"lag": range(11), "ic": 0.001, "rank_ic": 0.0, "t_stat": 0.3, "n_periods": 120})
    rows.loc[[0, 1, 3, 6, 10], ["ic", "t_stat"]] = [[0.04, 2.5], [0.03, 2.1], [0.08, 6.0], [-0.08, -6.0],
                                                    [0.03, 2.4]]
    decay = ri.decay_judged(rows, 1)
    fig = plots.plot_ic_decay(decay, tmp_path / "ic_decay.png", traded_lag=1)
    solid = [p.get_facecolor() == to_rgba("tab:blue") for p in fig.axes[0].patches[:11]]
    assert solid == decay["significant"].tolist() == [k in (0, 1, 3) for k in range(11)]


@pytest.mark.slow
def test_the_decay_words_on_random_walks_find_no_scanned_lag_significant():
    """40 random-walk panels (120 days x 10 symbols) and a persistent useless prediction (AR 0.9): one of the 9
    lags besides 0 and the traded one reaches t >= 2 in several of them, as a scan does; none is called
    significant."""
    scanned = called = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        ts = pd.date_range("2022-01-03", periods=120, freq="B", tz="UTC")
        e, x = np.zeros((120, 10)), rng.normal(size=(120, 10))
        for t in range(1, 120):
            e[t] = 0.9 * e[t - 1] + x[t]
        df = pd.DataFrame({"timestamp": np.repeat(ts, 10), "symbol": np.tile([f"S{i}" for i in range(10)], 120),
                           "prediction": e.ravel(), "target": rng.normal(0, 0.01, 1200)})
        decay = ri.decay_judged(ev.ic_decay(df, "cross_sectional", 0), 1)
        rest = decay[decay["lag"] > 1]
        scanned += bool(((rest["t_stat"] >= 2) & (rest["ic"] > 0)).any())
        called += bool(rest["significant"].any())
    assert scanned >= 3 and called == 0


@pytest.mark.slow
def test_lr_schedule_from_step_1_reproduces_every_logged_value(outputs):
    """Training writes the LR of every optimizer step (train_facts.json); the report draws it from there."""
    from tradelib.config import Config
    from tradelib.train.run import train

    from .conftest import TINY

    result = train(Config(**{**TINY, "run_id": "lr", "warmup_steps": 6, "epochs": 3, "max_steps": 60,
                             "log_every": 4}), progress=False)
    steps, _ = rn.training_curves(result.run_dir)
    facts = ri.read_facts(result.run_dir)
    curve = ri.lr_schedule(facts, steps, result.summary["optimizer_steps"])
    assert curve is not None and curve["step"].iloc[0] == 1 and len(curve) == 60
    lr = result.summary["lr"]
    assert curve["lr"].iloc[0] == pytest.approx(lr / 6)  # the first update's rate: warm-up from step 1
    assert curve["lr"].max() == pytest.approx(lr) and steps["step"].min() == 4  # the log starts past step 1
    assert steps.set_index("step").loc[4, "lr"] == pytest.approx(lr * 4 / 6)  # step 4 trains at 4/6 of the peak
    logged = curve.set_index("step").loc[steps["step"], "lr"].to_numpy()
    assert logged == pytest.approx(steps["lr"].to_numpy(), rel=1e-9)
    assert facts["windows"]["test"] == result.summary["test_windows"]
    changed = {**facts, "lr": [v * 1.01 for v in facts["lr"]]}
    assert ri.lr_schedule(changed, steps) is None  # a schedule that does not reproduce the log is not drawn
    assert ri.lr_schedule(None, steps) is None  # a run without train_facts.json: the logged values only
    import ast
    from pathlib import Path

    import tradelib.report as package

    for path in Path(package.__file__).parent.glob("*.py"):  # the report never imports training
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m and m.startswith("tradelib.train") for m in imported), path.name


def test_loss_context_measures_why_validation_sits_below_training(tiny_fs):
    """The zero-prediction yardstick per split (written by training) against a naive loop over the windows, and
    the reasons named."""
    from types import SimpleNamespace

    from tradelib.train.facts import split_windows

    window, scale = 16, float(tiny_fs.meta["target_scale"])

    def naive_zero_mse(split: int) -> float:
        ys = [tiny_fs.y[t] / scale for t in range(window - 1, len(tiny_fs))
              if np.isfinite(tiny_fs.y[t]) and all(tiny_fs.segment[u] == tiny_fs.segment[t]
                                                   and tiny_fs.split[u] == split for u in range(t - window + 1, t + 1))]
        return float(np.mean(np.square(ys, dtype=np.float64)))

    facts = split_windows(tiny_fs, window)
    epochs = pd.DataFrame({"epoch": [0.0], "train_loss": [5.0], "val_loss": [0.1]})
    inputs = SimpleNamespace(summary={"config": {"window": window, "dropout": 0.2}}, epochs=epochs, facts=facts)
    ctx = ri.loss_context(inputs)
    assert ctx["zero_mse"]["train"] == pytest.approx(naive_zero_mse(0), rel=1e-9)
    assert ctx["zero_mse"]["val"] == pytest.approx(naive_zero_mse(1), rel=1e-9)
    assert ctx["val_below_train"] and any("dropout 0.2" in r for r in ctx["reasons"])
    quieter = ctx["zero_mse"]["val"] < ctx["zero_mse"]["train"]
    assert quieter == any("validation period is quieter" in r for r in ctx["reasons"])
    inputs.epochs = epochs.assign(val_loss=6.0)
    assert ri.loss_context(inputs)["reasons"] == []  # validation above training needs no excuse


def test_tables_print_integers_as_integers_and_flag_what_cannot_be_right():
    from tradelib.report import tables

    stats = {b: {"total_return": 0.01, "annual_return": 2.5e5, "annual_volatility": 0.2, "sharpe": 1.234,
                 "max_drawdown": 0.05, "turnover": 0.5, "hit_rate": 0.51, "n_bars": 4431.0,
                 "sharpe_inference": {"ci_low": -0.5, "ci_high": float("nan")}, "annual_return_ci": [-0.1, 0.25]}
             for b in ("gross", "net", "buy_hold")}
    bt = tables.backtest_table(stats).set_index("figure")
    assert list(bt.loc["bars"]) == ["4,431"] * 3 and bt.loc["annual return", "gross (before costs)"] == "+2.5e+07%"
    assert list(bt.loc["Sharpe 95% interval"]) == ["–"] * 3  # an interval with an unknown end is not shown as one
    assert list(bt.loc["annual return 95% interval"]) == ["-10.0% to +25.0%"] * 3
    sweep = pd.DataFrame({"loader": ["dataloader", "device"], "batch_size": [64.0, 64.0],
                          "samples_per_s": [7145.2, 471.0], "speedup": [np.nan, 0.066], "mfu": [np.nan, 0.1],
                          "mfu_invalid": [2.433, np.nan], "peak_mem_bytes": [1_705_732, 1_705_732],
                          "gpu_busy_pct": [None, None]})
    shown = tables.sweep_table(sweep)
    assert list(shown["micro-batch"]) == ["64", "64"] and list(shown["MFU"]) == ["invalid", "10.00%"]
    assert list(shown["peak memory"]) == ["0.00171 GB"] * 2 and "2.43" not in shown.to_string()
    runs = pd.DataFrame({"run_id": ["a"], "batch_size": [256.0], "grad_accum_steps": [2.0], "mfu": [1.7],
                         "samples_per_s": [1900.0], "peak_mem_gb": [0.84]})
    row = tables.runs_table(runs).iloc[0]
    assert (row["batch"], row["MFU"], row["samples/s"], row["peak memory"]) == ("256 x 2", "invalid",
                                                                                        "1,900", "0.84 GB")


def test_a_figure_that_rounds_to_zero_has_no_minus_and_every_time_reads_as_one_utc_minute():
    """-0.0004 at '+.2f' is '+0.00' (the quick run printed 'net exposure -0.00'); and the report, 03's tables and
    the walk-forward's lines write a time one way: to the minute in UTC, whatever zone the text came in."""
    from tradelib.report import tables
    from tradelib.report.words import fmt

    assert [fmt(-0.0004, "+.2f"), fmt(-0.0004, ".2f"), fmt(-0.004, "+.2f"), fmt(-0.006, "+.2f")] == [
        "+0.00", "0.00", "+0.00", "-0.01"]
    assert (tables.num(-1e-5), tables.pct(-1e-6), tables.signed_pct(-1e-6), fmt(-1e-9, ".1e")) == (
        "0.000", "0.0%", "+0.0%", "-1.0e-09")
    assert tables.minute("2024-01-08T09:21:59+05:00") == "2024-01-08 04:21"
    assert tables.minute(pd.Timestamp("2024-01-08 09:21", tz="America/New_York")) == "2024-01-08 14:21"
    assert tables.minute("2024-01-08T09:21:00") == "2024-01-08 09:21"  # naive: read as UTC
    assert tables.minute("2024-01-08 (whole day, UTC)") == "2024-01-08 (whole day, UTC)"
    assert (tables.minute(None), tables.minute("", "n/a"), tables.minute(None, "the start")) == (
        "–", "n/a", "the start")


def test_a_test_span_too_short_for_weekends_takes_the_whole_datas_periods_a_year():
    """Hourly bars, 7 a session: a Monday-Friday test span shows no weekend (every day it holds traded); its
    nights show an exchange, taken at a five-day week (once read as 24/7: its marks per time, 2,922 a year). The
    year of weekdays behind it says exchange, and its marks a year (5 x 7 x 52.18 = 1,826) annualise."""
    from types import SimpleNamespace

    from tradelib.data.sessions import calendar

    hours = pd.to_timedelta(np.arange(9, 16), unit="h")
    days = pd.bdate_range("2023-01-02", "2023-12-29", tz="UTC")
    year = (days.tz_convert(None).to_numpy()[:, None] + hours.to_numpy()[None, :]).ravel()
    full = calendar(pd.DatetimeIndex(year).as_unit("ns").asi8, 3600.0).to_dict()
    span = pd.bdate_range("2024-01-08", "2024-01-12", tz="UTC")
    stamps = (span.tz_convert(None).to_numpy()[:, None] + hours.to_numpy()[None, :]).ravel()
    test = pd.DataFrame({"timestamp": pd.DatetimeIndex(stamps, tz="UTC")})
    ann, _ = ri._annualisation(test, SimpleNamespace(meta={"calendar": full}), 3600.0, 0.0, "UTC")
    assert full["method"] == ann["method"] == "sessions"
    assert ann["periods_per_year"] == full["periods_per_year"] == pytest.approx(365.25 * 5 / 7 * 7)
    own = ri.ev.annualisation(test, 3600.0, periods_per_year=0.0)
    assert own["method"] == "sessions" and own["periods_per_year"] == pytest.approx(365.25 * 5 / 7 * 7)
    assert "too short to see a week's pattern" in ann["description"]


def tool_side_by_side(tool: str, old: str, *args: str) -> tuple[dict[str, dict], list[str]]:
    """tools/<tool> on tiny.yaml against commit `old`, one round (skipped where the clone lacks `old`): the JSON
    line of each side (the measuring script asserts it imported its own tree's tradelib), and all it printed."""
    import subprocess
    import sys

    from .conftest import older_commit

    root = older_commit(old)
    out = subprocess.run([sys.executable, str(root / "tools" / tool), "-f", str(root / "params" / "tiny.yaml"),
                          "--old", old, "--rounds", "1", *args], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    rows = {r["which"]: r for r in map(json.loads, [line for line in out if line.startswith("{")])}
    assert set(rows) == {"old", "new"}
    return rows, out


@pytest.mark.slow
def test_report_memory_runs_each_side_with_its_own_code():
    """tools/report_memory.py (docs/perf.md's report figure): the older commit's report and this checkout's give
    the same ridge baseline on the same run folder."""
    rows, out = tool_side_by_side("report_memory.py", "601b05c")  # the last commit that fitted the ridge on copied rows
    assert rows["old"]["X_gb"] == rows["new"]["X_gb"] > 0
    assert rows["new"]["ridge_ic"] == pytest.approx(rows["old"]["ridge_ic"], rel=1e-9)
    assert out[-1].startswith("new: traced peak") and out[-2].startswith("old: traced peak")


@pytest.mark.slow
def test_notebook01_time_runs_each_side_with_its_own_code():
    """tools/notebook01_time.py (docs/perf.md's cleaning-notebook figure): 01's steps on the same data under the
    older commit and this checkout, the figure drawn by both."""
    rows, out = tool_side_by_side("notebook01_time.py", "94c6aad")  # the last commit that drew 01's boxes with seaborn
    assert rows["old"]["rows"] == rows["new"]["rows"] > 0
    assert all(rows[k][step] > 0 for k in rows for step in ("read", "cache", "feature_table", "figure"))
    assert out[-1].startswith("new: read") and out[-2].startswith("old: read")


@pytest.mark.slow
def test_report_figures_time_runs_each_side_with_its_own_code():
    """tools/report_figures_time.py (docs/perf.md's figure timings): every report figure drawn under the older
    commit and this checkout, on the same run folder."""
    rows, out = tool_side_by_side("report_figures_time.py", "eabe78f")  # the last commit that drew the IC with ax.bar
    assert rows["old"]["periods"] == rows["new"]["periods"] > 0
    assert all(rows[k][fig] > 0 for k in rows for fig in ("ic", "equity", "deciles", "training"))
    assert out[-1].startswith("new: all") and out[-2].startswith("old: all")


@pytest.mark.parametrize("n_sym, freq, family", [(6, "5min", "cross_sectional"), (6, "B", "cross_sectional"),
                                                 (2, "B", "pooled")])
def test_the_model_row_reuses_the_reports_own_ics_and_book_bit_for_bit(tmp_path, monkeypatch, n_sym, freq, family):
    """load_inputs hands its model ICs and backtest to evaluate_all (one backtest for the model, one per
    baseline): the predictor table equals the one made from scratch exactly, whichever family leads (its HAC
    lags) and whatever the other families' lags."""
    run, _ = make_run(tmp_path / "run", n_sym=n_sym, freq=freq, n_bars=400)
    books = []
    monkeypatch.setattr(bk, "backtest", lambda *a, _real=bk.backtest, **k: books.append(a[1]) or _real(*a, **k))
    inputs = ri.load_inputs(run, DEFAULTS)
    assert books == ["prediction"] + ["_p"] * (len(inputs.predictors) - 1)
    monkeypatch.undo()
    df, fam = inputs.predictions, inputs.family
    assert fam == family
    again = bk.evaluate_all(df, ev.baseline_predictions(df), fam, inputs.ic[fam]["lags"], target_col=ri.TRADED,
                            **inputs.book)
    pd.testing.assert_frame_equal(inputs.predictors, again, check_exact=True)


def test_a_walk_forward_explains_its_gap_with_its_last_folds_yardstick():
    """A walk-forward has no train_facts.json of its own (its folds have theirs): 04 gave 'the training loss is the
    mean over an epoch of improving weights' as the sole cause of a validation loss 3.3x below training, where
    the last fold's yardstick shows its validation period is that much quieter (tests/data/real, folds 3)."""
    from types import SimpleNamespace

    epochs = pd.DataFrame({"epoch": [0, 1, 2], "fold": [0, 1, 2], "train_loss": [2.56, 1.95, 2.5907],
                           "val_loss": [0.88, 0.84, 0.7887]})
    inputs = SimpleNamespace(summary={"config": {}}, epochs=epochs, facts=None)
    fold_facts = {"target_scale": 0.0125, "zero_mse": {"train": 2.538, "val": 0.746}}
    ctx = ri.loss_context(inputs, fold_facts, "fold-2")
    assert ctx["reasons"][0].startswith("the validation period of fold-2 is quieter: predicting 0 scores 0.746")
    said = rw.training_markdown({"training": {"loss": ctx}})
    assert "s = 0.0125 log return of fold-2 (the last fold" in said and "validation windows of fold-2" in said
    single = ri.loss_context(SimpleNamespace(summary={"config": {}}, epochs=epochs, facts=fold_facts))
    assert single["reasons"][0].startswith("the validation period is quieter") and not single["whose"]


def test_both_runs_timed_busy_names_the_other_by_its_id_and_this_one_in_words():
    """04's line setting this run beside `compare_with` (`words._compare_lines`)."""
    # read "(not comparable: `20261207-191337` and `this run` timed ...)": 'this run' set as if it were a run id
    side = {"other": 307.0, "this": 123.0, "ratio": 0.4}
    report = {"summary": {"headline_ic": "pooled"},
              "compare": {"run_id": "20261207-191337", "other": {"loader": "device", "busy_note": "busy"},
                          "this": {"busy_note": "busy"},
                          "metrics": {"samples_per_s": side, "pooled_ic": {"other": 0.01, "this": 0.07},
                                      "net_sharpe": {"other": -45.0, "this": 13.4}}}}
    line = "".join(rw._compare_lines(report))
    assert "(not comparable: `20261207-191337` and this run timed while" in line, line


@pytest.mark.parametrize("file,craft,says", [
    ("summary.json", lambda s, p: s.update(cache_dir=5), "cache_dir is 5, not text"),
    ("summary.json", lambda s, p: s["config"].update(trade_delay="x"), "its config's trade_delay is 'x'"),
    ("summary.json", lambda s, p: s.update(folds="x"), "folds is not a list of folds"),
    ("summary.json", lambda s, p: s.update(cache_key="../../x"), "cache_key is '../../x', not a plain folder name"),
    ("predictions.parquet", lambda s, p: p.drop(columns="prediction"), "no column prediction"),
    ("predictions.parquet", lambda s, p: p.assign(row=-p.row), "column row holds int64 below 0"),
    ("predictions.parquet", lambda s, p: p.assign(timestamp=p.timestamp.astype(str)),
     "column timestamp holds"),
])
def test_a_crafted_run_folder_is_refused_naming_the_file_and_entry(tmp_path, file, craft, says):
    """A colleague's run folder whose summary.json or predictions.parquet holds entries of another kind than a run
    writes failed 04 in a later cell (TypeError, KeyError, AttributeError), or with a negative `row` fitted the ridge
    baseline's predictions on rows counted from the end; now the first read names the file and the entry."""
    run, feats = make_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    if file == "summary.json":
        craft(summary, None)
        (run / "summary.json").write_text(json.dumps(summary))
    else:
        craft(None, pd.read_parquet(run / "predictions.parquet")).to_parquet(run / "predictions.parquet")
    with pytest.raises(ValueError, match=re.escape(f"{run / file}: {says}")):
        ri.load_inputs(run, ri.ReportSettings.of(), **feats)


def test_a_crafted_train_facts_json_is_left_out_saying_so(tmp_path, capsys):
    run, feats = make_run(tmp_path / "run")
    (run / ri.FACTS_FILE).write_text(json.dumps({"lr": ["x"], "warmup": 1}))
    assert ri.load_inputs(run, ri.ReportSettings.of(), **feats).facts is None
    assert "train_facts.json unreadable (lr is not a list of numbers): the LR schedule" in capsys.readouterr().out


@pytest.mark.parametrize("text,says", [
    ("a,b\n1,2\n", "no column loader, batch_size, samples_per_s"),
    ("loader,batch_size,samples_per_s\ndevice,x,3\n", "column batch_size is not numbers"),
    ('"\n', ""),
])
def test_a_crafted_loader_sweep_is_left_out_saying_so(tmp_path, capsys, text, says):
    """A batch_size_sweep.csv without 02's columns (another program's file, a colleague's folder) failed the
    report with KeyError; now it is left out with a line naming the file and what is wrong, and the report builds."""
    run, feats = make_run(tmp_path / "run")
    (run / "batch_size_sweep.csv").write_text(text)
    report = rp.build_report(run, settings=DEFAULTS, **feats)
    assert "loader_sweep" not in report
    out = capsys.readouterr().out
    assert "batch_size_sweep.csv unreadable (" + says in out and "02's loader sweep is left out" in out


def test_a_large_report_says_each_stage_a_small_one_prints_nothing(tmp_path, monkeypatch, capsys):
    """load_inputs on millions of predictions ran for minutes without a line: from STAGE_LINES_ROWS predictions a
    line says each stage as it begins, in order, seconds counted from the read; below it the output is unchanged."""
    run = make_run(tmp_path / "run")[0]
    rows = len(pd.read_parquet(run / "predictions.parquet"))
    small = ri.load_inputs(run, DEFAULTS)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(ri, "STAGE_LINES_ROWS", rows)
    large = ri.load_inputs(run, DEFAULTS)
    lines = capsys.readouterr().out.splitlines()
    assert all(re.fullmatch(r"report, \d+s: .+", line) for line in lines), lines
    assert lines[0].endswith(f": {rows:,} test predictions of run read") and lines[-1].endswith(": the tables computed")
    assert [line.split(": ", 1)[1] for line in lines[1:-1]] == [
        "the model's ICs and backtest", "the ICs before the delay, and the 3 baselines' ICs and backtests",
        "deciles, per symbol, IC decay, the break-even's bootstrap"]
    assert large.ic["pooled"]["ic"] == small.ic["pooled"]["ic"]
