"""n2n_models.fast_layers: the faster CPU layers compute the same function and the same gradients as
the standard layers they replace, `speed_up` swaps exactly the layers they cover without touching
parameters or state-dict names, and what a sped-up model trains loads into the plain model."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from n2n_models import build_model
from n2n_models.fast_layers import NearestUpsample, ThinConv2d, block_sum, speed_up, thin_conv2d
from n2n_models.train import ReplicaTrainer, TrainSpec


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out)


@pytest.mark.parametrize("groups, cin, cout, bias, channels_last", [
    (1, 32, 3, True, True),    # TNet's dec1, UNet's last layer
    (5, 32, 3, True, True),    # five fused replicas of it
    (2, 16, 4, False, False),  # no bias, default memory layout
    (1, 8, 1, True, True),
])
def test_thin_convolution_matches_conv2d_in_value_and_every_gradient(groups, cin, cout, bias, channels_last):
    torch.manual_seed(groups * 100 + cin)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, groups * cin, 9, 7).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(groups * cout, cin, 3, 3, requires_grad=True)
    b = torch.randn(groups * cout, requires_grad=True) if bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    grad_out = torch.randn(3, groups * cout, 9, 7)
    # the truth in float64; both float32 computations must be within float rounding of it
    exact = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1, groups=groups)
    exact_grads = _grads(exact, inputs, grad_out.double())
    ours = thin_conv2d(x, w, b, groups)
    assert ours.dtype == torch.float32 and ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(ours, inputs, grad_out), exact_grads):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-4)


def test_thin_convolution_falls_back_to_conv2d_under_autocast():
    x, w = torch.randn(2, 16, 8, 8), torch.randn(3, 16, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = thin_conv2d(x, w, None)
        expected = F.conv2d(x, w, None, padding=1)
    assert out.dtype == expected.dtype == torch.bfloat16 and torch.equal(out, expected)


@pytest.mark.parametrize("scale", [2, 4])
def test_nearest_upsample_matches_nn_upsample_and_its_gradient(scale):
    x = torch.randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad_out = torch.randn(2, 6, 4 * scale, 5 * scale)
    standard, ours = nn.Upsample(scale_factor=scale)(x), NearestUpsample(scale)(x)
    assert torch.equal(standard, ours)
    torch.testing.assert_close(_grads(ours, x, grad_out)[0], _grads(standard, x, grad_out)[0])


def test_block_sum_sums_each_block_of_a_strided_view():
    grad = torch.arange(2 * 8 * 4 * 4, dtype=torch.float32).view(2, 8, 4, 4)[:, 2:5]  # a channel slice
    expected = grad.reshape(2, 3, 2, 2, 2, 2).sum((3, 5))
    assert torch.equal(block_sum(grad, 2), expected)


@pytest.mark.parametrize("model, swapped", [
    ("tnet", {"dec1.0": ThinConv2d, "up2": NearestUpsample, "up4": NearestUpsample}),
    ("unet", {"head.2": ThinConv2d, "up": NearestUpsample}),
    ("basenet", {}),
])
def test_speed_up_swaps_exactly_the_covered_layers_and_keeps_the_parameters(model, swapped):
    net = build_model(model)
    params_before = dict(net.named_parameters())
    keys_before = list(net.state_dict())
    speed_up(net)
    fast = {name: type(m) for name, m in net.named_modules() if isinstance(m, (ThinConv2d, NearestUpsample))}
    assert fast == swapped
    assert list(net.state_dict()) == keys_before
    assert all(p is params_before[name] for name, p in net.named_parameters()), "parameters are shared, not copied"


def test_a_model_trained_with_fast_layers_loads_into_the_plain_model_and_predicts_the_same():
    torch.manual_seed(0)
    a = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    trainer = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=16, seeds=(3,)), fused=False)
    assert trainer.fast_layers and isinstance(trainer.models[0].dec1[0], ThinConv2d)
    trainer.train_epoch(a, a.flip(0))
    plain = trainer.replica_model(0)
    assert not any(isinstance(m, (ThinConv2d, NearestUpsample)) for m in plain.modules())
    with torch.no_grad():
        expected = plain(a[:8].float() / 255).clamp(0, 1)
    torch.testing.assert_close(trainer.predict(a[:8])[0], expected, rtol=0, atol=1e-5)


def test_fast_layers_train_the_same_losses_as_the_plain_layers():
    torch.manual_seed(1)
    a = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    b = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    losses = {}
    for fast in (True, False):
        trainer = ReplicaTrainer(TrainSpec("unet", hparams={"width": 8}, lr=1e-3, batch_size=16, seeds=(0,)),
                                 fused=False, fast_layers=fast)
        steps = []
        trainer.train_epoch(a, b, step_losses=steps)
        losses[fast] = torch.cat(steps)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=0)
