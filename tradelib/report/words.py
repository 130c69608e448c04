"""The report's words: the markdown 04_report shows beside its tables and figures, each read from a report.json
dict (`report.build_report`), so it says what the numbers say and nothing the numbers do not hold; and the
run's configuration as (setting, value) lines.
"""

from __future__ import annotations

import math
import os

import pandas as pd

from tradelib.config import run_setting
from tradelib.paths import is_synthetic
from tradelib.report.backtest import SIGNIFICANT, significant
from tradelib.report.metrics import FAMILY_WORDS, IC_FAMILIES, bar_words
from tradelib.report.tables import markdown_code, markdown_text, minute, number


def summary_markdown(report: dict) -> str:
    """A few lines for the top of the HTML report: the run, the signal and its baselines, the book after costs,
    the throughput, and a comparison when asked. (The predictor table follows in its own section, once.)"""
    g = report["summary"].get
    delay, horizon = g("target_delay_bars") or 0, g("horizon_bars") or 1
    lines = [
        f"**Run {markdown_code(g('run_id'))}**: {markdown_text(g('model'))} on "
        f"{markdown_text(g('device_name') or g('device'))}, loader {markdown_code(g('loader'))}, "
        f"{g('n_test_rows'):,} test rows, {g('n_symbols')} symbols of "
        f"{g('bar') or fmt(g('bar_seconds'), 'g') + ' s'} bars, learned target: the return from t+{delay} to "
        f"t+{delay + horizon}.",
        "",
        *[f"**Warning**: {w}." for w in g("warnings") or []],
        *([""] if g("warnings") else []),
        *_signal_lines(report),
        "",
        *_book_lines(report),
        "",
        _throughput_line(report),
        *_compare_lines(report),
    ]
    return "\n".join(lines)


def _signal_lines(report: dict) -> list[str]:
    """The headline IC at the traded lag, named, why it leads, its robust t; the lag-0 figure beside it; then
    the other two and the baselines."""
    g = report["summary"].get
    fam = g("headline_ic")
    word = FAMILY_WORDS.get(fam, fam)
    lag = g("ic_lag") or 0
    others = "".join(f", {k} {fmt(v)}" for k, v in (g("baseline_ic") or {}).items() if k != "oracle")
    t = g("ic_t_stat")
    at = f"at lag {lag} (the return the book earns, t+{lag} to t+{lag + (g('horizon_bars') or 1)})"
    if fam == "pooled":
        lead = f"Test **{word} {fmt(g('pooled_ic'))}** {at} (rank IC {fmt(g('pooled_rank_ic'))}"
    else:
        lead = (f"Test **{word} {fmt(g(f'{fam}_ic'))}** {at} (rank IC {fmt(g(f'{fam}_rank_ic'))}, ICIR "
                f"{fmt(g(f'{fam}_icir'), '.2f')} over {g(f'{fam}_periods')} periods")
    rest = [f"{FAMILY_WORDS[f]} {fmt(g(f'{f}_ic'))}" for f in IC_FAMILIES if f != fam]
    ic, ic0, t0 = g(f"{fam}_ic"), g(f"{fam}_ic_lag0"), g("ic_t_stat_lag0")
    runs = g("sweep_runs") or 1
    sig, sig0 = significant(t, g("ic_t_deflated"), runs), significant(t0, g("ic_t_deflated_lag0"), runs)
    said = _lasts(ic, t, ic0, t0, lag, sig, sig0)
    before = (f" Before the trade delay (lag 0, from the signal's own close) it reads {fmt(ic0)} "
              f"(t {fmt(g('ic_t_stat_lag0'), '.2f')}){said}." if lag else "")
    return [
        f"{lead}; t {fmt(t, '.2f')}, {g('ic_t_method')}: {_verdict(t, g('ic_t_deflated'), runs)}). Why this IC: "
        f"{g('headline_reason')}.{before}"
        f"{_without_best(ic, sig, g('ic_without_best'), 'share' if fam == 'pooled' else 'IC')}",
        "",
        f"The other two at lag {lag}: {'; '.join(rest)}. Baselines on the same {word}: oracle "
        f"{fmt(g(f'oracle_{fam}_ic'))}{others}. Directional accuracy {fmt(g('directional_accuracy'), '.1%')}.",
    ]


