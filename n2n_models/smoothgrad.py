"""SmoothGrad (Smilkov et al. 2017) for a denoiser, as in the report's Section 3: the gradient of
(1) the loss and (2) the output with respect to the input, averaged over noisy copies of the input.

The loss gradient says which input pixels, when changed, change the error most (the noisy ones);
the output gradient says which input pixels the denoised image depends on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .losses import get_loss


@dataclass
class SmoothGrad:
    """Per image: the output on the unperturbed input and the two smoothed gradients, all (N, 3, H, W)."""

    output: torch.Tensor
    loss_grad: torch.Tensor
    output_grad: torch.Tensor


def smoothgrad(model: nn.Module, images: torch.Tensor, target: torch.Tensor, samples: int = 32,
               noise_level: float = 0.1, loss: str = "l2", seed: int = 0, chunk: int = 16) -> SmoothGrad:
    """SmoothGrad of `model` at `images` (N, 3, H, W) float in [0, 1].

    Each of `samples` copies of an image gets Gaussian noise of standard deviation
    `noise_level` times the image's value range. The loss is `loss` (a name from
    n2n_models.losses) between the output and `target` (the clean image, or a second noisy copy);
    the output's scalar is the sum of its pixels. Gradients are averaged over the copies, which
    go through the network `chunk` copies of every image at a time."""
    if images.shape != target.shape:
        raise ValueError(f"images {tuple(images.shape)} and target {tuple(target.shape)} differ in shape")
    loss_fn = get_loss(loss)
    was_training = model.training
    model.eval()  # batch norm from running statistics, no dropout: the deployed network
    try:
        with torch.no_grad():
            output = model(images)
        n = images.shape[0]
        generator = torch.Generator(device="cpu").manual_seed(seed)
        spread = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).clamp_min(1e-6).view(n, 1, 1, 1)
        loss_sum = torch.zeros_like(images)
        out_sum = torch.zeros_like(images)
        for start in range(0, samples, chunk):
            k = min(chunk, samples - start)
            eps = torch.randn((k, *images.shape), generator=generator).to(images.device)
            x = (images + noise_level * spread * eps).flatten(0, 1).requires_grad_(True)  # (k * N, 3, H, W)
            y = model(x)
            # per-sample losses summed: each copy's gradient is that of its own loss
            g_loss, = torch.autograd.grad(loss_fn(y, target.repeat(k, 1, 1, 1)).sum(), x, retain_graph=True)
            g_out, = torch.autograd.grad(y.sum(), x)
            loss_sum += g_loss.view(k, *images.shape).sum(0)
            out_sum += g_out.view(k, *images.shape).sum(0)
    finally:
        model.train(was_training)
    return SmoothGrad(output=output, loss_grad=loss_sum / samples, output_grad=out_sum / samples)


def heatmap(grad: torch.Tensor) -> torch.Tensor:
    """Magnitude of a gradient per pixel, (N, 3, H, W) -> (N, H, W): the absolute values summed
    over colour channels."""
    return grad.abs().sum(1)
