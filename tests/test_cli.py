"""The CLI documents itself from Config, names the nearest command or option to a typo, and renders a report."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from tradelib.cli import build_parser, main
from tradelib.config import Config
from tradelib.sweep import MANAGED

COMMAND_GROUPS = {
    "prepare": ("data", "features"),
    "train": ("data", "features", "model", "training", "system"),
    "pipeline": ("data", "features", "model", "training", "system", "measure", "profile", "report"),
    "bench": ("data", "features", "model", "training", "system", "measure", "bench"),
    "report": ("report",),
    "sweep": ("data", "features", "model", "training", "system", "report"),
}


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMAND_GROUPS))
def test_help_lists_every_parameter_with_its_type_default_and_help(command, capsys):
    text = help_text(command, capsys)
    assert text.startswith(f"usage: tradelib {command} ")
    flat = " ".join(text.split())  # the help is wrapped
    fields = [f for f in dataclasses.fields(Config) if f.metadata["group"] in COMMAND_GROUPS[command]
              and f.type in ("int", "float", "str", "bool")]
    assert len(fields) >= 6
    for f in fields:
        default = f"{f.default:_}" if f.type == "int" and abs(f.default) >= 10_000 else repr(f.default)
        listed = f"    {f.name}: {f.type} = {default}\n" in text
        if command == "sweep" and f.name in MANAGED:  # the sweep sets run_id and resume of each run itself
            assert not listed, f.name
            continue
        assert listed and " ".join(f.metadata["help"].split()) in flat, f.name
    assert "[>=1]" in flat or command == "report"  # bounds where the help does not give them


def test_the_program_is_tradelib_and_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: tradelib ")
    for command in ("prepare", "train", "pipeline", "report", "bench"):
        assert re.search(rf"^\s+{command}\s+\S", text, re.M), command


@pytest.mark.parametrize("argv,hint", [
    (["trian"], "did you mean 'train'?"),
    (["pipline"], "did you mean 'pipeline'?"),
    (["prepare", "--forse-recreate"], "did you mean --force-recreate?"),
    (["report", "--compare-wth", "x"], "did you mean --compare-with?"),
    (["bench", "--jsn", "x.json"], "did you mean --json?"),
    (["train", "-p", "batchsize", "3"], "did you mean 'batch_size'?"),
])  # fmt: skip
def test_a_typo_gets_the_nearest_name_in_one_line(argv, hint, capsys):
    try:
        code = main(argv)  # a bad parameter: main's one line
    except SystemExit as done:  # a bad command or option: argparse's, made one line
        code = done.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and hint in err, err
    if argv[1:2] and argv[1].startswith("--"):  # the command's own help, not the top level's
        assert f"(see `tradelib {argv[0]} --help`)" in err


def test_pipeline_names_the_nearest_parameter(capsys):
    assert main(["pipeline", "-p", "batchsize", "3"]) == 2
    assert "did you mean 'batch_size'?" in capsys.readouterr().err


@pytest.mark.slow
def test_report_renders_04_for_a_run_into_its_folder(outputs, capsys):
    from tradelib.train.run import train

    from .conftest import TINY

    for run_id in ("first", "second"):
        train(Config(**{**TINY, "run_id": run_id, "max_steps": 6}), progress=False)
    assert main(["report", "second", "--compare-with", "first", "-p", "cost_bps", "2"]) == 0
    out = capsys.readouterr().out
    run = outputs / "second"
    assert f"report: {run / 'report.html'}" in out and (run / "04_report.ipynb").exists()
    report = json.loads((run / "report.json").read_text())
    assert report["summary"]["cost_bps"] == 2.0 and report["compare"]["run_id"] == "first"
    html = (run / "report.html").read_text()
    assert "Against run <code>first</code>" in html and "from tradelib" not in html
    assert main(["report", "no-such-run"]) == 2
    assert "run 'no-such-run' not found" in capsys.readouterr().err
    (outputs / "unfinished").mkdir()
    (outputs / "unfinished" / "metrics.jsonl").write_text("")
    assert main(["report", "unfinished"]) == 2
    assert "has not finished" in capsys.readouterr().err


def _finished_run(folder, rows: int = 3):
    """A run folder as `report` first checks it: summary.json and predictions.parquet (`rows` rows)."""
    import pandas as pd

    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"window": 200, "finished": "2024-01-01T00:00:00"}))
    pd.DataFrame({"row": range(rows), "prediction": [0.0] * rows}).to_parquet(folder / "predictions.parquet")
    (folder / "04_report.ipynb").write_text("the run's own report")
    return folder


def test_report_refuses_a_bad_compare_with_before_the_notebook_runs(outputs, capsys):
    """`report RUN --compare-with NOSUCH` used to fail inside 04 and overwrite RUN's 04_report.ipynb."""
    run = _finished_run(outputs / "run")
    assert main(["report", "run", "--compare-with", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: compare_with: run 'nosuch' not found") and "run folder" in err, err
    (outputs / "unfinished").mkdir()
    assert main(["report", "run", "--compare-with", "unfinished"]) == 2
    assert "compare_with: run 'unfinished' has no summary.json" in capsys.readouterr().err
    assert (run / "04_report.ipynb").read_text() == "the run's own report"


def test_report_of_a_run_without_test_predictions_says_so(outputs, capsys):
    run = _finished_run(outputs / "empty", rows=0)
    assert main(["report", "empty"]) == 2
    err = capsys.readouterr().err
    assert "run 'empty' has no test predictions" in err and "held no window of 200 bars" in err, err
    assert "calendar" not in err and (run / "04_report.ipynb").read_text() == "the run's own report"
    from tradelib.report.inputs import ReportSettings, load_inputs
    from tradelib.runs import NoPredictions

    with pytest.raises(NoPredictions, match="no test predictions"):  # 04 run alone on it says the same
        load_inputs(run, ReportSettings.of(Config()))


def test_report_names_another_notebooks_parameter_as_not_a_report_parameter(capsys):
    assert main(["report", "-p", "hidden", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not a report parameter: hidden (-p) is 02_profiling and 03_train's"), err
    assert "no notebook declares" not in err
    assert main(["report", "-p", "hiden", "8"]) == 2
    assert "unknown parameter(s) hiden (-p): no notebook declares them" in capsys.readouterr().err


@pytest.mark.parametrize("skip,only,runs", [("02", "", "03,04"), ("", "01,03", "03"), ("", "", "03,04")])
def test_the_pipelines_resume_hint_is_a_command_the_cli_accepts(skip, only, runs):
    """A pipeline stopped in 03_train prints a command that resumes it: --only the training and what follows it
    (never --skip beside --only, which the CLI refuses), with the run's own settings."""
    import shlex

    from tradelib.config import load_config
    from tradelib.pipeline import resume_pipeline, select_notebooks

    cfg = Config(window=16, synth_bars=1500, cost_bps=2.0, run_id="p1")
    hint = resume_pipeline(cfg, "p1", select_notebooks(skip, only))
    args = build_parser().parse_args(shlex.split(hint)[3:])
    assert args.command == "pipeline" and args.only == runs and not args.skip
    assert select_notebooks(args.skip, args.only) == tuple(n for n in ("03_train", "04_report") if n[:2] in runs)
    back = load_config(args.files, [tuple(p) for p in args.params])
    assert (back.window, back.synth_bars, back.run_id, back.resume) == (16, 1500, "p1", True)
    assert back.cost_bps == (2.0 if "04" in runs else 5.0)  # 04_report's own settings where it runs


def test_a_parameter_the_command_does_not_read_is_noted_as_ignored(tmp_path, capsys):
    """`train -p cost_bps 2` trained as without it, saying nothing (the report reads it); now a note names it and
    its group. Parameters the command reads, and unknown names (load_config's error), get no note."""
    missing = str(tmp_path / "nowhere.csv")
    assert main(["train", "-p", "cost_bps", "2", "-p", "profile_seconds", "5", "-p", "epochs", "2",
                 "-p", "data_path", missing]) == 2  # (the data is nowhere: refused before any work)
    err = capsys.readouterr().err
    assert err.startswith("note: train does not use -p cost_bps (report), profile_seconds (profile): ignored"), err
    assert main(["prepare", "-p", "window", "8", "-p", "data_path", missing]) == 2
    assert "note:" not in capsys.readouterr().err
    assert main(["report", "-p", "hidden", "8"]) == 2  # the report refuses them itself, saying whose they are
    err = capsys.readouterr().err
    assert "note:" not in err and "not a report parameter" in err
