"""The upsample-and-concatenate convolutions: a 3x3 convolution of `torch.cat([upsample(low), skip], 1)`
computed without the upsampled or the concatenated tensor, and a nearest upsample with a faster backward.

- `UpConcatConv2d`: `upsample` an s-fold nearest upsample, as in TNet's `dec2` and `dec3` and
  UNet's decoder. A 3x3 kernel over an s-fold nearest upsample is an (s + 2) x (s + 2) transposed
  convolution of the low-resolution input with stride s, whose kernel sums the taps that read the
  same low-resolution pixel: (s + 2)^2 multiply-adds per low-resolution pixel instead of 9 s^2.
  The skip channels stay an ordinary convolution. The fused replicas' grouped version is
  `GroupedUpConcatConv2d`.
- `UpConcatThinConv2d`: the same pattern before a thin convolution (n2n_models.thin_conv), as in
  TNet's `dec1`: the upsampled half's matrix products run at the low resolution and their results
  are spread over each s x s block.
- `NearestUpsample`: nearest-neighbour upsampling by an integer factor whose backward pass sums
  each s x s block with strided adds instead of PyTorch's scatter kernel, which copies
  channels-last gradients first.

The same sums in another order; what each brings: docs/benchmarks.md.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .thin_conv import (fast_path_applies, output_from_taps, pixel_rows, shifted_grad, taps_by_input,
                        weight_from_taps)


@functools.lru_cache(maxsize=None)
def _taps_per_offset(s: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(9, (s + 2)^2): the Kronecker product of the one-dimensional (3, s + 2) matrix whose entry
    (k, u) is 1 where tap k of a 3x3 kernel, applied to an s-fold nearest upsample, reads the
    low-resolution pixel at offset u of the equivalent transposed convolution (stride s,
    padding 1): 0 <= u + k - 2 < s. A constant per scale, built once."""
    u = torch.arange(s + 2, device=device)
    k = torch.arange(3, device=device).unsqueeze(1)
    taps = ((u + k - 2 >= 0) & (u + k - 2 < s)).to(dtype)
    return torch.kron(taps, taps)


def grouped_cat(tensors, k: int) -> torch.Tensor:
    """torch.cat(tensors, 1) of each of k groups' channels, for tensors whose channels are k equal
    groups (the fused replicas' layout: group i holds replica i's channels)."""
    if k == 1:
        return torch.cat(tensors, 1)
    n, _, h, w = tensors[0].shape
    if all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors):
        parts = [t.permute(0, 2, 3, 1).view(n, h, w, k, -1) for t in tensors]  # views, no copy
        return torch.cat(parts, -1).view(n, h, w, -1).permute(0, 3, 1, 2)
    return torch.cat([t.unflatten(1, (k, -1)) for t in tensors], 2).flatten(1, 2)


def _up_concat_plain(low: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     s: int, groups: int = 1) -> torch.Tensor:
    """The three layers themselves: nearest upsample, concatenation (per group), convolution."""
    return F.conv2d(grouped_cat([_NearestUp.apply(low, s), skip], groups), weight, bias, padding=1, groups=groups)


# Below this many output pixels times upsampled channels per call (batch x height x width x low
# channels) UpConcatConv2d computes the plain way: oneDNN's transposed convolution is slow on small
# images (measured per layer: docs/benchmarks.md, "Fast layers").
UP_CONCAT_MIN_WORK = 150_000


