"""Losses against values computed by hand, the L0 annealing schedule, and the PSNR convention."""
import math

import pytest
import torch

from n2n_models.losses import get_loss, l0_gamma
from n2n_models.metrics import psnr, psnr_per_image

pytestmark = pytest.mark.numeric  # run again on the AVX2 code paths by .ci/run

# one sample of four pixels: prediction and target
PRED = torch.tensor([0.5, 0.2, 0.9, 0.0]).view(1, 1, 2, 2)
TARGET = torch.tensor([0.3, 0.2, 0.6, 0.4]).view(1, 1, 2, 2)
# differences 0.2, 0.0, 0.3, -0.4


def test_l2_is_the_mean_squared_difference():
    assert get_loss("l2")(PRED, TARGET).item() == pytest.approx((0.04 + 0 + 0.09 + 0.16) / 4)


def test_l1_is_the_mean_absolute_difference():
    assert get_loss("l1")(PRED, TARGET).item() == pytest.approx((0.2 + 0 + 0.3 + 0.4) / 4)


def test_hdr_divides_by_the_squared_prediction_plus_0_01():
    expected = (0.04 / 0.51**2 + 0 + 0.09 / 0.91**2 + 0.16 / 0.01**2) / 4
    assert get_loss("hdr")(PRED, TARGET).item() == pytest.approx(expected, rel=1e-5)


def test_hdr_denominator_never_vanishes_for_negative_outputs():
    pred = torch.tensor([-0.01, -0.5]).view(1, 1, 1, 2)
    target = torch.zeros(1, 1, 1, 2)
    expected = (0.01**2 / 0.01**2 + 0.25 / 0.01**2) / 2  # f clamped at 0 in the denominator
    assert get_loss("hdr")(pred, target).item() == pytest.approx(expected, rel=1e-5)


def test_hdr_has_no_gradient_through_its_denominator():
    pred = PRED.clone().requires_grad_()
    get_loss("hdr")(pred, TARGET).sum().backward()
    # d/df of (f - y)^2 / c with c held fixed: 2 (f - y) / c / 4 pixels
    expected = 2 * (PRED - TARGET) / (PRED + 0.01) ** 2 / 4
    assert torch.allclose(pred.grad, expected, rtol=1e-5)


def test_l0_follows_its_schedule_from_2_to_0():
    assert l0_gamma(0.0) == 2.0 and l0_gamma(0.5) == 1.0 and l0_gamma(1.0) == 0.0
    assert l0_gamma(0.25) == pytest.approx(1.5)
    l0 = get_loss("l0")
    eps = 1e-8
    diffs = [0.2, 0.0, 0.3, 0.4]
    for progress in (0.0, 0.25, 0.5, 1.0):
        gamma = 2 * (1 - progress)
        expected = sum((d + eps) ** gamma for d in diffs) / 4
        assert l0(PRED, TARGET, progress).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # at the start L0 equals L2, at the end it is flat (every pixel counts 1)
    assert l0(PRED, TARGET, 0.0).item() == pytest.approx(get_loss("l2")(PRED, TARGET).item(), rel=1e-4)
    assert l0(PRED, TARGET, 1.0).item() == pytest.approx(1.0)


def test_losses_are_per_sample():
    pred, target = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)
    for name in ("l2", "l1", "hdr", "l0"):
        assert get_loss(name)(pred, target, 0.3).shape == (5,)


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        get_loss("huber")


def test_psnr_is_per_image_then_mean():
    clean = torch.zeros(2, 3, 4, 4)
    noisy = clean.clone()
    noisy[0] += 0.1  # mse 0.01 -> 20 dB
    noisy[1] += 0.01  # mse 1e-4 -> 40 dB
    assert psnr_per_image(noisy, clean).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)
    assert psnr(noisy, clean) == pytest.approx(30.0, abs=1e-4)
    pooled = -10 * math.log10(((noisy - clean) ** 2).mean().item())
    assert pooled < psnr(noisy, clean) - 5  # the pooled-MSE convention reads lower: never mixed