def _lasts(ic, t, ic0, t0, lag: int, sig: bool, sig0: bool) -> str:
    """Whether the signal lasts past the trade delay, said only of a significant positive IC (the book goes long
    what it predicts up; `sig`, `sig0`: `significant` of the traded and the lag-0 IC): the traded one at least the
    lag-0 one, or a lag-0 one the traded lag falls short of. Of a negative or insignificant pair nothing is said
    (-0.055 at lag 0 and -0.001 at lag 1 last nothing)."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (ic, t, ic0, t0)):
        return ""
    if ic > 0 and t >= 2 and sig and ic >= ic0:
        return ": the signal lasts past the trade delay"
    if ic0 > 0 and t0 >= 2 and sig0 and ic < ic0:
        return f": no book trading {lag} bar(s) later earns that"
    return ""


def _without_best(ic, sig: bool, rest: dict | None, unit: str) -> str:
    """The headline IC without the periods that carried it most and as many that went most against it
    (`metrics.without_best`); a significant one (`sig`, `significant`) is said to rest on a few periods when that
    halves it or turns its sign."""
    if not rest or rest.get("ic") is None:
        return ""
    few = isinstance(ic, (int, float)) and sig and (
        rest["ic"] * math.copysign(1.0, ic) < abs(ic) / 2)
    k = rest["periods"]
    return (f" Without the {k} of its {rest['of']} periods that carried it most (the largest {unit}s in its "
            f"direction, first the signal at {_when(rest['best'])}) and the {k} that went most against it, it reads "
            f"{fmt(rest['ic'])}{': significant, but it rests on a few periods' if few else ''}.")


def _book_lines(report: dict) -> list[str]:
    g = report["summary"].get
    grid = report.get("costs", {}).get("net_sharpe_by_cost") or []
    sweep = ", ".join(f"{fmt(r['cost_bps'], 'g')} bps {fmt(r['net_sharpe'], '.2f')} "
                      f"({interval(net_ci(r))})" for r in grid)
    be = g("break_even_ci") or [None, None]
    net = (f"SE {fmt(g('net_sharpe_se'), '.2f')}, {interval(g('net_sharpe_ci'))}, P(Sharpe > 0) "
           f"{fmt(g('net_sharpe_psr'), '.2f')}, deflated over {g('dsr_trials')} trial(s) "
           f"{fmt(g('net_sharpe_dsr'), '.2f')}")
    return [
        f"Long/short `{g('position_mode')}` book ({g('position_mode_reason')}), traded {g('trade_delay')} bar(s) after "
        f"the signal, at {fmt(g('cost_bps'), 'g')} bps: net Sharpe **{fmt(g('net_sharpe'), '.2f')}** ({net})"
        f"{_flag(g, 'net_sharpe')}; gross {_figure(g, 'gross_sharpe', '.2f', interval(g('gross_sharpe_ci')))}, "
        f"buy & hold {_figure(g, 'buy_hold_sharpe', '.2f', interval(g('buy_hold_sharpe_ci')))}, net annual return "
        f"{_figure(g, 'net_annual_return', '.1%', interval(g('net_annual_return_ci'), '.1%'))} at volatility "
        f"{fmt(g('net_annual_volatility'), '.1%')}, max drawdown {fmt(g('max_drawdown'), '.1%')}, turnover "
        f"{fmt(g('turnover'), '.2f')} per bar, net exposure "
        f"{fmt(g('net_exposure'), '+.2f')} on average (|net| {fmt(g('abs_net_exposure'), '.2f')}, gross "
        f"{fmt(g('gross_exposure'), '.2f')}), market beta {fmt(g('market_beta'), '+.2f')} "
        f"({interval(g('market_beta_ci'), '+.2f')}) and alpha beyond it {fmt(g('market_alpha'), '+.1%')} a year "
        f"({interval(g('market_alpha_ci'), '+.1%')}, t {fmt(g('market_alpha_t'), '.2f')}){_flag(g, 'market_alpha')}.",
        "",
        f"Net Sharpe by cost: {sweep}; {break_even_text(g('break_even_bps'))}; 95% block-bootstrap interval "
        f"{fmt(be[0], '.1f')} to {fmt(be[1], '.1f')} bps: {survival_text(g('survives_costs'), g('cost_bps'))}.",
    ]


def interval(pair, spec: str = ".2f") -> str:
    """A 95% interval (low, high) in words, 'n/a' unless both ends are known: every Sharpe the report shows
    carries one."""
    low, high = pair or (None, None)
    if "n/a" in (fmt(low), fmt(high)):
        return "95% interval n/a"
    return f"95% {fmt(low, spec)} to {fmt(high, spec)}"


def net_ci(row: dict) -> tuple:
    """A table row's net Sharpe interval (its `net_sharpe_ci_low`, `net_sharpe_ci_high`)."""
    return row.get("net_sharpe_ci_low"), row.get("net_sharpe_ci_high")


