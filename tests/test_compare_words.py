"""04's line setting this run beside `compare_with` (`words._compare_lines`)."""

from tradelib.report import words


def test_both_runs_timed_busy_names_the_other_by_its_id_and_this_one_in_words():
    # read "(not comparable: `20261207-191337` and `this run` timed ...)": 'this run' set as if it were a run id
    side = {"other": 307.0, "this": 123.0, "ratio": 0.4}
    report = {"summary": {"headline_ic": "pooled"},
              "compare": {"run_id": "20261207-191337", "other": {"loader": "device", "busy_note": "busy"},
                          "this": {"busy_note": "busy"},
                          "metrics": {"samples_per_s": side, "pooled_ic": {"other": 0.01, "this": 0.07},
                                      "net_sharpe": {"other": -45.0, "this": 13.4}}}}
    line = "".join(words._compare_lines(report))
    assert "(not comparable: `20261207-191337` and this run timed while" in line, line
