"""What a figure's axes say: units, scales and ticks a reader takes at their word (read from matplotlib's objects)."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from tradelib.report import plots, tables  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    """Each test's figures closed after it (pyplot keeps them: later tests' figures warn past 20)."""
    yield
    plt.close("all")


def _steps(n: int, grad_norm: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"step": np.arange(1, n + 1), "loss": np.linspace(2, 1, n), "loss_ema": np.linspace(2, 1, n),
                         "lr": np.full(n, 1e-3), "grad_norm": grad_norm, "skipped_steps": 0})


def _visible_ticks(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def test_loss_per_epoch_ticks_are_whole_epochs_even_for_one_epoch():
    # the README's first run (params/quick.yaml) trains one epoch: its ticks read 0.945 .. 1.05
    for n_epochs in (1, 2, 7):
        epochs = pd.DataFrame({"epoch": range(n_epochs), "train_loss": np.linspace(2, 1, n_epochs),
                               "val_loss": np.linspace(2.1, 1.2, n_epochs)})
        fig = plots.plot_training(_steps(8, np.linspace(4, 3, 8)), epochs)
        ticks = _visible_ticks(fig.axes[1])
        assert ticks and all(float(t).is_integer() for t in ticks), (n_epochs, ticks)
        assert 1 in ticks and n_epochs in ticks


def test_a_log_axis_says_so():
    fig = plots.plot_training(_steps(8, np.geomspace(100, 1, 8)), pd.DataFrame(columns=["epoch", "train_loss",
                                                                                     "val_loss"]))
    grad = fig.axes[3]
    assert grad.get_yscale() == "log" and "log scale" in grad.get_ylabel()
    quality = {"counts": [["duplicate", "A", "dropped", 5000], ["bad_ohl", "A", "changed", 3]]}
    ax = plots.plot_quality(quality).axes[0]
    assert ax.get_xscale() == "log" and "log scale" in ax.get_xlabel()
    ax = plots.plot_quality({"counts": [["duplicate", "A", "dropped", 5], ["bad_ohl", "A", "changed", 3]]}).axes[0]
    assert ax.get_xscale() == "linear" and "log" not in ax.get_xlabel()


def test_a_quality_figure_with_nothing_to_count_says_so_without_empty_axes():
    """The real daily bars drop nothing: quality.png was a 0-1 frame with no title and a grey line of text."""
    ax = plots.plot_quality({"counts": []}).axes[0]
    assert ax.get_title() == "data quality: rows per rule" and list(ax.get_xticks()) == list(ax.get_yticks()) == []
    assert [t.get_text() for t in ax.texts] == ["no row dropped, changed, masked or flagged"]


def test_the_decile_error_bars_say_what_they_are():
    deciles = pd.DataFrame({"decile": range(1, 11), "pred_mean": np.linspace(-1, 1, 10),
                            "realised_mean": np.linspace(-0.5, 0.5, 10), "realised_se": np.full(10, 0.2)})
    ax = plots.plot_deciles(deciles).axes[0]
    _, labels = ax.get_legend_handles_labels()
    assert any("1 s.e." in label for label in labels), labels  # not a 95% interval, which a reader would assume


def test_the_raw_volume_title_counts_the_zero_volumes_its_log_axis_cannot_show():
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    n = 200
    raw = pd.DataFrame({"symbol": np.repeat(["A", "B"], n // 2), "close": rng.uniform(10, 20, n),
                        "volume": rng.uniform(1e5, 1e6, n)})
    raw.loc[[3, 150, 151], "volume"] = 0.0  # what tests/data/real's MSFT has: days of zero volume
    fs = SimpleNamespace(split=np.zeros(n, dtype=np.int8), X=rng.normal(size=(n, 2)).astype(np.float32),
                         symbol_id=np.repeat([0, 1], n // 2), symbols=["A", "B"],
                         feature_names=["ret_1", "log_volume_rel"])
    fig = plots.plot_raw_vs_features(raw, fs)
    close, volume = fig.axes[0].get_title(), fig.axes[1].get_title()
    assert "not shown: 3 zero volumes kept: no rule counts them" in volume, volume
    assert "not shown" not in close, close
    # quality.png said "no row ... flagged" and nothing of them (tests/data/real: MSFT 1, NASDAQ 2): now the same count
    quality = {"counts": [], "ranges_before": {"volume": {"min": 0.0, "max": 1e6, "zero": 3}}}
    assert plots.plot_quality(quality).axes[0].get_title() == "data quality: rows per rule\n3 zero volumes kept: " \
        "no rule counts them"
    raw.loc[4, "volume"] = -1.0  # a negative volume is bad_volume's (set to 0, counted): not "kept"
    volume = plots.plot_raw_vs_features(raw, fs).axes[1].get_title()
    assert "not shown: 4 zero or negative" in volume, volume


def test_a_walk_forwards_training_figure_and_epochs_table_name_its_folds():
    """A walk-forward's metrics.jsonl counts steps and epochs across its folds (walkforward.stitched_metrics):
    the figure read 'epoch 1, 2, 3' for three one-epoch folds and drew no line where a fold restarts its model."""
    from tradelib.report import tables

    steps = _steps(24, np.linspace(4, 2, 24)).assign(fold=np.repeat([0, 1, 2], 8))
    epochs = pd.DataFrame({"epoch": [0, 1, 2], "step": [8, 16, 24], "fold": [0, 1, 2], "train_loss": [2.5, 1.9, 2.6],
                           "val_loss": [0.9, 0.8, 0.8], "epoch_time_s": 1.0, "samples_per_s": 300.0})
    fig = plots.plot_training(steps, epochs)
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["1\nfold 0", "1\nfold 1", "1\nfold 2"]
    for ax in (fig.axes[0], fig.axes[2], fig.axes[3]):
        assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":") == [8.5, 16.5]
    table = tables.epochs_table(epochs)
    assert table["fold"].tolist() == ["0", "1", "2"] and table["epoch"].tolist() == ["1", "1", "1"]
    single = tables.epochs_table(epochs.drop(columns="fold"))
    assert "fold" not in single and single["epoch"].tolist() == ["1", "2", "3"]


def test_the_sweep_figures_tick_labels_do_not_overlap():
    """A two-run sweep on a CPU (tiny profile): its data-wait panel's ticks read '0.000%0.050%0.100%...' as one."""
    table = pd.DataFrame({"run": ["batch_size=32", "batch_size=64"], "samples_per_s": [503.0, 2079.0],
                          "data_wait_share": [0.00094, 0.00218], "peak_mem_gb": [0.53, 0.53],
                          "cross_sectional_ic": [0.0324, 0.0096], "daily_ic": [0.005, -0.0014],
                          "pooled_ic": [0.005, -0.0014], "net_sharpe": [-70.15, -95.44],
                          "net_sharpe_ci_low": [-109.96, -145.86], "net_sharpe_ci_high": [-30.33, -45.02]})
    fig = plots.plot_sweep(table)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels()
                        if t.get_text() and lo <= t.get_position()[0] <= hi), key=lambda b: b.x0)
        for left, right in zip(boxes, boxes[1:]):
            assert left.x1 <= right.x0, (ax.get_title(), [t.get_text() for t in ax.get_xticklabels()])


