import pytest
import torch

from tradelib.train.models import MODELS, build_model, n_params, training_flops_per_sample


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_flops(name):
    model = build_model(name, n_features=5, window=32, hidden=8, layers=2)
    out = model(torch.randn(4, 32, 5))
    assert out.shape == (4,)
    assert training_flops_per_sample(model) > 0 and n_params(model) > 0


def test_init_gain_scales_weights():
    small = build_model("mlp", 5, 16, hidden=32, init_gain=0.5)
    big = build_model("mlp", 5, 16, hidden=32, init_gain=2.0)
    ratio = big.body[0].weight.abs().max() / small.body[0].weight.abs().max()
    assert 3.0 < ratio < 5.0  # xavier-uniform bound is proportional to the gain


def test_output_clip_bounds_predictions():
    model = build_model("mlp", 5, 16, hidden=8, init_gain=50.0, output_clip=0.5)
    out = model(torch.randn(64, 16, 5) * 100)
    assert out.abs().max() <= 0.5


def test_tcn_is_causal_and_receptive_field_is_exact():
    torch.manual_seed(0)
    model = build_model("tcn", 3, window=32, hidden=8, layers=2).eval()
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
        build_model("tcn", 3, window=8, hidden=8, layers=3)


def test_unknown_model():
    with pytest.raises(ValueError, match="choose one of"):
        build_model("transformer9000", 3, 8)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_at_initialisation_depends_on_its_input(name):
    """Init by module type: norms keep weight 1 (the MLP's LayerNorms, named body.1, body.5, ..., were once
    zeroed by a name test, and the MLP then gave exactly 0 for every input)."""
    torch.manual_seed(0)
    model = build_model(name, n_features=5, window=32, hidden=16, layers=2)
    out = model(torch.randn(64, 32, 5))
    assert out.std() > 1e-4, out[:5]
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


def test_config_model_choices_are_the_models():
    import dataclasses

    from tradelib.config import Config

    field = next(f for f in dataclasses.fields(Config) if f.name == "model")
    assert field.metadata["choices"] == MODELS
