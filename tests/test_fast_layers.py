"""n2n_models.fast_layers: the faster CPU layers compute the same function and the same gradients as
the standard layers they replace, `speed_up` swaps exactly the layers they cover (and fuses an
upsample-and-concatenate into the convolution after it only where nothing else reads them)
without touching parameters or state-dict names, and what a sped-up model trains loads into the
plain model and trains the same losses."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from n2n_models import build_model
from n2n_models import up_concat
from n2n_models.fast_layers import (NearestUpsample, ThinConv2d, UpConcatConv2d, UpConcatThinConv2d, block_sum,
                                    fuse_upsample_concat, speed_up, thin_conv2d, up_concat_conv2d,
                                    up_concat_thin_conv2d)
from n2n_models.train import ReplicaTrainer, TrainSpec

pytestmark = pytest.mark.numeric  # run again on the AVX2 code paths by .ci/run

FAST = (ThinConv2d, UpConcatConv2d, NearestUpsample)


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out)


# How much more rounding error than the standard float32 layers' own a fast layer may have: it sums
# the same products in another grouping (up to 4.25 times the standard layers' greatest error seen
# over these cases with AVX2 and with no vector instructions, ATEN_CPU_CAPABILITY=default)
ROUNDING_FACTOR = 8
EPS32 = torch.finfo(torch.float32).eps


def _assert_as_exact_as_the_standard_layers(ours, standard, args, grad_out):
    """`ours` (float32, from `args`) is channels-last and computes what `standard(*args)` (the
    layers it replaces) computes, within float rounding, in value and in every input's gradient.
    Rounding is measured, not assumed: against the float64 truth (`standard` on the same inputs in
    float64) the fast layer's greatest error is at most ROUNDING_FACTOR times the standard float32
    layers' own greatest error, plus 4 float32 ulps of the largest value (where the standard layers
    happen to round exactly). The error of either depends on the order in which the CPU's kernels
    sum (AVX-512, AVX2, ...), so a fixed tolerance that passes on one instruction set fails on
    another; a bug (a dropped bias, a wrong group) is off by the size of the values themselves."""
    assert ours.dtype == torch.float32 and ours.is_contiguous(memory_format=torch.channels_last)
    inputs = [t for t in args if t is not None]
    exact = standard(*[None if t is None else t.double() for t in args])
    plain = standard(*args)
    results = {"value": (ours, plain, exact)}
    grads = zip(_grads(ours, inputs, grad_out), _grads(plain, inputs, grad_out), _grads(exact, inputs, grad_out.double()))
    results.update({f"gradient {i}": g for i, g in enumerate(grads)})
    for what, (got, reference, truth) in results.items():
        truth = truth.double()
        error = (got.double() - truth).abs().max().item()
        reference_error = (reference.double() - truth).abs().max().item()
        allowed = ROUNDING_FACTOR * reference_error + 4 * EPS32 * truth.abs().max().item()
        assert error <= allowed, (f"{what}: error {error:.3g} against float64, the standard layers' "
                                  f"{reference_error:.3g}, allowed {allowed:.3g}")


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
    grad_out = torch.randn(3, groups * cout, 9, 7)
    standard = lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=groups)  # noqa: E731
    _assert_as_exact_as_the_standard_layers(thin_conv2d(x, w, b, groups), standard, (x, w, b), grad_out)


def test_thin_convolution_falls_back_to_conv2d_under_autocast():
    x, w = torch.randn(2, 16, 8, 8), torch.randn(3, 16, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = thin_conv2d(x, w, None)
        expected = F.conv2d(x, w, None, padding=1)
    assert out.dtype == expected.dtype == torch.bfloat16 and torch.equal(out, expected)


@pytest.mark.parametrize("low_channels, skip_channels, scale, bias", [
    (16, 16, 2, True),   # TNet's dec1
    (5, 11, 4, False),
    (8, 8, 2, True),
])
def test_upsample_concat_thin_convolution_matches_the_three_layers_in_value_and_every_gradient(
        low_channels, skip_channels, scale, bias):
    torch.manual_seed(low_channels + scale)
    cl = torch.channels_last
    low = torch.randn(3, low_channels, 12 // scale, 16 // scale).contiguous(memory_format=cl).requires_grad_()
    skip = torch.randn(3, skip_channels, 12, 16).contiguous(memory_format=cl).requires_grad_()
    w = torch.randn(3, low_channels + skip_channels, 3, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True) if bias else None
    grad_out = torch.randn(3, 3, 12, 16)

    def standard(low, skip, w, b):
        return F.conv2d(torch.cat([F.interpolate(low, scale_factor=scale, mode="nearest"), skip], 1), w, b, padding=1)

    _assert_as_exact_as_the_standard_layers(up_concat_thin_conv2d(low, skip, w, b, scale), standard,
                                            (low, skip, w, b), grad_out)


@pytest.mark.parametrize("layer, out_channels", [(up_concat_thin_conv2d, 3), (up_concat_conv2d, 16)])
def test_upsample_concat_convolutions_fall_back_to_the_plain_layers_under_autocast(monkeypatch, layer, out_channels):
    monkeypatch.setattr(up_concat, "UP_CONCAT_MIN_WORK", 0)  # large enough for the transposed path
    low, skip, w = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 8, 8), torch.randn(out_channels, 16, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(low, skip, w, None, 2)
        expected = F.conv2d(torch.cat([F.interpolate(low, scale_factor=2), skip], 1), w, None, padding=1)
    assert out.dtype == expected.dtype == torch.bfloat16 and torch.equal(out, expected)


@pytest.mark.parametrize("n, low_channels, skip_channels, out_channels, low_size, scale, bias", [
    (8, 32, 32, 16, (4, 4), 4, True),    # TNet's dec2 at batch 8
    (2, 12, 6, 10, (8, 16), 2, True),    # UNet's decoder, a wide image
    (4, 7, 3, 9, (3, 5), 4, False),
    (2, 5, 4, 6, (1, 1), 4, True),       # TNet's dec3: a 1 x 1 image
])
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("groups", [1, 3])  # 3: fused replicas, each group its own concatenation
def test_upsample_concat_convolution_matches_the_three_layers_in_value_and_every_gradient(
        monkeypatch, n, low_channels, skip_channels, out_channels, low_size, scale, bias, transposed, groups):
    # UP_CONCAT_MIN_WORK picks the transposed convolution (0) or the plain layers (no limit)
    monkeypatch.setattr(up_concat, "UP_CONCAT_MIN_WORK", 0 if transposed else 1 << 60)
    torch.manual_seed(low_channels + scale + groups)
    cl, g = torch.channels_last, groups
    (hl, wl), (h, w) = low_size, (low_size[0] * scale, low_size[1] * scale)
    low = torch.randn(n, g * low_channels, hl, wl).contiguous(memory_format=cl).requires_grad_()
    skip = torch.randn(n, g * skip_channels, h, w).contiguous(memory_format=cl).requires_grad_()
    cin = low_channels + skip_channels
    weight = (torch.randn(g * out_channels, cin, 3, 3) / (9 * cin) ** 0.5).contiguous(memory_format=cl)  # outputs ~ 1
    weight.requires_grad_()
    b = torch.randn(g * out_channels, requires_grad=True) if bias else None
    grad_out = torch.randn(n, g * out_channels, h, w)

    def standard(low, skip, weight, b):  # group i convolves [its upsampled channels, its skip channels]
        up = F.interpolate(low, scale_factor=scale, mode="nearest")
        cat = torch.cat([torch.cat([up[:, i * low_channels:(i + 1) * low_channels],
                                    skip[:, i * skip_channels:(i + 1) * skip_channels]], 1) for i in range(g)], 1)
        return F.conv2d(cat, weight, b, padding=1, groups=g)

    ours = up_concat_conv2d(low, skip, weight, b, scale, groups=g)
    # the transposed path ends in the sum of its two convolutions, the plain one in the convolution
    assert type(ours.grad_fn).__name__ == ("AddBackward0" if transposed else "ConvolutionBackward0")
    _assert_as_exact_as_the_standard_layers(ours, standard, (low, skip, weight, b), grad_out)


class _UpsampleReadTwice(nn.Module):
    """An upsample-and-concatenate before a thin convolution whose upsampled tensor is read again."""

    def __init__(self):
        super().__init__()
        self.up, self.conv = nn.Upsample(scale_factor=2), nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, low, skip):
        up = self.up(low)
        return self.conv(torch.cat([up, skip], 1)) + up[:, :3]


def test_the_upsample_and_concatenation_are_fused_only_where_nothing_else_reads_them():
    kept = _UpsampleReadTwice()
    assert fuse_upsample_concat(kept) is kept
    assert fuse_upsample_concat(build_model("tnet", batchnorm=True)).__class__.__name__ == "TNet", \
        "batch norm on the concatenation: nothing to fuse"
    plain = build_model("tnet")
    fused = fuse_upsample_concat(plain)
    assert isinstance(fused, torch.fx.GraphModule) and isinstance(fused.get_submodule("dec1.0"), UpConcatThinConv2d)
    assert type(plain.dec1[0]) is nn.Conv2d, "the model it was made from keeps its own layers"
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-6)


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
    # every upsample feeds a concatenation before a convolution, so it is folded into that layer
    ("tnet", {"dec1.0": UpConcatThinConv2d, "dec2.0": UpConcatConv2d, "dec3.0": UpConcatConv2d}),
    ("tnet_bn", {"dec1.0": ThinConv2d, "up2": NearestUpsample, "up4": NearestUpsample}),  # BN on the concatenations
    ("unet", {"head.2": ThinConv2d, "head.0.0": UpConcatConv2d,
              **{f"dec.{i}.0.0": UpConcatConv2d for i in range(4)}}),
    ("basenet", {}),
])
def test_speed_up_swaps_exactly_the_covered_layers_and_keeps_the_parameters(model, swapped):
    net = build_model("tnet", batchnorm=True) if model == "tnet_bn" else build_model(model)
    params_before = dict(net.named_parameters())
    keys_before = list(net.state_dict())
    net = speed_up(net)
    fast = {name: type(m) for name, m in net.named_modules() if isinstance(m, FAST)}
    assert fast == swapped
    assert list(net.state_dict()) == keys_before
    assert all(p is params_before[name] for name, p in net.named_parameters()), "parameters are shared, not copied"


@pytest.mark.parametrize("model, hparams, fast", [("tnet", {}, ("dec1.0", UpConcatThinConv2d)),
                                                 ("tnet", {"residual_output": True}, ("dec1.0", UpConcatThinConv2d)),
                                                 ("unet", {"width": 8, "residual_output": True}, ("head.2", ThinConv2d))])
def test_a_model_trained_with_fast_layers_loads_into_the_plain_model_and_predicts_the_same(model, hparams, fast):
    torch.manual_seed(0)
    a = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    trainer = ReplicaTrainer(TrainSpec(model, hparams=hparams, lr=1e-3, batch_size=16, seeds=(3,)), fused=False)
    assert trainer.fast_layers and isinstance(trainer.models[0].get_submodule(fast[0]), fast[1])
    trainer.train_epoch(a, a.flip(0))
    plain = trainer.replica_model(0)
    assert not any(isinstance(m, FAST) for m in plain.modules())
    with torch.no_grad():
        expected = plain(a[:8].float() / 255).clamp(0, 1)
    torch.testing.assert_close(trainer.predict(a[:8])[0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model, hparams", [("unet", {"width": 8}), ("unet", {"width": 8, "residual_output": True}),
                                            ("tnet", {}), ("tnet", {"dropout": 0.2}), ("tnet", {"residual_output": True})])
def test_fast_layers_train_the_same_losses_as_the_plain_layers(model, hparams):
    torch.manual_seed(1)
    # batch 32: large enough for the transposed path of UpConcatConv2d in TNet's dec2 and UNet's head
    a = torch.randint(0, 256, (192, 3, 32, 32), dtype=torch.uint8)
    b = torch.randint(0, 256, (192, 3, 32, 32), dtype=torch.uint8)
    losses = {}
    for fast in (True, False):
        trainer = ReplicaTrainer(TrainSpec(model, hparams=hparams, lr=1e-3, batch_size=32, seeds=(0,)),
                                 fused=False, fast_layers=fast)
        steps = []
        trainer.train_epoch(a, b, step_losses=steps)
        losses[fast] = torch.cat(steps)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=0)


def test_fused_replicas_take_the_grouped_upsample_concat_where_the_pattern_is():
    """In the fused replicas' network TNet's dec2 and dec3 read each replica's upsample and skip
    directly (GroupedUpConcatConv2d); dec1, thin, stays the grouped thin convolution (measured no
    faster that way); with batch norm on the concatenations there is no such pattern. The
    parameters keep their names and stacked shapes (fused-vs-separate equality: test_train.py)."""
    kinds = lambda trainer: {n: type(m).__name__ for n, m in trainer.net.named_modules()}  # noqa: E731
    fused = ReplicaTrainer(TrainSpec("tnet", seeds=(0, 1)), fused=True)
    assert kinds(fused)["dec3.0"] == kinds(fused)["dec2.0"] == "GroupedUpConcatConv2d"
    assert kinds(fused)["dec1.0"] == "_GroupedConv"
    assert fused.params["dec2.0.weight"].shape == (2, 16, 64, 3, 3)
    with_bn = ReplicaTrainer(TrainSpec("tnet", hparams={"batchnorm": True}, seeds=(0, 1)), fused=True)
    assert "GroupedUpConcatConv2d" not in kinds(with_bn).values()
    unet = ReplicaTrainer(TrainSpec("unet", seeds=(0, 1)), fused=True)
    assert list(kinds(unet).values()).count("GroupedUpConcatConv2d") == 5  # four decoder stages and the head