def _figure(g, key: str, spec: str, beside: str = "") -> str:
    """A figure (with what stands `beside` it, its interval), then the reason it cannot be taken as it reads."""
    return (f"{fmt(g(key), spec)} ({beside})" if beside else fmt(g(key), spec)) + _flag(g, key)


def _flag(g, key: str) -> str:
    """' (flagged: why)' where the summary's `flags` say the figure cannot be taken as it reads, else ''."""
    why = (g("flags") or {}).get(key)
    return f" (flagged: {why})" if why else ""


def survival_text(survives, cost_bps) -> str:
    """Whether the book survives its cost, said only as far as the break-even interval can tell."""
    if survives is True:
        return f"survives {fmt(cost_bps, 'g')} bps (the whole interval lies above it)"
    if survives is False:
        return f"does not survive {fmt(cost_bps, 'g')} bps (the whole interval lies below it)"
    return f"the data cannot tell whether it survives {fmt(cost_bps, 'g')} bps (the interval spans it)"


def break_even_text(bps) -> str:
    """The break-even cost in words; there is none when the book loses (or never trades) before costs."""
    if bps is None or not math.isfinite(bps):
        return "no break-even cost: the book does not make money before costs"
    return f"break-even cost **{bps:.1f} bps** per unit of weight traded (the cost at which the net Sharpe reaches 0)"


def _throughput_line(report: dict) -> str:
    g = report["summary"].get
    on_gpu = str(g("device") or "").startswith("cuda")
    memory = ("torch.cuda.max_memory_allocated" if on_gpu else "the training process's peak resident memory")
    busy = f"GPU busy {fmt(g('gpu_util'), '.0f')}%" if on_gpu else "GPU busy n/a (a CPU run)"
    epoch = (f"an epoch {fmt(g('epoch_time_s'), ',.1f')} s" if g("epoch_time_s") is not None
             else "no epoch finished")
    return (f"Training: **{_rate(g('samples_per_s'))} samples/s**, data wait {fmt(g('data_wait_share'), '.1%')}, "
            f"{busy}, {mfu_words(g('mfu_invalid') or g('mfu'))}, peak memory {_gb(g('peak_mem_gb'))} ({memory}), "
            f"{epoch}.")


def mfu_words(mfu: float | None) -> str:
    """MFU for a sentence: the figure, or why there is none; above 1 it is impossible and flagged invalid."""
    if mfu is None or not math.isfinite(mfu):
        return "MFU n/a (no peak FLOP/s known for this device)"
    if mfu > 1:
        return f"MFU invalid ({mfu:.2f} is above 1, which is impossible: the FLOP count or the peak is wrong)"
    return f"MFU {mfu:.1%}"


