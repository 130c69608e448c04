"""What the notebooks' own words say, against what the code computes."""

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_04_calls_the_per_day_ic_a_sessions_not_a_utc_dates():
    # metrics.ic_by_day groups by session_dates (a day from the market's start of day), not by the UTC date
    cells = json.loads((NOTEBOOKS / "04_report.ipynb").read_text())["cells"]
    words = next("".join(c["source"]) for c in cells if "**per-day** IC" in "".join(c["source"]))
    assert "UTC day" not in words and "session" in words
