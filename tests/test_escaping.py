"""Text from the data or the parameters never becomes live HTML in report.html or the sweep's table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tradelib.config import Config
from tradelib.report import tables

EVIL_SYMBOL = "<img src=x onerror=alert(1)>"
EVIL_COLUMN = "</script><img src=y onerror=alert(2)>"


def test_report_tables_escape_cells_and_column_names():
    frame = pd.DataFrame({"symbol": [EVIL_SYMBOL, "AAA"], EVIL_COLUMN: [1.5, 2.0]})
    page = tables.show(frame, caption="per symbol").to_html()
    assert "<img" not in page and "</script>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;/script&gt;" in page


def test_the_sweep_page_escapes_what_the_user_named(outputs):
    from tradelib import sweep

    plan = sweep.make_plan(None, [("max_steps", "1,2")], sweep_id=EVIL_SYMBOL.replace("/", "_"))
    table = pd.DataFrame([{"max_steps": v, "run": n, "status": "failed"} for v, n in zip([1, 2], plan.names)])
    table = table.reindex(columns=["max_steps", "run", "status", "busy", *sweep.NUMBERS])
    plan.folder.mkdir(parents=True)
    page = sweep.write_outputs(plan, table)["html"].read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def market_csv(path, symbols: list[str], bars: int = 1500, seed: int = 0) -> None:
    """A random-walk OHLCV CSV of 5-minute bars, with one extra column the loader ignores and names."""
    rng = np.random.default_rng(seed)
    parts = []
    for s in symbols:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, bars)))
        parts.append(pd.DataFrame({
            "timestamp": pd.date_range("2024-01-01", periods=bars, freq="5min", tz="UTC"), "symbol": s,
            "open": close, "high": close * 1.001, "low": close * 0.999, "close": close,
            "volume": rng.integers(100, 1000, bars), EVIL_COLUMN: 0}))
    pd.concat(parts).to_csv(path, index=False)


@pytest.mark.slow
def test_a_symbol_named_like_markup_is_text_in_report_html(outputs, tmp_path):
    from tradelib.cli import main
    from tradelib.train.run import train

    from .conftest import TINY

    data = tmp_path / "prices.csv"
    market_csv(data, ["AAA", "BBB", EVIL_SYMBOL])
    train(Config(**{**TINY, "data_path": str(data), "run_id": "markup", "max_steps": 6}), progress=False)
    assert main(["report", "markup"]) == 0
    page = (outputs / "markup" / "report.html").read_text()
    assert EVIL_SYMBOL not in page and "onerror=alert(1)>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # the per-symbol table shows it, as text
    assert "<img src=y" not in page


# what a colleague's summary.json may hold where the report's words name the run, its model, device and loader
EVIL_SUMMARY = {"run_id": "q`<img src=y onerror=alert(5)>`", "device_name": "<script>alert(6)</script>",
                "loader": "dev`<img src=z onerror=alert(7)>`", "model": "<b>m</b>|*x*"}


def rendered(markdown: str) -> str:
    """The markdown as report.html shows it (nbconvert renders 04's Markdown outputs with mistune)."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    return markdown2html_mistune(markdown)


def test_the_report_words_show_a_run_folders_text_as_text(tmp_path):
    from tradelib.report import inputs as ri
    from tradelib.report import report as rp
    from tradelib.report import words

    from .test_report import make_run

    other, _ = make_run(tmp_path / "other", seed=1, summary_extra=EVIL_SUMMARY)
    run, feats = make_run(tmp_path / "run", summary_extra=EVIL_SUMMARY)
    page = rendered(words.summary_markdown(rp.build_report(run, compare_with=other, settings=ri.ReportSettings.of(),
                                                           **feats)))
    assert "<img" not in page and "<script" not in page and "<b>" not in page and "<em>" not in page
    assert "<code>q`&lt;img src=y onerror=alert(5)&gt;`</code>" in page  # the whole id, one code span
    assert "<code>dev`&lt;img src=z onerror=alert(7)&gt;`</code>" in page
    assert "&lt;script&gt;alert(6)&lt;/script&gt;" in page and "&lt;b&gt;m&lt;/b&gt;|*x*" in page


def test_the_sweep_markdown_table_shows_its_values_as_text():
    from tradelib import sweep

    table = pd.DataFrame([{"data_path": "a|<img src=x onerror=alert(1)>.csv", "run": "r0", "status": "done"}])
    table = table.reindex(columns=["data_path", "run", "status", *sweep.NUMBERS])
    page = rendered(sweep.markdown_table(table))
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<td>") == page.count("<th>")  # the | in the value split no cell


def test_the_report_words_show_a_feature_caches_calendar_as_text(tmp_path):
    """The annualisation's words can be a feature cache's (its manifest's calendar, when the test span is short):
    the cache a colleague's summary.json names is a file like any other."""
    from tradelib.report import inputs as ri
    from tradelib.report import report as rp
    from tradelib.report import words

    from .test_report import make_run

    run, feats = make_run(tmp_path / "run")
    rep = rp.build_report(run, settings=ri.ReportSettings.of(), **feats)
    rep["conventions"]["annualisation"]["description"] = EVIL_SYMBOL
    for page in (rendered(words.conventions_markdown(rep)), rendered(words.book_markdown(rep))):
        assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_04_names_the_sweep_a_run_belongs_to_as_text(tmp_path):
    """04's section on the sweep around a run names the sweep's folder: a backtick in its name ended the code span
    it stood in and let the rest through as HTML."""
    import matplotlib.pyplot as plt
    import nbformat

    from tradelib import sweep
    from tradelib.paths import notebooks_dir

    folder = tmp_path / "s`<img src=x onerror=alert(1)>`"
    folder.mkdir()
    table = pd.DataFrame([{"max_steps": 1, "run": "r0", "status": "done"}])
    table.reindex(columns=["max_steps", "run", "status", *sweep.NUMBERS]).to_csv(folder / "sweep.csv", index=False)
    plt.imsave(folder / "sweep.png", np.zeros((2, 2)))
    cell = next(c.source for c in nbformat.read(notebooks_dir() / "04_report.ipynb", as_version=4).cells
                if "sweep.read_sweep" in c.source)
    shown: list = []
    exec(cell, {"run": folder / "r0", "tables": tables, "Markdown": rendered, "display": shown.append})
    assert "<img" not in shown[0] and "&lt;img src=x onerror=alert(1)&gt;" in shown[0]


def test_the_report_words_show_a_runs_dates_and_02s_notes_as_text(tmp_path):
    """The split dates come from the run's config when the feature cache is gone (a text that is no time is shown
    as it came), a walk-forward's window from its summary.json, and 02's notes from the run folder's
    batch_size_sweep.csv: files, all of them."""
    from tradelib.report import inputs as ri
    from tradelib.report import report as rp
    from tradelib.report import words

    from .test_report import make_run

    dated = {"config": {"train_end": EVIL_SYMBOL, "val_end": "2024-05-02"}}
    run, feats = make_run(tmp_path / "run", summary_extra=dated)
    rep = rp.build_report(run, settings=ri.ReportSettings.of(), **feats)
    assert rep["conventions"]["splits"]["method"] == "dates"
    walk = {**rep, "conventions": {**rep["conventions"], "splits": {
        **rep["conventions"]["splits"], "method": "walk-forward", "fold_window": EVIL_SYMBOL}}}
    sweep = pd.DataFrame({"loader": [EVIL_SYMBOL, "device"], "batch_size": [64, 64], "busy_note": ["busy", None],
                          "other_cores": [1.0, None], "mfu_invalid_reason": [EVIL_SYMBOL, None]})
    for markdown in (words.conventions_markdown(rep), words.conventions_markdown(walk), *words.sweep_notes(sweep)):
        page = rendered(markdown)
        assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
