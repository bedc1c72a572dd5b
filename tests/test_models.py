"""The three networks: exact parameter counts, shapes, widths, batch norm and dropout behaviour."""
import pytest
import torch

from n2n_models import build_model, count_parameters

pytestmark = pytest.mark.numeric  # run again on the AVX2 code paths by .ci/run


@pytest.mark.parametrize("name, expected", [("tnet", 43_064), ("unet", 991_203), ("basenet", 166_923)])
def test_default_parameter_counts_match_the_report(name, expected):
    assert count_parameters(build_model(name)) == expected


def test_tnet_with_batchnorm_has_about_43_5k_parameters():
    assert 43_400 <= count_parameters(build_model("tnet", batchnorm=True)) <= 43_600


@pytest.mark.parametrize("name, hparams", [
    ("tnet", {}), ("tnet", {"batchnorm": True, "dropout": 0.2}), ("tnet", {"residual_output": True}), ("unet", {}),
    ("unet", {"width": 24, "batchnorm": True}), ("unet", {"residual_output": True}),
    ("basenet", {}), ("basenet", {"latent": 32}),
])
def test_models_map_images_to_images_of_the_same_shape(name, hparams):
    x = torch.rand(4, 3, 32, 32)
    y = build_model(name, **hparams)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("width", [8, 16, 32, 64, 128])
def test_tnet_works_for_embedding_widths_8_to_128(width):
    model = build_model("tnet", width=width)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    if width != 32:
        assert count_parameters(model) != 43_064


def test_a_residual_unet_is_the_same_network_plus_its_input():
    torch.manual_seed(0)
    plain = build_model("unet", width=16)
    residual = build_model("unet", width=16, residual_output=True)
    assert count_parameters(build_model("unet", residual_output=True)) == 991_203  # no parameters of its own
    residual.load_state_dict(plain.state_dict())  # the same weights under the same names
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(residual(x), x + plain(x))
        assert not torch.equal(residual(x), plain(x))


def test_a_residual_tnet_adds_its_input_to_the_output_convolution_in_place_of_the_leaky_relu():
    torch.manual_seed(0)
    plain = build_model("tnet").double()
    residual = build_model("tnet", residual_output=True).double()
    assert count_parameters(residual) == 43_064  # no parameters of its own
    residual.load_state_dict(plain.state_dict())  # the same weights under the same names
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        correction = residual(x) - x  # the output convolution's result, to float64 rounding of x + it
        # the plain TNet is that convolution through a leaky ReLU (0.1); float64 keeps the subtraction's
        # rounding near 1e-16 of values of order 1
        torch.testing.assert_close(torch.nn.functional.leaky_relu(correction, 0.1), plain(x), rtol=0, atol=1e-12)
        assert (correction < 0).any()  # a negative correction is passed as it is, not scaled by 0.1


def test_dropout_acts_only_in_training_mode():
    torch.manual_seed(0)
    model = build_model("tnet", dropout=0.3)
    x = torch.rand(8, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x)), "training mode must drop units at random"
    model.eval()
    assert torch.equal(model(x), model(x)), "evaluation mode must be deterministic"


def test_zero_dropout_adds_no_randomness_in_training():
    model = build_model("tnet", dropout=0.0).train()
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(model(x), model(x))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")