def up_concat_transposed(low: torch.Tensor, skip: torch.Tensor, groups: int = 1) -> bool:
    """Whether up_concat_conv2d computes these inputs with the transposed convolution: float32 on CPU,
    no autocast, at least UP_CONCAT_MIN_WORK output pixels times upsampled channels (per group)."""
    work = skip.shape[0] * skip.shape[2] * skip.shape[3] * (low.shape[1] // groups)
    return work >= UP_CONCAT_MIN_WORK and fast_path_applies(low)


def up_concat_conv2d(low: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     s: int, groups: int = 1) -> torch.Tensor:
    """F.conv2d(torch.cat([F.interpolate(low, scale_factor=s), skip], 1), weight, bias, padding=1) for a
    3x3 kernel (one group), without the upsampled or the concatenated tensor: the upsampled
    channels' share is F.conv_transpose2d(low, kernel, stride=s, padding=1), where kernel[c, o, u, v]
    sums weight[o, c, ky, kx] over the taps that read the same low-resolution pixel. The same
    sums in another order; every operation is differentiable, so autograd gives the gradients.
    The plain way (`up_concat_transposed`) for small layers, off CPU (not measured there), under
    autocast and for other dtypes (as up_concat_thin_conv2d). With `groups` g, the channels of
    low, skip and the output are g equal groups and group i convolves the concatenation of low's
    and skip's group i (the fused replicas' layout)."""
    if not up_concat_transposed(low, skip, groups):
        return _up_concat_plain(low, skip, weight, bias, s, groups)
    g, cl = groups, low.shape[1] // groups
    # kernel[o, c] = taps^T weight[o, c] taps for every channel pair, as one matrix product:
    # (o * c, 9) weights times the (9, (s + 2)^2) Kronecker product of taps with itself
    o, k = weight.shape[0] // g, s + 2
    kernel = weight[:, :cl].reshape(g * o * cl, 9) @ _taps_per_offset(s, weight.dtype, weight.device)
    if g == 1:
        kernel = kernel.view(o, cl, k, k).transpose(0, 1)
    else:  # transposed convolutions take (in, out per group, k, k) weights, groups along `in`
        kernel = kernel.view(g, o, cl, k, k).transpose(1, 2).reshape(g * cl, o, k, k)
    out = F.conv2d(skip, weight[:, cl:], bias, padding=1, groups=g)
    return out.add_(F.conv_transpose2d(low, kernel, stride=s, padding=1, groups=g))


class _UpConcatThinConv(torch.autograd.Function):
    """thin_conv2d(torch.cat([upsample(low, s), skip], 1), weight, bias) without building the
    upsampled or the concatenated tensor: the low-resolution input's share of every tap is a matrix
    product at its own resolution, spread over s x s pixels; its gradients sum s x s blocks of the
    shifted output gradient first. The same sums as the thin convolution, in another order."""

    @staticmethod
    def forward(ctx, low, skip, weight, bias, s: int):
        n, cl, hl, wl = low.shape
        h, w = skip.shape[2:]
        o = weight.shape[0]
        wt = taps_by_input(weight, 1)[0]  # (9 * o, all input channels)
        taps = torch.mm(wt[:, cl:], pixel_rows(skip).t())
        taps_low = torch.mm(wt[:, :cl], pixel_rows(low).t())
        # one strided add per position in the s x s block: a broadcasting add over the block's
        # size-s dimensions runs element by element (slower; docs/benchmarks.md)
        blocks, taps_low = taps.view(9 * o, n, hl, s, wl, s), taps_low.view(9 * o, n, hl, wl)
        for i in range(s):
            for j in range(s):
                blocks[:, :, :, i, :, j].add_(taps_low)
        ctx.save_for_backward(low, skip, weight)
        ctx.s, ctx.has_bias = s, bias is not None
        return output_from_taps(taps.unsqueeze(0), bias, n, h, w)

    @staticmethod
    def backward(ctx, grad):
        low, skip, weight = ctx.saved_tensors
        n, cl, hl, wl = low.shape
        _, cs, h, w = skip.shape
        o, s = weight.shape[0], ctx.s
        grad = grad.contiguous(memory_format=torch.channels_last)
        shifted = shifted_grad(grad, 1)[0]  # (9 * o, n * h * w)
        shifted_low = block_sum(shifted.view(9 * o, n, h, w), s).reshape(9 * o, n * hl * wl)
        wt = taps_by_input(weight, 1)[0]
        grad_low = grad_skip = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_low = torch.mm(shifted_low.t(), wt[:, :cl]).view(n, hl, wl, cl).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_skip = torch.mm(shifted.t(), wt[:, cl:]).view(n, h, w, cs).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[2]:
            grad_wt = torch.cat([torch.mm(shifted_low, pixel_rows(low)), torch.mm(shifted, pixel_rows(skip))], 1)
            grad_w = weight_from_taps(grad_wt.unsqueeze(0), weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad.sum((0, 2, 3))
        return grad_low, grad_skip, grad_w, grad_b, None


def up_concat_thin_conv2d(low: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          s: int) -> torch.Tensor:
    """F.conv2d(torch.cat([F.interpolate(low, scale_factor=s), skip], 1), weight, bias, padding=1) for
    a thin 3x3 kernel (one group), computed as _UpConcatThinConv does; the plain way off CPU, under
    autocast and for other dtypes."""
    if not fast_path_applies(low):
        return _up_concat_plain(low, skip, weight, bias, s)
    return _UpConcatThinConv.apply(low, skip, weight, bias, s)


class UpConcatConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state dict) called as `conv(low, skip)` for
    `conv(torch.cat([nearest_upsample(low, s), skip], 1))`, computed with `up_concat_conv2d`."""

    scale = 2

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return up_concat_conv2d(low, skip, self.weight, self.bias, self.scale)


class UpConcatThinConv2d(UpConcatConv2d):
    """UpConcatConv2d for a thin convolution, computed with `up_concat_thin_conv2d`."""

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return up_concat_thin_conv2d(low, skip, self.weight, self.bias, self.scale)


def block_sum(grad: torch.Tensor, s: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H / s, W / s): the sum of each s x s block (any memory layout)."""
    cols = grad.unflatten(3, (grad.shape[3] // s, s))
    rows = cols[..., 0]
    for j in range(1, s):
        rows = rows + cols[..., j]
    rows = rows.unflatten(2, (grad.shape[2] // s, s))
    out = rows[:, :, :, 0]
    for i in range(1, s):
        out = out + rows[:, :, :, i]
    return out


class _NearestUp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s: int):
        ctx.s = s
        return F.interpolate(x, scale_factor=s, mode="nearest")

    @staticmethod
    def backward(ctx, grad):
        return block_sum(grad, ctx.s), None


class NearestUpsample(nn.Module):
    """nn.Upsample(scale_factor=s, mode="nearest") for an integer s, with a faster backward."""

    def __init__(self, scale_factor: int):
        super().__init__()
        self.scale_factor = int(scale_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NearestUp.apply(x, self.scale_factor)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}"


class GroupedUpConcatConv2d(nn.Module):
    """The fused replicas' grouped convolution of a per-replica upsample-and-concatenate, called as
    `conv(low, skip)`, computed with `up_concat_conv2d(..., groups=replicas)`. It holds the grouped
    convolution's own parameters: `weight` (K, out, in, 3, 3) and `bias` (K, out), stacked per
    replica, so the state-dict names stay."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, scale: int):
        super().__init__()
        self.weight, self.bias, self.replicas, self.scale = weight, bias, weight.shape[0], scale

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.flatten()
        return up_concat_conv2d(low, skip, self.weight.flatten(0, 1), bias, self.scale, self.replicas)

    def extra_repr(self) -> str:
        return f"replicas={self.replicas}, weight={tuple(self.weight.shape)}, scale={self.scale}"
