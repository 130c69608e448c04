import pytest

from tradelib.config import Config, load_config, notebook_config, parse_value


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("batch_size: 512\nmodel: tcn\n")
    cfg = load_config([str(f)], [("batch_size", "1024"), ("lr", "1e-4"), ("resume", "True")])
    assert cfg.batch_size == 1024 and cfg.model == "tcn" and cfg.lr == 1e-4 and cfg.resume is True
    assert cfg.epochs == Config().epochs


def test_unknown_parameter_names_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        Config.from_dict({"batchsize": 3})


def test_wrong_type_is_refused():
    with pytest.raises(ValueError, match="'epochs' expects int"):
        Config.from_dict({"epochs": "many"})
    with pytest.raises(ValueError, match="expects int"):
        Config.from_dict({"epochs": 1.5})


def test_parse_value_reads_yaml_scalars_like_papermill():
    assert parse_value("1024") == 1024 and parse_value("1e-3") == 1e-3 and parse_value("True") is True
    assert parse_value("lstm") == "lstm"


def test_a_notebook_config_picks_only_config_names():
    cfg = notebook_config({"batch_size": 8, "force_recreate": True, "__name__": "x"}, "03_train")
    assert cfg.batch_size == 8


def test_a_near_miss_typed_into_a_jupyterlab_cell_is_said_and_changes_nothing(capsys):
    """In JupyterLab no papermill injection names the parameters, so `batchsize = 1024` in a cell would be
    silently ignored; a plain value whose name is nearly a parameter is said, an unrelated variable is not."""
    cfg = notebook_config({"batchsize": 1024, "batch_size": 8, "my_result": 3.0, "In": [], "np": pytest}, "03_train")
    assert cfg.batch_size == 8
    assert capsys.readouterr().out.strip() == ("03_train: batchsize = 1024 is no parameter and changes nothing "
                                               "(did you mean 'batch_size'?)")


def test_a_config_written_before_a_setting_reads_as_what_the_run_did():
    """A finished sweep run or a checkpoint from before `target_delay` learned the return from t: it reads as
    target_delay 0 (a sweep goes on with that, a resume is refused with 1); a setting whose default is what
    every older run did (`heads`) takes its default."""
    from tradelib import sweep
    from tradelib.config import as_written, run_setting
    from tradelib.train import checkpoint

    old = Config(target_delay=0).to_dict()
    del old["target_delay"], old["heads"]
    assert as_written(old)["target_delay"] == run_setting(old, "target_delay") == 0
    assert as_written(old)["heads"] == run_setting(old, "heads") == Config().heads
    assert sweep._differences(old, Config(target_delay=0).to_dict()) == []
    assert sweep._differences(old, Config().to_dict()) == ["target_delay: 0 -> 1"]
    ck = {"cache_key": "k", "config": old}
    checkpoint.check_resumable(ck, "step-4.pt", Config(target_delay=0), "k", 1, "r")
    with pytest.raises(ValueError, match="target_delay was 0, now 1"):
        checkpoint.check_resumable(ck, "step-4.pt", Config(), "k", 1, "r")


def test_a_notebook_ignores_another_notebooks_parameter_and_refuses_a_typo(capsys):
    """papermill -f params/quick.yaml on 01 or 04: the profile's training and report parameters are Config
    fields that other notebooks declare, so this one ignores them with one note (and keeps its defaults); a name
    no notebook or Config knows is still a typo, refused with the nearest name (also another notebook's)."""
    from tradelib.config import ConfigError

    injected = "# Parameters\nwindow = 16\nhidden = 8\ncost_bps = 2.0\nbench_models = 'mlp'\n"
    ns = {"window": 16, "hidden": 8, "cost_bps": 2.0, "bench_models": "mlp", "run_id": "", "In": ["", injected]}
    cfg = notebook_config(ns, "01_data_cleaning")
    assert cfg.window == 16 and cfg.hidden == Config().hidden and cfg.cost_bps == Config().cost_bps
    assert capsys.readouterr().out.strip() == ("01_data_cleaning ignores hidden, cost_bps, bench_models: other "
                                               "notebooks' or commands' parameters, not its own")
    with pytest.raises(ConfigError, match=r"01_data_cleaning: unknown parameter 'hiden' \(did you mean 'hidden'\?\)"):
        notebook_config({**ns, "hiden": 8, "In": ["", "# Parameters\nhiden = 8\n"]}, "01_data_cleaning")
    with pytest.raises(ConfigError, match=r"04_report: unknown parameter 'cost_bsp' \(did you mean 'cost_bps'\?\)"):
        notebook_config({"cost_bsp": 2.0, "In": ["", "# Parameters\ncost_bsp = 2.0\n"]}, "04_report")


