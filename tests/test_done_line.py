"""The line a finished training ends with (`train.run.done_line`)."""

from pathlib import Path

from tradelib.train.run import done_line


def test_each_ic_has_the_oracle_of_its_own_family_beside_it():
    # the 03_train line of a tiny synthetic run: the cross-sectional oracle (0.0726) stood after the pooled IC
    summary = {"samples_per_s": 307.0, "ic_lag": 1, "cross_sectional_ic": 0.0096, "pooled_ic": -0.0014,
               "oracle_cross_sectional_ic": 0.0726, "oracle_daily_ic": 0.1601, "oracle_pooled_ic": 0.1601}
    line = done_line(summary, Path("/runs/r"))
    assert "cross-sectional 0.0096 (oracle 0.0726), pooled -0.0014 (oracle 0.1601)" in line, line
    real = {**summary, "oracle_cross_sectional_ic": None, "oracle_pooled_ic": None}  # data without a planted signal
    assert "oracle" not in done_line(real, Path("/runs/r"))
