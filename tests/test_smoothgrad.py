"""SmoothGrad means what the report reads into it: a trained denoiser's loss gradient points at
the corrupted pixels; on models with a known gradient it returns that gradient."""
import pytest
import torch
from torch import nn

from n2n_models import build_model
from n2n_models.export import load_model
from n2n_models.smoothgrad import heatmap, smoothgrad

from test_denoise import train_tnet

pytestmark = pytest.mark.numeric  # run again on the AVX2 code paths by .ci/run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model, _ = load_model(train_tnet(tmp_path_factory))
    return model


def impulse_corrupted(count: int = 8, pixels: int = 10, seed: int = 1):
    """Clean validation photo crops, and copies with `pixels` random pixels set to random colours."""
    from n2n_models.data import load_pairs

    clean = load_pairs("photos", "gaussian:25", train_size=1500, val_size=100, seed=0).val_clean[:count].float() / 255
    g = torch.Generator().manual_seed(seed)
    noisy, mask = clean.clone(), torch.zeros(count, 32, 32, dtype=torch.bool)
    for i in range(count):
        where = torch.randperm(32 * 32, generator=g)[:pixels]
        ys, xs = where // 32, where % 32
        mask[i, ys, xs] = True
        noisy[i, :, ys, xs] = torch.rand(3, pixels, generator=g)
    return noisy, clean, mask


def corrupted_to_clean_ratio(model, noisy, clean, mask) -> torch.Tensor:
    grads = heatmap(smoothgrad(model, noisy, clean, samples=16).loss_grad)
    return torch.stack([g[m].mean() / g[~m].mean() for g, m in zip(grads, mask)])


def test_loss_gradient_is_largest_at_the_impulse_corrupted_pixels(trained):
    noisy, clean, mask = impulse_corrupted()
    ratio = corrupted_to_clean_ratio(trained, noisy, clean, mask)
    assert (ratio > 1.5).all(), f"corrupted / other pixels, per image: {ratio.tolist()}"
    assert ratio.mean() > 3
    torch.manual_seed(0)
    untrained = corrupted_to_clean_ratio(build_model("tnet"), noisy, clean, mask)
    assert ratio.mean() > 2 * untrained.mean(), "it is training that makes the network act on noisy pixels"


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))

    def forward(self, x):
        return self.factor * x


def test_gradients_of_a_linear_model_are_exact():
    x, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    sg = smoothgrad(Scale(3.0), x, target, samples=4000, noise_level=0.05)
    assert torch.allclose(sg.output_grad, torch.full_like(x, 3.0))
    # L2 per image is mean((3x - t)^2): gradient 2 * 3 * (3x - t) / pixels, the noise averaging out
    expected = 6 * (3 * x - target) / x[0].numel()
    assert torch.allclose(sg.loss_grad, expected, atol=0.1 * expected.abs().max().item())
    assert torch.equal(sg.output, 3 * x)


def test_same_seed_same_result_and_mode_restored(trained):
    x = torch.rand(2, 3, 32, 32)
    trained.train()
    a, b = smoothgrad(trained, x, x, samples=4, seed=7), smoothgrad(trained, x, x, samples=4, seed=7)
    assert trained.training, "the model's mode is left as it was"
    trained.eval()
    assert torch.equal(a.loss_grad, b.loss_grad) and torch.equal(a.output_grad, b.output_grad)
    assert heatmap(a.loss_grad).shape == (2, 32, 32)