def test_a_notebooks_data_path_that_is_nowhere_names_the_parameter_and_both_places(tmp_path, monkeypatch):
    """JupyterLab's kernel runs in notebooks/: a relative data_path is looked for there, then at the checkout's
    root. Where it is in neither, the notebook's first cell says so as the CLI does; the kernel's DataError named
    only notebooks/<path>, as if the root had not been tried."""
    from tradelib.config import ConfigError
    from tradelib.paths import repo_root

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        notebook_config({"data_path": "data/prices.csv"}, "01_data_cleaning")
    said = str(err.value)
    assert said.startswith("01_data_cleaning: data_path 'data/prices.csv' does not exist"), said
    assert str(tmp_path / "data/prices.csv") in said and str(repo_root() / "data/prices.csv") in said
    assert notebook_config({"data_path": "tests/data/real"}, "01_data_cleaning").data_path == str(
        repo_root() / "tests/data/real")  # found at the root from anywhere
    notebook_config({"data_path": "data/prices.csv"}, "04_report")  # 04 takes no data_path: nothing to check

def test_a_value_out_of_range_in_a_yaml_file_names_the_file(tmp_path):
    from tradelib.config import ConfigError

    f = tmp_path / "bad.yaml"
    f.write_text("batch_size: -3\n")
    with pytest.raises(ConfigError, match=rf"^{f}: parameter 'batch_size' is -3; it must be >= 1$"):
        load_config([str(f)])
    with pytest.raises(ConfigError, match=r"^parameter 'batch_size' is -3; it must be >= 1$"):  # -p: as before
        load_config([str(f)], [("batch_size", "-3")])


def test_the_resume_command_names_the_runs_own_settings_quoted_and_reads_back_as_the_same_config():
    """Only the settings that differ from the defaults (and that 03_train declares), quoted for a shell where
    they need it; read back by the CLI's parser they give the same Config, with run_id and resume."""
    import shlex

    from tradelib.cli import build_parser
    from tradelib.config import resume_command

    cfg = Config(window=16, lr=3e-4, train_end="2022-12-31 23:00", val_end="2023-06-30", cuda_graphs="false",
                 vol_scaled_target=True, date_format="", progress="lines", cost_bps=2.0, run_id="old", resume=True)
    command = resume_command(cfg, "r 1")
    assert command == ("python -m tradelib train -p window 16 -p vol_scaled_target True -p train_end "
                       "'2022-12-31 23:00' -p val_end 2023-06-30 -p lr 0.0003 -p cuda_graphs false "
                       "-p run_id 'r 1' -p resume True")
    args = build_parser().parse_args(shlex.split(command)[3:])
    back = load_config(args.files, [tuple(p) for p in args.params])
    assert back == Config(**{**cfg.to_dict(), "run_id": "r 1", "progress": "auto", "cost_bps": 5.0})


def test_the_resume_command_of_a_torchrun_worker_starts_torchrun_with_as_many_processes(monkeypatch):
    """A run started as `torchrun --nproc_per_node 2 -m tradelib train ...` printed `python -m tradelib train ...`
    on a stop, which one process runs and the resume refuses (2 processes wrote the checkpoint). A run launched
    by `n_gpus` resumes with the command as before: its -p n_gpus 2 launches torchrun again."""
    from tradelib.config import resume_command

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_command(Config(window=16), "r").startswith(
        "torchrun --standalone --nproc_per_node 2 -m tradelib train -p window 16 ")
    assert resume_command(Config(window=16, n_gpus=2).to_dict(), "r").startswith("python -m tradelib train ")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resume_command(Config(n_gpus=16), "r").startswith("torchrun --nnodes 2 --nproc_per_node 8 [")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resume_command(Config(), "r") == "python -m tradelib train -p run_id r -p resume True"


def test_a_parameter_file_of_nested_aliases_is_refused_at_once(tmp_path):
    """A 'billion laughs' file: nine levels of nine aliases are 387 million strings once the value is printed in an
    error or saved with the run; the read hung. Aliases are refused naming the file and line (here three levels,
    which old code read), and so is a value nested past Python's recursion limit; an anchor alone still reads."""
    levels = ['  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 3)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("extra:\n" + "\n".join(levels) + "\nepochs: *a2\n")
    with pytest.raises(ValueError, match=r"bomb\.yaml: not valid YAML at line 3, column 12 \(an alias"):
        load_config([str(bomb)], [])
    deep = tmp_path / "deep.yaml"
    deep.write_text("epochs: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ValueError, match=r"deep\.yaml: not a parameter file: its values are nested too deeply"):
        load_config([str(deep)], [])
    anchored = tmp_path / "anchored.yaml"
    anchored.write_text("epochs: &e 2\n")
    assert load_config([str(anchored)], []).epochs == 2