def _compare_lines(report: dict) -> list[str]:
    cmp = report.get("compare")
    if not cmp:
        return []
    m = cmp["metrics"]
    fam = report["summary"].get("headline_ic")
    sps, ic_ = m["samples_per_s"], m.get(f"{fam}_ic", m["pooled_ic"])
    ci, beta_ci = cmp.get("net_sharpe_ci") or {}, cmp.get("market_beta_ci") or {}
    beta = m.get("market_beta") or {}
    busy = [who for who, side in ((markdown_code(cmp["run_id"]), "other"), ("this run", "this"))  # words, not an id
            if cmp[side].get("busy_note")]
    ratio = (f"x{fmt(sps['ratio'], '.1f')}" if not busy else
             f"not comparable: {' and '.join(busy)} timed while other processes kept the machine busy")
    return [
        "",
        f"Against run {markdown_code(cmp['run_id'])} (loader {markdown_code(cmp['other'].get('loader'))}): samples/s "
        f"{_rate(sps['other'])} -> {_rate(sps['this'])} ({ratio}), {FAMILY_WORDS.get(fam, fam)} "
        f"{fmt(ic_['other'])} -> {fmt(ic_['this'])}, net Sharpe "
        f"{fmt(m['net_sharpe']['other'], '.2f')} ({interval(ci.get('other'))}) -> "
        f"{fmt(m['net_sharpe']['this'], '.2f')} ({interval(ci.get('this'))}), market beta "
        f"{fmt(beta.get('other'), '+.2f')} ({interval(beta_ci.get('other'), '+.2f')}) -> "
        f"{fmt(beta.get('this'), '+.2f')} ({interval(beta_ci.get('this'), '+.2f')}).",
        *([f"Its predictions were not read ({markdown_text(cmp['unread'])}): its figures are its summary.json's, "
           f"not scored with this run's book."] if cmp.get("unread") else []),
    ]


def conventions_markdown(report: dict) -> str:
    """What the numbers mean here: which IC and t, the annualisation, the book, the split dates."""
    c = report.get("conventions") or {}
    sp = c.get("splits") or {}
    ann = c.get("annualisation") or {}
    if sp.get("method") == "walk-forward":
        dates = (f"{markdown_text(sp.get('n_folds'))} folds ({markdown_text(sp.get('fold_window'))} training window), "
                 f"test periods tiling {_when(sp.get('test_start'))} to {_when(sp.get('test_end'))} (UTC), each fold's "
                 f"model trained and validated on the data before its test period, features scaled on its own training "
                 f"rows")
    elif sp.get("method") == "dates" or sp.get("val_start"):
        dates = _split_periods(sp)
    else:
        dates = (f"test {_when(sp.get('test_start'))} to {_when(sp.get('test_end'))} (UTC; the training and "
                 f"validation dates need the feature cache)")
    return (f"Headline IC = {c.get('headline_ic_words')}; {c.get('ic_lag')}; t = {c.get('t_stat')}; significance on "
            f"that t only. Sharpe errors: {c.get('sharpe_interval')}; {c.get('deflation')}. Annualisation: "
            f"{_periods(ann.get('periods_per_year'))} periods a year, {markdown_text(ann.get('description'))}. "
            f"Trade delay {c.get('trade_delay_bars')} bar(s), cost {fmt(c.get('cost_bps'), 'g')} bps per unit of "
            f"weight traded, positions `{c.get('position_mode')}` ({c.get('position_mode_reason')}), {c.get('bar')} "
            f"bars. Splits by {sp.get('method')}: {dates}. See docs/metrics.md.")


def precision_words(summary: dict) -> str:
    """The precision the run computed in ('bf16 (auto)', 'fp16 with a GradScaler (auto)'); the setting alone for a
    summary written before it recorded what `auto` chose."""
    chosen, asked = summary.get("precision"), (summary.get("config") or {}).get("precision")
    if not chosen:
        return str(asked)
    return chosen + (" with a GradScaler" if summary.get("grad_scaler") else "") + (f" ({asked})" if asked != chosen
                                                                                   else "")


