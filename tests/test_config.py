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