def test_an_epoch_the_run_stopped_inside_reads_partial_in_the_figure_and_the_table():
    """tiny.yaml's max_steps 8 stops inside the first epoch: the report said 'no epoch finished' while the training
    figure and the epochs table showed 'epoch 1' with its time (3.2 s) as if an epoch had run."""
    from tradelib.report import tables

    epochs = pd.DataFrame({"epoch": [0.0], "step": [8], "train_loss": [1.96], "val_loss": [1.92],
                           "epoch_time_s": [3.2], "samples_per_s": [159.0], "partial": [True]})
    fig = plots.plot_training(_steps(8, np.linspace(4, 3, 8)), epochs)
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["1\n(partial)"]
    assert tables.epochs_table(epochs)["epoch"].tolist() == ["1 (partial)"]
    whole = pd.DataFrame({"epoch": [0.0, 1.0], "train_loss": [2.0, 1.9], "val_loss": [2.1, 2.0],
                          "epoch_time_s": 1.0, "samples_per_s": 300.0, "partial": [float("nan"), True]})
    assert tables.epochs_table(whole)["epoch"].tolist() == ["1", "2 (partial)"]


def test_the_ic_decay_legend_covers_none_of_its_bars_or_dots():
    """tiny.yaml's synthetic run: eleven lags left the legend no free corner, and it hid lag 7's rank IC."""
    ic = [-0.0547, -0.0014, -0.0034, 0.0719, 0.0721, 0.0800, -0.0040, -0.0045, 0.0440, 0.0517, 0.0190]
    rank = [-0.0489, -0.0031, -0.0113, 0.0727, 0.0730, 0.0920, 0.0236, -0.0157, 0.0172, -0.0030, -0.0080]
    decay = pd.DataFrame({"lag": range(11), "ic": ic, "rank_ic": rank, "significant": False})
    fig = plots.plot_ic_decay(decay, label="pooled IC", traded_lag=1)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legends = [lg.get_window_extent(renderer) for lg in [*fig.legends, ax.get_legend()] if lg is not None]
    assert len(legends) == 1
    dots = ax.transData.transform(np.c_[decay["lag"], decay["rank_ic"]])
    assert not [lag for lag, (x, y) in zip(decay["lag"], dots) if legends[0].contains(x, y)]
    assert not [p for p in ax.patches if p.get_window_extent(renderer).overlaps(legends[0])]


