"""PSNR in the course's convention: images in [0, 1], PSNR per image, then the mean over images."""
import torch


def psnr_per_image(denoised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each image, shape (N,): 10 * log10(1 / mean((x - y)^2)), float images in [0, 1]."""
    mse = ((denoised.float() - clean.float()) ** 2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse + 1e-10)


def psnr(denoised: torch.Tensor, clean: torch.Tensor) -> float:
    """Mean over images of the per-image PSNR (dB). Never a single MSE over the whole set,
    which reads lower: the course's convention."""
    return psnr_per_image(denoised, clean).mean().item()


def psnr_uint8(noisy: torch.Tensor, clean: torch.Tensor) -> float:
    """PSNR of uint8 images (0-255), in the same convention."""
    return psnr(noisy.float() / 255.0, clean.float() / 255.0)
