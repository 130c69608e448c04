import json
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tradelib.config import Config
from tradelib.train.models import MODELS, model_for, n_params, training_flops_per_sample


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_flops(name):
    model = model_for(Config(model=name, window=32, hidden=8, layers=2), 5)
    out = model(torch.randn(4, 32, 5))
    assert out.shape == (4,)
    assert training_flops_per_sample(model, dense=False) > 0 and n_params(model) > 0


@pytest.mark.parametrize("name", MODELS)
def test_every_weight_is_trained(name):
    """Each element of each parameter gets a gradient above rounding noise (float64, a random batch): a weight the
    loss cannot see (a transformer's key bias, which softmax ignores) is walked by AdamW on rounding noise alone."""
    torch.manual_seed(0)
    model = model_for(Config(model=name, window=16, hidden=16, layers=2, heads=4), 5).double()
    x, y = torch.randn(64, 16, 5, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    (model(x) - y).pow(2).mean().backward()
    grads = {n: p.grad.abs() for n, p in model.named_parameters()}
    scale = max(float(g.max()) for g in grads.values())
    untrained = {n: int((g <= 1e-9 * scale).sum()) for n, g in grads.items() if (g <= 1e-9 * scale).any()}
    assert not untrained, untrained


def test_init_gain_scales_weights():
    small = model_for(Config(model="mlp", window=16, hidden=32, init_gain=0.5), 5)
    big = model_for(Config(model="mlp", window=16, hidden=32, init_gain=2.0), 5)
    ratio = big.body[0].weight.abs().max() / small.body[0].weight.abs().max()
    assert 3.0 < ratio < 5.0  # xavier-uniform bound is proportional to the gain


def test_output_clip_bounds_predictions():
    model = model_for(Config(model="mlp", window=16, hidden=8, init_gain=50.0, output_clip=0.5), 5)
    out = model(torch.randn(64, 16, 5) * 100)
    assert out.abs().max() <= 0.5


def test_output_clip_is_in_units_of_the_target_scale_as_its_help_says(outputs):
    """The model trains on the target divided by its training scale, so output_clip bounds that: a run's predictions
    (in return units) reach +-output_clip x target_scale. The help said 'clip predictions to +-output_clip', which
    read as +-0.5 in returns for output_clip 0.5 where the predictions stopped at +-0.0005."""
    import dataclasses

    import pandas as pd

    from tradelib.train.run import train

    from .conftest import TINY

    run = train(Config(**{**TINY, "max_steps": 4, "output_clip": 0.5, "init_gain": 20.0, "run_id": "clip"}),
                progress=False)
    scale = run.fs.meta["target_scale"]
    predictions = pd.read_parquet(outputs / "clip" / "predictions.parquet")["prediction"].abs()
    assert predictions.max() <= 0.5 * scale * (1 + 1e-6) and predictions.max() > 0.45 * scale
    help_text = next(f for f in dataclasses.fields(Config) if f.name == "output_clip").metadata["help"]
    assert "target_scale" in help_text and "output_clip x target_scale" in help_text


def test_tcn_is_causal_and_receptive_field_is_exact():
    torch.manual_seed(0)
    model = model_for(Config(model="tcn", window=32, hidden=8, layers=2), 3).eval()
    R = model.receptive_field
    x = torch.randn(1, 40, 3)
    y = x.clone()
    y[:, 30:] += 1.0  # change the future of position 29
    a, b = model.forward_dense(x), model.forward_dense(y)
    torch.testing.assert_close(a[:, :30], b[:, :30])
    z = x.clone()
    z[:, 39 - R] += 1.0  # just outside the last output's receptive field
    torch.testing.assert_close(model.forward_dense(z)[:, 39], a[:, 39])
    z[:, 39 - R + 1] += 1.0  # just inside
    assert not torch.allclose(model.forward_dense(z)[:, 39], a[:, 39])


def test_tcn_refuses_a_window_shorter_than_its_receptive_field():
    with pytest.raises(ValueError, match="receptive field"):
        model_for(Config(model="tcn", window=8, hidden=8, layers=3), 3)


def test_unknown_model():
    with pytest.raises(ValueError, match="choose one of"):
        cfg = Config(window=8, hidden=8, layers=1)
        cfg.model = "transformer9000"  # Config itself refuses the name: the builder is asked directly
        model_for(cfg, 3)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_at_initialisation_depends_on_its_input(name):
    """Init by module type: norms keep weight 1 (the MLP's LayerNorms, named body.1, body.5, ..., were once
    zeroed by a name test, and the MLP then gave exactly 0 for every input)."""
    torch.manual_seed(0)
    model = model_for(Config(model=name, window=32, hidden=16, layers=2), 5)
    out = model(torch.randn(64, 32, 5))
    assert out.std() > 1e-4, out[:5]
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


def test_config_model_names_are_the_models_and_a_user_class():
    import dataclasses

    from tradelib.config import Config, ConfigError

    field = next(f for f in dataclasses.fields(Config) if f.name == "model")
    named = field.metadata["pattern"].split("|")[: len(MODELS)]
    assert tuple(named) == MODELS
    assert re.fullmatch(field.metadata["pattern"], "my_pkg.nets:Net")
    Config(model="my_pkg.nets:Net")
    with pytest.raises(ConfigError, match="package.module:Class"):
        Config(model="transformer9000")


def counted_flops(fn, x: torch.Tensor) -> float:
    """torch's own count (the math attention kernel: the CPU's fused one is not counted)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_transformer_flops_match_torchs_counter(positions):
    model = model_for(Config(model="transformer", window=32, hidden=64, layers=3, heads=4, positions=positions), 12)
    x = torch.randn(3, 32, 12)
    assert model.flops_per_sample(dense=False) == pytest.approx(counted_flops(model, x) / 3, rel=0.03)
    # dense: a window-long chunk's FLOPs shared among its 32 trained positions
    assert model.flops_per_sample(dense=True) == pytest.approx(counted_flops(model.forward_dense, x) / (3 * 32),
                                                               rel=0.03)


@pytest.mark.parametrize("name", ["mlp", "tcn"])
def test_built_in_flops_match_torchs_counter(name):
    """The models whose kernels torch's counter sees (it does not count the fused LSTM/GRU kernels); the TCN's
    per-window forward pays its whole receptive field (its causal padding's zeros counted by torch: within 10%)."""
    model = model_for(Config(model=name, window=32, hidden=16, layers=2), 5)
    x = torch.randn(4, 32, 5)
    assert model.flops_per_sample(dense=False) == pytest.approx(counted_flops(model, x) / 4, rel=0.1)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # (mkldnn.flags sets it, on any build)
@pytest.mark.parametrize("name, window, hidden, layers", [
    ("mlp", 32, 64, 2), ("mlp", 8, 256, 1), ("lstm", 16, 32, 2), ("gru", 16, 32, 1), ("tcn", 32, 16, 3),
    ("transformer", 16, 32, 2)])
def test_training_flops_match_torchs_count_of_forward_and_backward(name, window, hidden, layers):
    """MFU's training FLOPs against torch's count of a real forward and backward (the LSTM without oneDNN, whose
    fused kernel torch does not count): a matmul's backward is twice its forward, except the first layer's, which
    makes no gradient for the data. 3x the forward overstated the MLP's by 40-49% here, its first layer being most of
    its FLOPs."""
    model = model_for(Config(model=name, window=window, hidden=hidden, layers=layers, heads=4), 12)
    x = torch.randn(3, window, 12)
    with torch.backends.mkldnn.flags(enabled=False), sdpa_kernel(SDPBackend.MATH), \
            FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert training_flops_per_sample(model, dense=False) == pytest.approx(counter.get_total_flops() / 3, rel=0.03)
    if hasattr(model, "forward_dense"):  # per trained target of a chunk
        chunk = getattr(model, "max_chunk", 2 * window)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model.forward_dense(torch.randn(3, chunk, 12)).sum().backward()
        per_target = counter.get_total_flops() / (3 * (chunk - model.receptive_field + 1))
        assert training_flops_per_sample(model, dense=True, chunk=chunk) == pytest.approx(per_target, rel=0.03)


def test_dense_tcn_flops_per_trained_target_count_the_whole_chunk():
    """A dense chunk computes all its positions and trains the last chunk - receptive_field + 1 of them: MFU's
    FLOPs per target are the chunk's over those (per window, the receptive field's over its one target)."""
    model = model_for(Config(model="tcn", window=64, hidden=16, layers=4), 5)
    chunk = 128
    targets = chunk - model.receptive_field + 1
    x = torch.randn(2, chunk, 5)
    with FlopCounterMode(display=False) as counter:
        model.forward_dense(x).sum().backward()
    per_target = counter.get_total_flops() / (2 * targets)
    assert training_flops_per_sample(model, dense=True, chunk=chunk) == pytest.approx(per_target, rel=0.03)


def test_transformer_is_causal_and_dense_is_the_window_forward():
    torch.manual_seed(0)
    model = model_for(Config(model="transformer", window=16, hidden=32, layers=2, heads=4), 4).eval()
    x = torch.randn(2, 16, 4)
    dense = model.forward_dense(x)
    torch.testing.assert_close(dense[:, -1], model(x))
    y = x.clone()
    y[:, 10:] += 1.0  # the future of position 9
    torch.testing.assert_close(model.forward_dense(y)[:, :10], dense[:, :10])
    assert not torch.allclose(model.forward_dense(y)[:, 10:], dense[:, 10:])
    assert model.receptive_field == 1 and model.max_chunk == 16
    with pytest.raises(ValueError, match="dense_chunk"):
        model.forward_dense(torch.randn(1, 17, 4))
    with pytest.raises(ValueError, match="multiple of heads"):
        model_for(Config(model="transformer", window=16, hidden=30, layers=1, heads=4), 4)


def test_dense_chunks_shorter_than_a_transformer_s_window_never_train_its_last_positions():
    """Why check_model wants a transformer's dense_chunk to be its window: a chunk of 8 rows trains positions 0..7
    only, and evaluation's 16-row windows read position 15 (its learned embedding, never trained)."""
    model = model_for(Config(model="transformer", window=16, hidden=16, layers=1, heads=2), 3)
    model.forward_dense(torch.randn(4, 8, 3)).pow(2).sum().backward()
    assert model.pos.grad[:8].abs().min() > 0 and torch.equal(model.pos.grad[8:], torch.zeros(8, 16))
    model.zero_grad()
    model(torch.randn(4, 16, 3)).pow(2).sum().backward()
    assert model.pos.grad[15].abs().min() > 0


def test_transformer_runs_in_bf16_autocast():
    model = model_for(Config(model="transformer", window=16, hidden=32, layers=1, heads=4), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(3, 16, 4))
    out.float().sum().backward()
    assert out.shape == (3,) and all(p.grad is not None for p in model.parameters())


def test_the_gpu_sized_transformer_projection():
    """The bench's transformer (window 64, hidden 512, 4 layers) on full.yaml's features: about 1.6 GFLOP a window
    forward, 4.9 training; the projection in docs/perf.md is computed from this count."""
    model = model_for(Config(model="transformer", window=64, hidden=512, layers=4, heads=8), 12)
    assert 1.6e9 < model.flops_per_sample(dense=False) < 1.7e9
    assert 4.8e9 < training_flops_per_sample(model, dense=False) < 5.1e9


USER_MODULE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n_features, window, cfg):
        super().__init__()
        self.lin = nn.Linear(n_features * window, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, x):
        return self.out(torch.relu(self.lin(x.flatten(1)))).squeeze(-1)

    def flops_per_sample(self, dense=False):
        return 2.0 * (self.lin.in_features * self.lin.out_features + self.lin.out_features)


class NoCfg(nn.Module):
    def __init__(self, n_features, window):
        super().__init__()
        self.lin = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.lin(x[:, -1]).squeeze(-1)


class Wrong(nn.Module):
    def __init__(self, n_features, window):
        super().__init__()
        self.lin = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.lin(x)
"""


def test_a_user_model_by_import_path(tmp_path, monkeypatch):
    from tradelib.config import Config
    from tradelib.train.models import model_for

    (tmp_path / "mine_models_a.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = Config(model="mine_models_a:Net", hidden=7, window=8)
    model = model_for(cfg, 3)
    assert model.lin.out_features == 7 and model(torch.randn(5, 8, 3)).shape == (5,)
    assert training_flops_per_sample(model, dense=False) == 3 * 2.0 * (24 * 7 + 7)
    plain = model_for(Config(model="mine_models_a:NoCfg", window=8), 3)
    assert training_flops_per_sample(plain, dense=False) is None  # MFU n/a for it
    with pytest.raises(ValueError, match=r"gave \(2, 8, 1\); the protocol is"):
        model_for(Config(model="mine_models_a:Wrong", window=8), 3)
    with pytest.raises(ValueError, match="no nn.Module subclass named 'Absent'"):
        model_for(Config(model="mine_models_a:Absent", window=8), 3)
    with pytest.raises(ValueError, match="cannot import 'nowhere_to_be_found'"):
        model_for(Config(model="nowhere_to_be_found:Net", window=8), 3)


@pytest.mark.parametrize("case, source, said", [
    ("syntax", "def f(:\n    pass\n", r"importing 'mine_broken_\w+' raised SyntaxError: invalid syntax \(mine_broken"),
    ("raises", "import torch\nraise RuntimeError('no site config')\n",
     r"importing 'mine_broken_\w+' raised RuntimeError \(.*mine_broken_\w+\.py, line 2\): no site config"),
    ("name", "from torch import nn\nclass Net(nn.Module):\n    x = undefined_name\n",
     r"raised NameError \(.*mine_broken_\w+\.py, line 3\): name 'undefined_name' is not defined"),
    ("dependency", "import torch\nimport mine_absent_dependency\n",
     r"'mine_broken_\w+' was found, but its own import failed \(.*mine_broken_\w+\.py, line 2\): "
     r"No module named 'mine_absent_dependency'"),
], ids=["syntax", "raises", "name", "dependency"])
def test_a_user_module_that_fails_on_import_is_named_with_its_error(case, source, said, tmp_path, monkeypatch, outputs):
    """The user's module that raises on import is a bad parameter (exit 2) naming the module, its file and line
    and its error, before any feature build: it once surfaced as tradelib's 'internal error: SyntaxError ...',
    and a missing dependency of the module as the module itself not being importable."""
    from tradelib.cli import explain
    from tradelib.train.models import check_model

    name = f"mine_broken_{case}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=f"model '{name}:Net': .*{said}") as caught:
        check_model(Config(model=f"{name}:Net", window=8))
    assert explain(caught.value)[0] == 2
    assert not outputs.exists()


CONSTRUCTORS = """
import torch
from torch import nn


class KeywordCfg(nn.Module):
    def __init__(self, n_features, window, *, cfg):
        super().__init__()
        self.lin = nn.Linear(n_features, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, x):
        return self.out(self.lin(x[:, -1])).squeeze(-1)


class Hidden(nn.Module):
    def __init__(self, n_features, window, hidden):
        super().__init__()


class Refuses(nn.Module):
    def __init__(self, n_features, window, cfg):
        super().__init__()
        raise ValueError("hidden too large")


class SizedFor12(nn.Module):
    def __init__(self, n_features, window):
        super().__init__()
        self.lin = nn.Linear(12 * window, 1)

    def forward(self, x):
        return self.lin(x.flatten(1)).squeeze(-1)
"""


def test_a_user_constructor_and_forward_fail_as_the_model_s_error(tmp_path, monkeypatch, outputs):
    """The protocol's call: `cfg` by keyword (keyword-only is a parameter named cfg too); a constructor that cannot
    take (n_features, window) is refused by check_model, before any feature build; one that raises, or a forward
    that fails on the probe, names the model, the user's line and the error (each was tradelib's 'internal error:
    TypeError/RuntimeError ...', after the build)."""
    from tradelib.train.models import check_model

    (tmp_path / "mine_models_e.py").write_text(CONSTRUCTORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    file = re.escape(str(tmp_path / "mine_models_e.py"))
    assert model_for(Config(model="mine_models_e:KeywordCfg", hidden=5, window=8), 3).lin.out_features == 5
    with pytest.raises(ValueError, match=r"model 'mine_models_e:Hidden': the protocol calls Hidden\(n_features, "
                                         r"window\), which its constructor \(n_features, window, hidden\) refuses"):
        check_model(Config(model="mine_models_e:Hidden", window=8))
    assert not outputs.exists()
    with pytest.raises(ValueError, match=rf"Refuses\(n_features 3, window 8, cfg\) raised ValueError \({file}, line "
                                         rf"\d+\): hidden too large"):
        model_for(Config(model="mine_models_e:Refuses", window=8), 3)
    with pytest.raises(ValueError, match=rf"forward of \[batch 2, window 8, features 3\] raised RuntimeError "
                                         rf"\({file}, line \d+\): mat1 and mat2"):
        model_for(Config(model="mine_models_e:SizedFor12", window=8), 3)


UNTRAINABLE = """
import torch
from torch import nn


class Last(nn.Module):
    def __init__(self, n_features, window):
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        return x[:, -1, 0] * self.scale


class Frozen(Last):
    def __init__(self, n_features, window):
        super().__init__(n_features, window)
        self.w = nn.Parameter(torch.ones(()), requires_grad=False)
"""


def test_a_user_model_without_trainable_parameters_is_refused_before_training(tmp_path, monkeypatch, outputs):
    """A model with nothing to train (no parameters, or all frozen) is a bad parameter named as such: it once made a
    run folder, started training and failed as 'internal error: RuntimeError: element 0 of tensors does not require
    grad'."""
    (tmp_path / "mine_models_f.py").write_text(UNTRAINABLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("Last", "Frozen"):
        with pytest.raises(ValueError, match=f"model 'mine_models_f:{name}': {name} has no trainable parameters"):
            model_for(Config(model=f"mine_models_f:{name}", window=8), 3)


DENSE = """
import torch
from torch import nn


class Short(nn.Module):
    receptive_field = 3

    def __init__(self, n_features, window):
        super().__init__()
        self.lin = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.lin(x[:, -1]).squeeze(-1)

    def forward_dense(self, x):
        return self.lin(x).squeeze(-1)[:, 1:]  # drops the first position: [batch, length - 1]
"""


def test_a_user_forward_dense_is_probed_when_dense_trains_through_it(tmp_path, monkeypatch):
    """With dense=True the probe also runs forward_dense on 2 chunks of dense_chunk rows: an output of another shape
    is named before training (it was an 'internal error: RuntimeError: The size of tensor a (15) must match ...'
    inside the first step); per window, forward_dense is not called and is not probed. A receptive field longer than
    the window is refused as a tcn's is (dense training would see history evaluation's windows lack)."""
    (tmp_path / "mine_models_g.py").write_text(DENSE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model_for(Config(model="mine_models_g:Short", window=8), 3)
    with pytest.raises(ValueError, match=r"model 'mine_models_g:Short': forward_dense of \[batch 2, dense_chunk 8, "
                                         r"features 3\] gave \(2, 7\); the protocol is \[batch, length, features\] "
                                         r"-> \[batch, length\]"):
        model_for(Config(model="mine_models_g:Short", window=8, dense=True, dense_chunk=8), 3)
    with pytest.raises(ValueError, match="dense_chunk 2 is shorter than its receptive_field 3"):
        model_for(Config(model="mine_models_g:Short", window=8, dense=True, dense_chunk=2), 3)
    with pytest.raises(ValueError, match="receptive_field 3 exceeds window 2: dense training would learn"):
        model_for(Config(model="mine_models_g:Short", window=2, dense=True, dense_chunk=8), 3)


def test_a_run_that_fails_to_start_leaves_no_run_folder(tmp_path, monkeypatch, outputs):
    """A typo in the import path costs a second, not a feature build: no cache, no run folder. A model that breaks
    the protocol fails after the build: the cache stays, the empty run folder goes; a folder the run did not
    create (here one holding a colleague's note) stays."""
    from tradelib.config import Config
    from tradelib.train.run import train

    from .conftest import TINY

    with pytest.raises(ValueError, match="cannot import 'nowhere_to_be_found'"):
        train(Config(**{**TINY, "model": "nowhere_to_be_found:Net"}), progress=False)
    assert not outputs.exists() or list(outputs.iterdir()) == []
    (tmp_path / "mine_models_c.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="the protocol is"):
        train(Config(**{**TINY, "model": "mine_models_c:Wrong"}), progress=False)
    assert sorted(p.name for p in outputs.iterdir()) == ["cache"]
    (outputs / "mine").mkdir()
    (outputs / "mine" / "note.txt").write_text("kept")
    (outputs / "empty").mkdir()
    for run_id in ("mine", "empty"):
        with pytest.raises(ValueError, match="the protocol is"):
            train(Config(**{**TINY, "model": "mine_models_c:Wrong", "run_id": run_id}), progress=False)
    assert sorted(p.name for p in (outputs / "mine").iterdir()) == [".lock", "checkpoints", "note.txt"]
    assert sorted(p.name for p in (outputs / "empty").iterdir()) == [".lock", "checkpoints"]


@pytest.mark.parametrize("settings, refusal", [
    ({"model": "lstm", "dense": True}, "dense=True needs a causal model"),
    ({"model": "tcn", "layers": 6, "window": 32}, "receptive field 253 exceeds window 32"),
    ({"model": "transformer", "hidden": 30, "heads": 8}, "hidden 30 is not a multiple of heads 8"),
    ({"model": "transformer", "dense": True, "dense_chunk": 64, "window": 32}, "dense_chunk 64 is longer than"),
    ({"model": "transformer", "dense": True, "dense_chunk": 8, "window": 16},
     r"dense_chunk 8 is shorter than the window 16: its positions 8..15, where evaluation's windows end, would never"),
])
def test_model_settings_are_refused_before_the_feature_build(settings, refusal, outputs):
    """Settings the model alone refuses cost a second, not a feature build: the run and the walk-forward say so
    before a cache or a run folder exists."""
    from tradelib.config import Config
    from tradelib.train.run import train
    from tradelib.train.walkforward import train_or_walk

    from .conftest import TINY

    with pytest.raises(ValueError, match=refusal):
        train(Config(**{**TINY, **settings}), progress=False)
    with pytest.raises(ValueError, match=refusal):
        train_or_walk(Config(**{**TINY, **settings, "folds": 2}))
    assert not outputs.exists() or list(outputs.iterdir()) == []


def test_a_walk_forward_that_fails_to_start_leaves_no_run_folder(tmp_path, monkeypatch, outputs):
    """The same for a walk-forward (`train_or_walk`, what the CLI and 03 call): the import path before its
    folder, a protocol error in fold 0 removes fold 0's folder and then the walk-forward's own."""
    from tradelib.config import Config
    from tradelib.train.walkforward import train_or_walk

    from .conftest import TINY

    walk = {**TINY, "folds": 2, "synth_bars": 3000}
    with pytest.raises(ValueError, match="cannot import 'nowhere_to_be_found'"):
        train_or_walk(Config(**{**walk, "model": "nowhere_to_be_found:Net"}))
    assert not outputs.exists() or list(outputs.iterdir()) == []
    (tmp_path / "mine_models_d.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="the protocol is"):
        train_or_walk(Config(**{**walk, "model": "mine_models_d:Wrong"}))
    assert sorted(p.name for p in outputs.iterdir()) == ["cache"]


def test_a_user_model_trains_checkpoints_resumes_and_reports_like_a_built_in(tmp_path, monkeypatch, outputs):
    """`model: package.module:Class` through the run: interrupted at step 5 and resumed, it ends bit for bit where
    one uninterrupted run ends (CPU); the checkpoint and summary.json hold the import path (a string); the report
    is built; resuming with another model is refused."""
    from tradelib.config import Config
    from tradelib.report.inputs import ReportSettings
    from tradelib.report.report import build_report
    from tradelib.train import checkpoint
    from tradelib.train.run import TrainingRun, train

    from .conftest import TINY, fit_until_interrupted

    (tmp_path / "mine_models_b.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = lambda run_id, **kw: Config(**{**TINY, "model": "mine_models_b:Net", "hidden": 8, "max_steps": 12,
                                         "run_id": run_id, **kw})
    whole = train(cfg("mine-whole"), progress=False)
    assert whole.summary["model"] == "mine_models_b:Net" and whole.summary["optimizer_steps"] == 12
    assert whole.summary["flops_per_sample"] == 3 * 2.0 * (16 * whole.fs.n_features * 8 + 8)
    fit_until_interrupted(TrainingRun(cfg("mine-cut"), progress=False), 5)
    ck = checkpoint.load(outputs / "mine-cut" / "checkpoints" / "step-5.pt")
    assert ck["config"]["model"] == "mine_models_b:Net"
    resumed = train(cfg("mine-cut", resume=True), progress=False)
    last = lambda run_id: checkpoint.load(outputs / run_id / "checkpoints" / "last.pt")["model"]
    a, b = last("mine-whole"), last("mine-cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    build_report(resumed.run_dir, settings=ReportSettings.of())
    assert json.loads((resumed.run_dir / "report.json").read_text())
    with pytest.raises(ValueError, match="model"):
        train(cfg("mine-cut", resume=True, model="mlp", max_steps=20), progress=False)