def run_configuration(summary: dict, splits: dict) -> list[tuple[str, str]]:
    """The run's configuration as (setting, value) lines: data, windows, model, batch, learning rate, length,
    device, split dates."""
    c, g = summary.get("config") or {}, summary.get
    data = (f"synthetic market: {c.get('synth_symbols')} symbols x {fmt_count(c.get('synth_bars'))} 5-minute bars "
            f"(seed {c.get('data_seed')})" if is_synthetic(c.get("data_path")) else str(c.get("data_path")))
    target = "vol-scaled forward log return" if c.get("vol_scaled_target") else "forward log return"
    delay = run_setting(c, "target_delay")
    start = f"from {delay} bar(s) after the window's last bar t" if delay else "from the window's last bar t"
    per_fold = " per fold" if g("folds") else ""
    steps = f", at most {fmt_count(c['max_steps'])} steps{per_fold}" if c.get("max_steps") else ""
    purge = f", {splits['purge_bars']} bars purged at each boundary" if splits.get("purge_bars") else ""
    return [
        ("data", data),
        ("windows", f"{c.get('window')} bars of history each; {fmt_count(g('train_windows'))} training and "
                    f"{fmt_count(g('test_windows'))} test windows"
                    + (" (training: the last fold's)" if per_fold else "")),
        ("target", f"{target} over {c.get('horizon')} bar(s), {start}"),
        ("model", f"{g('model')}: hidden {c.get('hidden')}, {c.get('layers')} layer(s), dropout {c.get('dropout')}; "
                  f"{fmt_count(g('n_params'))} parameters"),
        ("batch", f"{fmt_count(g('batch_size'))} windows x {fmt_count(g('grad_accum_steps'))} accumulation x "
                  f"{fmt_count(g('world_size') or 1)} rank(s) = {fmt_count(g('global_batch'))} per optimizer step"),
        ("learning rate", f"{fmt(g('lr'), 'g')} peak (lr {fmt(c.get('lr'), 'g')}, scaling {c.get('lr_scaling')}), "
                          f"{c.get('warmup_steps')} warm-up steps at most, cosine to {c.get('min_lr_ratio')} x; "
                          f"AdamW, weight decay {c.get('weight_decay')}, gradient clip {c.get('grad_clip')}"),
        ("length", f"{c.get('epochs')} epoch(s){steps}: {fmt_count(g('optimizer_steps'))} optimizer steps taken "
                   f"({fmt_count(g('skipped_steps'))} skipped), seed {c.get('seed')}"),
        ("device", f"{g('device_name')} ({g('device')}), precision {precision_words(summary)}, compile "
                   f"{g('compiled')}, loader {g('loader')}"
                   + (f"; step graph {g('cuda_graphs')} ({g('cuda_graphs_reason')})" if g("cuda_graphs") else "")),
        ("splits", _split_words(splits, purge)),
    ]


def _split_words(splits: dict, purge: str) -> str:
    if splits.get("method") == "walk-forward":
        return (f"walk-forward: {splits.get('n_folds')} folds, {splits.get('fold_window')} training window, "
                f"{splits.get('fold_init')} start; test periods {_when(splits.get('test_start'))} to "
                f"{_when(splits.get('test_end'))} (UTC){purge}; each fold's dates under 'Does it hold through time?'")
    return f"by {splits.get('method')}: {_split_periods(splits)}{purge}"


def _split_periods(sp: dict) -> str:
    return (f"training to {_when(sp.get('train_end'))}, validation {_when(sp.get('val_start'))} to "
            f"{_when(sp.get('val_end'))}, test {_when(sp.get('test_start'))} to {_when(sp.get('test_end'))} (UTC)")


def training_markdown(report: dict) -> str:
    """The loss's unit, and why validation sits below training when it does."""
    t = report.get("training") or {}
    ctx = t.get("loss") or {}
    z, scale, whose = ctx.get("zero_mse") or {}, ctx.get("target_scale"), ctx.get("whose")
    of = f" of {whose} (the last fold; each fold has its own)" if whose else ""
    unit = ("**Loss**: the mean squared error of the target divided by its training scale s (1.4826 x the median "
            "absolute deviation of the training targets" + (f", s = {scale:.3g} log return{of}" if scale else "") +
            "): a loss of 1 is an RMS error of one s.")
    if z.get("train") is not None:
        unit += (f" Predicting 0 scores {fmt(z.get('train'))} on the training windows and {fmt(z.get('val'))} on "
                 f"the validation windows{f' of {whose}' if whose else ''}: the yardstick for the curves below.")
    lines = [unit]
    if ctx.get("val_below_train"):
        lines += ["", f"Validation ({fmt(ctx.get('last_val_loss'), '.4f')}) ends below training "
                      f"({fmt(ctx.get('last_train_loss'), '.4f')}) because " + "; and ".join(ctx["reasons"]) + "."]
    lines += ["", "The learning rate is drawn from step 0, the warm-up included, with the trainer's own schedule "
                  "(the dots are the values logged at each log interval)."
              if t.get("lr_from_step_0") else "The learning rate shows the logged values only."]
    return "\n".join(lines)


