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