def test_the_gradient_norm_ticks_neither_collide_nor_mix_notations():
    """The random-walk market's run: norms 0.12 to 47 got 13 labels, '2e−01' '3e−01' '4e−01' running into each other
    beside '10^0' and '20'."""
    for lo, hi in ((0.13, 40.0), (0.2, 15.0), (0.05, 0.3), (1e-3, 5.0), (3.7, 4.3)):
        steps = _steps(50, np.geomspace(hi, lo, 50))
        fig = plots.plot_training(steps, pd.DataFrame(columns=["epoch", "train_loss", "val_loss"]))
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[3]
        low, high = ax.get_ylim()
        shown = sorted((t for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)
                        if t.get_text() and low <= t.get_position()[1] <= high), key=lambda t: t.get_position()[1])
        texts = [t.get_text() for t in shown]
        assert len(shown) >= 2 and not [t for t in texts if "e" in t or "mathdefault" in t], ((lo, hi), texts)
        boxes = [t.get_window_extent(renderer) for t in shown]
        assert all(a.y1 <= b.y0 for a, b in zip(boxes, boxes[1:])), ((lo, hi), texts)
        plt.close(fig)


def test_a_walk_forwards_loss_per_epoch_joins_no_two_folds():
    """Each fold trains its own model: the line from fold 0's last epoch to fold 1's first joined two models."""
    steps = _steps(24, np.linspace(4, 2, 24)).assign(fold=np.repeat([0, 1, 2], 8))
    epochs = pd.DataFrame({"epoch": [0, 1, 2, 3], "step": [4, 8, 16, 24], "fold": [0, 0, 1, 2],
                           "train_loss": [2.5, 2.2, 1.9, 2.6], "val_loss": [0.9, 0.85, 0.8, 0.8]})
    ax = plots.plot_training(steps, epochs).axes[1]
    fold_of = dict(zip(epochs["epoch"] + 1, epochs["fold"]))
    lines = [line for line in ax.lines if len(line.get_xdata())]
    assert {len({fold_of[x] for x in line.get_xdata()}) for line in lines} == {1}
    assert len(lines) == 6 and len({line.get_color() for line in lines}) == 2  # a colour per loss, as before
    _, labels = ax.get_legend_handles_labels()
    assert labels == ["training (mean over the epoch)", "validation (at its end)"]


def _shown_y_labels(ax) -> list[str]:
    ax.figure.canvas.draw()
    low, high = ax.get_ylim()
    return [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)
            if t.get_text() and low <= t.get_position()[1] <= high]