def book_markdown(report: dict) -> str:
    """The book's settings, said once for the backtest table below, and the test period's length."""
    b, s = report["backtest"], report["summary"]
    span = ""
    if s.get("test_days") is not None and s["test_days"] < 0.25 * 365.25:
        span = (f" The test split spans {s['test_days']:.1f} days: annualised figures extrapolate it "
                f"{365.25 / max(s['test_days'], 1e-9):,.0f}-fold.")
    ann = (report.get("conventions") or {}).get("annualisation") or {}
    how = markdown_text(ann.get("description") or b["annualisation"])  # (a feature cache's calendar: a file's text)
    return (f"Book: `{b['mode']}` positions, traded {b['trade_delay']} bar(s) after the signal, "
            f"{fmt(b['cost_bps'], 'g')} bps per unit of weight traded, {bar_words(b['bar_seconds'])} bars, "
            f"{_periods(b['periods_per_year'])} periods a year ({how})."
            f"{span} {test_span_text(report.get('test_span') or {})}")


def test_span_text(span: dict) -> str:
    """The test span as traded: first and last prediction, and the rows lost before the first one."""
    if not span.get("first_prediction"):
        return ""
    lost = []
    if span.get("purged_rows") is not None:
        lost.append(f"{span['purged_rows']:,} rows purged after the validation split")
    if span.get("warmup_rows") is not None:
        lost.append(f"{span['warmup_rows']:,} test rows spent on the window's warm-up")
    start = f" (the test split starts {_when(span['test_start'])})" if span.get("test_start") else ""
    return (f"Traded from the first prediction {_when(span['first_prediction'])} to the last "
            f"{_when(span['last_prediction'])} UTC{start}, {span['periods']:,} periods"
            + (f"; {' and '.join(lost)}." if lost else "."))


def decay_markdown(report: dict) -> str:
    """What the IC decay says: how long the signal lasts, and where the book trades. Lag 0 and the traded lag are
    judged as the headline judges them; another lag is significant only after allowing for the lags scanned
    (`inputs.decay_judged`), and one with t >= 2 short of that is said to be."""
    rows = report.get("ic_decay") or []
    if not rows:
        return ""
    lag = report["summary"].get("ic_lag") or 0
    at = {r["lag"]: r for r in rows}
    sig = [r["lag"] for r in rows if r.get("significant")]
    scanned = [r for r in rows if r["lag"] not in (0, lag)]
    loose = [r for r in scanned if not r.get("significant") and r.get("t_stat") is not None and r["t_stat"] >= 2
             and (r.get("ic") or 0) > 0]
    last = (f"significant at lag(s) {', '.join(map(str, sig))}" if sig else "significant at no lag")
    if any(r.get("significant") for r in scanned) or loose:
        last += (f" (lag 0 and the traded lag at t >= 2, as above; the {len(scanned)} other lags after allowing for "
                 f"the scan, at a deflated t > {SIGNIFICANT:g})")
    if loose:
        last += (f"; t >= 2 at lag(s) {', '.join(str(r['lag']) for r in loose)}, short of significance once the "
                 f"{len(scanned)} lags scanned are allowed for (deflated t "
                 f"{', '.join(fmt(r.get('deflated_t'), '.2f') for r in loose)}): a scan of that many lags of a "
                 f"random walk often shows one")
    word = FAMILY_WORDS.get(report["summary"].get("headline_ic"), "")
    return (f"IC by lag ({word}): {fmt(at[0].get('ic'))} at lag 0, "
            f"{fmt((at.get(lag) or {}).get('ic'))} at the traded lag {lag}; {last}.")