def test_the_gradient_norm_labels_are_plain_numbers_on_the_ticks_log_formatter_chooses():
    """plots.PlainLogFormatter (public matplotlib API, no private `_num_to_string` override): the labels the old
    subclass drew, read off its figures, for ranges over decades, within one, and below 1e-4 (unicode minus)."""
    expected = {(0.13, 40.0): ["0.1", "1", "10"], (0.2, 15.0): ["1", "10"], (0.05, 0.3): ["0.1", "0.06", "0.2", "0.3"],
                (1e-3, 5.0): ["0.001", "0.01", "0.1", "1"], (3.7, 4.3): ["3.7", "3.8", "3.9", "4", "4.1", "4.2", "4.3"],
                (2e-6, 3e-5): ["1e\u221205", "2e\u221206", "3e\u221206", "4e\u221206", "6e\u221206", "2e\u221205",
                               "3e\u221205"]}
    for (lo, hi), labels in expected.items():
        fig = plots.plot_training(_steps(50, np.geomspace(hi, lo, 50)),
                                  pd.DataFrame(columns=["epoch", "train_loss", "val_loss"]))
        assert _shown_y_labels(fig.axes[3]) == labels, (lo, hi)
        plt.close(fig)


def test_the_raw_close_panel_labels_plain_numbers_where_they_fit():
    """Closes of 40 to 90 (under a decade) read '4x10^1' .. '9x10^1' in mathtext; plain numbers where every tick
    fits one, 10^k where the range needs exponents (one notation on the axis either way)."""
    from types import SimpleNamespace

    n = 200
    fs = SimpleNamespace(split=np.zeros(n, dtype=np.int8), X=np.zeros((n, 2), dtype=np.float32),
                         symbol_id=np.repeat([0, 1], n // 2), symbols=["A", "B"],
                         feature_names=["ret_1", "log_volume_rel"])
    raw = pd.DataFrame({"symbol": np.repeat(["A", "B"], n // 2), "close": np.geomspace(40, 90, n),
                        "volume": np.geomspace(3e6, 1.1e10, n)})
    fig = plots.plot_raw_vs_features(raw, fs)
    assert _shown_y_labels(fig.axes[0]) == ["40", "50", "60", "70", "80", "90"]
    volume = _shown_y_labels(fig.axes[1])
    assert volume and all(t.startswith("$\\mathdefault{10^{") for t in volume), volume
    # the titles' spans in the axis's notation: "40 to 90" (was "4.0e+01 to 9.0e+01"), powers of ten for volume
    assert "spans 40 to 90" in fig.axes[0].get_title(), fig.axes[0].get_title()
    assert "spans $3.0\\times10^{6}$ to $1.1\\times10^{10}$" in fig.axes[1].get_title(), fig.axes[1].get_title()


def test_the_ic_panel_reads_past_a_few_outliers_and_a_thousand_bars():
    """The real daily run's ic.png: 929 pooled-IC shares, a few at -10.6 and 9.7, the rest mostly within +-2, drawn
    0.6 px wide. The axis now spans the bulk, each period beyond it marked at the edge it passes (a triangle at its
    date), its count and extremes in the legend; the bars are still every period's own value; past MANY_BARS each
    bar has an edge so that it shows."""
    rng = np.random.default_rng(1)
    n = 900
    when = pd.date_range("2015-01-01", periods=n, freq="B")
    ic = rng.normal(0, 0.5, n)
    ic[[0, 100, 400]], ic[700] = [8.0, 10.5, 9.0], -12.0
    ic_df = pd.DataFrame({"period": when, "ic": ic, "rank_ic": rng.normal(0, 0.5, n)})
    fig = plots.plot_ic(ic_df)
    ax = fig.axes[0]
    bars = ax.collections[0]
    heights = [p.vertices[1, 1] for p in bars.get_paths()]  # (x - w/2, 0), (x - w/2, h), ...
    assert heights == pytest.approx(ic, abs=0) and bars.get_linewidths()[0] > 0
    low, high = ax.get_ylim()
    assert -3 < low < -1 and 1 < high < 3, (low, high)
    inside = np.delete(ic, [100, 400, 700])
    assert ((inside > low) & (inside < high)).mean() > 0.99
    marks = {line.get_marker(): line for line in ax.lines if line.get_marker() in ("^", "v")}
    above, below = marks["^"], marks["v"]
    up = np.flatnonzero((ic > high) | (ic_df["rank_ic"].to_numpy() > high))
    down = np.flatnonzero((ic < low) | (ic_df["rank_ic"].to_numpy() < low))
    assert list(above.get_xdata()) == list(when[up]) and list(below.get_xdata()) == list(when[down])
    assert {0, 100, 400} <= set(up) and 700 in set(down)
    assert set(above.get_ydata()) == {high} and set(below.get_ydata()) == {low}
    _, labels = ax.get_legend_handles_labels()
    assert f"{len(up) + len(down)} off the axis\n(-12 to 10.5)" in labels
    so_far = fig.axes[1]  # the mean so far starts at the first period's 8: the rest of it within a few tenths
    means = ic_df[["ic", "rank_ic"]].expanding().mean()
    for line, col in zip(so_far.lines[:2], ("ic", "rank_ic")):
        assert np.allclose(line.get_ydata(), means[col], rtol=0, atol=1e-12)
    low, high = so_far.get_ylim()
    assert high < 1 and [line.get_xdata()[0] for line in so_far.lines if line.get_marker() == "^"] == [when[0]]
    plt.close(fig)
    ok = plots.plot_ic(pd.DataFrame({"period": when[:50], "ic": np.linspace(-0.9, 0.9, 50), "rank_ic": 0.1}))
    ax = ok.axes[0]
    assert not [line for line in ax.lines if line.get_marker() in ("^", "v")]
    assert ax.get_ylim()[0] < -0.9 and ax.get_ylim()[1] > 0.9 and ax.collections[0].get_linewidths()[0] == 0


def test_no_throughput_bar_label_sits_on_the_training_line():
    """A device loader at 870 samples/s under this run's training line at 900: its label '870' was struck through.
    Such a label moves inside its bar; the others stay above theirs, every label still its bar's value."""
    sweep = pd.DataFrame({"loader": ["dataloader", "device", "dataloader", "device"], "batch_size": [64, 64, 256, 256],
                          "samples_per_s": [2258.0, 870.0, 3000.0, 1500.0], "data_wait_share": [0.2, 0.0, 0.1, 0.0]})
    for training in (880.0, 900.0, 930.0, 1200.0):
        fig = plots.plot_loader_sweep(sweep, training=(training, "this run"))
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        line = ax.transData.transform((0, training))[1]
        labels = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
        assert set(labels) == {"2,258", "870", "3,000", "1,500"}
        assert not [text for text, box in labels.items() if box.y0 <= line <= box.y1], training
        top = {p.get_height(): ax.transData.transform((0, p.get_height()))[1] for p in ax.patches}
        assert labels["3,000"].y0 >= top[3000.0]  # untouched: above its bar
        plt.close(fig)


def _ringed(ax) -> list[tuple[float, float]]:
    """The points the cost figure rings as implausible (its scatter with that legend label)."""
    rings = [c for c in ax.collections if "implausible" in str(c.get_label())]
    return [tuple(p) for ring in rings for p in ring.get_offsets()]


def test_the_cost_figure_rings_the_net_sharpes_the_report_flags_and_only_those():
    # the synthetic quick run: gross 36.2, net -51.9 at 5 bps, -267 at 20 bps, flagged in the text, bare on costs.png
    from tradelib.report.backtest import net_sharpe_flags

    net = np.array([36.2, 18.4, 0.7, -51.9, -134.5, -267.4])

    def costs(net: np.ndarray, gross: float) -> pd.DataFrame:  # as cost_sensitivity gives them
        return pd.DataFrame({"cost_bps": [0.0, 1, 2, 5, 10, 20], "net_sharpe": net, "net_sharpe_ci_low": net - 18,
                             "net_sharpe_ci_high": net + 18, "net_annual_return": 0.1, "net_annual_return_ci_low": 0.0,
                             "net_annual_return_ci_high": 0.2, "net_total_return": 0.01,
                             "net_sharpe_implausible": [bool(net_sharpe_flags(v, gross)) for v in net]})

    ax = plots.plot_cost_sensitivity(costs(net, 36.2), 2.0, cost_bps=5.0).axes[0]
    assert _ringed(ax) == [(0.0, 36.2), (1.0, 18.4), (5.0, -51.9), (10.0, -134.5), (20.0, -267.4)]
    assert any("implausible" in t.get_text() for t in ax.get_legend().get_texts())
    assert tables.costs_table(costs(net, 36.2))["net Sharpe"].tolist() == [
        "36.20 (implausible)", "18.40 (implausible)", "0.70", "-51.90 (implausible)", "-134.50 (implausible)",
        "-267.40 (implausible)"]  # the table printed -267.40 bare
    # a gross Sharpe within +-10: the costs explain a net one far below -10 (`costs_explain`), nothing is ringed
    ax = plots.plot_cost_sensitivity(costs(net / 10, 3.6), 2.0, cost_bps=5.0).axes[0]
    assert _ringed(ax) == [] and not tables.costs_table(costs(net / 10, 3.6))["net Sharpe"].str.contains("impl").any()


def test_the_data_wait_panel_reads_one_way_on_its_axis_and_bars_and_never_a_nonzero_wait_as_zero():
    # the synthetic quick run's sweep: the axis read "12.0%" beside bars of "11%" and "0%" (a 0.27% wait)
    sweep = pd.DataFrame({"loader": ["dataloader", "device"], "batch_size": [64, 64],
                          "samples_per_s": [956.0, 814.0], "data_wait_share": [0.107988, 0.002729]})
    fig = plots.plot_loader_sweep(sweep)
    fig.canvas.draw()
    ax = fig.axes[1]
    assert [t.get_text() for t in ax.texts] == ["11%", "0.27%"]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert "12%" in ticks and not any(".0%" in t for t in ticks)
    from tradelib.report.tables import share
    assert [share(v) for v in (0.0, 1.6e-4, 1e-6, 0.025, 0.0995)] == ["0%", "0.016%", "<0.01%", "2.5%", "10%"]
    # 02's table and the sweep's read as the figure does (they printed a 0.04% wait as "0.0%")
    assert tables.sweep_table(sweep.assign(data_wait_share=[0.107988, 0.0004]))["data wait"].tolist() == ["11%",
                                                                                                         "0.04%"]
    from tradelib.sweep import FORMATS

    assert FORMATS["data_wait_share"](0.0004) == "0.04%"


def test_the_ic_legend_shows_both_bar_colours_whichever_bar_comes_first():
    # ic.png's "IC" key took the first bar's colour: red in the synthetic run, green in the real daily one
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Rectangle

    when = pd.date_range("2024-01-01", periods=40, freq="B")
    keys = []
    for first in (-0.3, 0.3):
        ic = np.r_[first, np.linspace(-0.2, 0.2, 39)]
        legend = plots.plot_ic(pd.DataFrame({"period": when, "ic": ic, "rank_ic": ic / 2})).axes[0].get_legend()
        keys.append([to_rgb(p.get_facecolor()) for p in legend.findobj(Rectangle)])  # every key patch drawn
    assert keys[0] == keys[1] == [to_rgb("tab:green"), to_rgb("tab:red")], keys


def test_the_sweep_figure_hatches_the_configurations_timed_on_a_busy_machine():
    # the real daily run's 02: the device loader's 24 samples/s (busy, "not comparable" in the table) beside
    # training's 176 read as a plain figure
    sweep = pd.DataFrame({"loader": ["dataloader", "device"], "batch_size": [64, 64], "samples_per_s": [258.0, 24.0],
                          "data_wait_share": [0.11, 0.0005], "busy_note": [None, "timed while other processes ..."]})
    fig = plots.plot_loader_sweep(sweep, training=(176.0, "this run"))
    hatches = [p.get_hatch() or "" for p in fig.axes[0].patches]
    assert len(hatches) == 2 and not hatches[0] and hatches[1], hatches  # the busy device loader's bar alone
    assert "timed on a busy machine: not comparable" in [t.get_text() for t in fig.legends[0].get_texts()]
    fig = plots.plot_loader_sweep(sweep.drop(columns="busy_note"))
    assert not any(p.get_hatch() for p in fig.axes[0].patches)
    assert not any("busy" in t.get_text() for t in fig.legends[0].get_texts())