def folds_markdown(report: dict) -> str:
    """The walk-forward in a few lines and a table, for 04: does the result hold in every test period?"""
    block = report["folds"]
    fam = block["headline_ic"]
    col = f"{fam}_ic"
    per = [r for r in block["table"] if r["fold"] != "all"]
    every = next(r for r in block["table"] if r["fold"] == "all")
    short = {"cross_sectional": "cross-sectional IC", "daily": "per-day IC", "pooled": "pooled IC"}.get(fam, fam)
    positive = sum(1 for r in per if (r.get(col) or 0) > 0)
    lines = [
        f"**Walk-forward**: {block['n_folds']} folds, {markdown_text(block['fold_window'])} training window, each "
        f"fold's model started {'from the previous fold' if block['fold_init'] == 'warm' else 'from new weights'}. "
        f"{FAMILY_WORDS.get(fam, fam)} positive in **{positive} of {len(per)}** test periods; over all of them "
        f"{fmt(every.get(col))} (t {fmt(every.get('t_stat'), '.2f')}), net Sharpe "
        f"{fmt(every.get('net_sharpe'), '.2f')} ({interval(net_ci(every))}). Below, t (overlap-robust) and ridge "
        f"(the baseline refitted per fold) are the {short}'s, beta the net book's to the market.",
        "",
        "| fold | test period (UTC) | test rows | cross-sectional IC | per-day IC | pooled IC | t | ridge | "
        "net Sharpe (95% interval) | beta | max drawdown |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in block["table"]:
        span = f"{_when(r.get('test_start'))} to {_when(r.get('test_end'))}"
        low, high = net_ci(r)
        cells = [r["fold"], span, f"{r['test_rows']:,}", fmt(r.get("cross_sectional_ic")), fmt(r.get("daily_ic")),
                 fmt(r.get("pooled_ic")), fmt(r.get("t_stat"), ".2f"), fmt(r.get("ridge_ic")),
                 f"{fmt(r.get('net_sharpe'), '.2f')} ({fmt(low, '.2f')} to {fmt(high, '.2f')})",
                 fmt(r.get("market_beta"), "+.2f"), fmt(r.get("max_drawdown"), ".1%")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_notes(sweep: pd.DataFrame) -> list[str]:
    """What a reader must know about 02's figures: why an MFU is marked invalid, and which configurations were
    timed while other processes were busy (their samples/s are not comparable)."""
    reasons = sweep.get("mfu_invalid_reason", pd.Series(dtype=object)).dropna()  # (the run folder's csv: a file's)
    notes = [f"MFU marked *invalid*: {markdown_text(why)}." for why in dict.fromkeys(reasons)]
    busy = sweep.dropna(subset=["busy_note"]) if "busy_note" in sweep else sweep.iloc[:0]
    if len(busy):
        which = "every configuration" if len(busy) == len(sweep) else ", ".join(
            f"{markdown_text(r.loader)} at {r.batch_size:,}" for r in busy.itertuples())
        cores = os.cpu_count() or 1
        notes.append(f"Timed while other processes kept up to {busy['other_cores'].max():.1f} of the {cores} cores "
                     f"busy ({which}): those samples/s and their ratios are not comparable; rerun on an idle "
                     f"machine.")
    return notes


# ----------------------------------------------------------------------------------------------------
# numbers and times in words


def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else number(value, spec)


def _rate(value) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= div:
            return f"{value / div:.3g}{unit}"
    return f"{value:.3g}"


def _gb(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g} GB"


def fmt_count(value) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _periods(value) -> str:
    return fmt(value, ",.0f") if isinstance(value, (int, float)) and value >= 100 else fmt(value, ".2f")


def _when(value) -> str:
    """A time in words: tables.minute's UTC minute, 'n/a' where there is none; a text that is no time as it came
    (a run's config or summary.json: a file's), escaped."""
    return markdown_text(minute(value, "n/a"))


def _verdict(t, deflated, runs: int) -> str:
    """The headline IC's verdict; in a sweep of several runs with its t deflated over them (`significant`)."""
    if t is None:
        return "n/a"
    if not abs(t) >= 2:
        return "not distinguishable from zero (|t| < 2)"
    if runs <= 1:
        return "significant (|t| >= 2)"
    if significant(t, deflated, runs):
        return (f"significant (|t| >= 2; deflated over the {runs} runs of its sweep {fmt(deflated, '.2f')} > "
                f"{SIGNIFICANT:g})")
    return (f"|t| >= 2, but not significant once the {runs} runs of its sweep are allowed for (deflated t "
            f"{fmt(deflated, '.2f')}, not above {SIGNIFICANT:g})")
