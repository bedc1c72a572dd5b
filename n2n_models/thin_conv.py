"""The thin 3x3 convolution: a 3x3 convolution with few output channels computed as matrix
products (one GEMM per group), and the tap-matrix helpers the upsample-and-concatenate layers share.

A 3x3 convolution (stride 1, padding 1) with few output channels and many inputs, like TNet's
32 -> 3 `dec1` and UNet's last layer, leaves most of each of oneDNN's vectors idle: oneDNN
vectorises over output channels. Here the forward pass is one matrix product of the input with all
nine taps' weights (9 x out outputs per pixel, a well-shaped GEMM) followed by nine shifted adds of
out-channel planes; the weight and input gradients are matrix products with the nine shifted
planes of the output gradient. Grouped (fused replica) convolutions use one product per group.
The same sums as F.conv2d in another order; what it brings: docs/benchmarks.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

THIN_MAX_OUT = 4  # output channels per group for which the GEMM path replaces oneDNN's kernel
THIN_MIN_IN = 8  # below this many inputs per group oneDNN's kernel is faster (docs/benchmarks.md)


def _same_size_3x3(kernel_size, m: nn.Module) -> bool:
    return tuple(kernel_size) == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1) and m.dilation == (1, 1)


def is_same_3x3(conv: nn.Module) -> bool:
    """Whether `conv` is an nn.Conv2d (not a transposed one) with a 3x3 kernel, stride 1 and one
    pixel of zero padding: the output has the input's size."""
    return isinstance(conv, nn.Conv2d) and _same_size_3x3(conv.kernel_size, conv) and conv.padding_mode == "zeros"


def thin_conv_applies(conv: nn.Module) -> bool:
    """Whether `conv` takes the thin path."""
    return (is_same_3x3(conv) and conv.out_channels // conv.groups <= THIN_MAX_OUT
            and conv.in_channels // conv.groups >= THIN_MIN_IN)


def fast_path_applies(x: torch.Tensor) -> bool:
    """Whether the fast layers' paths apply to input `x`: float32 on CPU, outside autocast (they are
    measured only there; elsewhere each layer computes the plain way)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def shift_sum(taps: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """taps (3, 3, ..., H, W): what each pixel sends through each kernel tap -> (..., H, W), the
    sum over taps of taps[ky, kx] moved by (ky - 1, kx - 1), zero beyond the border, plus `start`
    (broadcast; the bias) when given."""
    h, w = taps.shape[-2:]
    out = taps[1, 1].clone() if start is None else taps[1, 1] + start
    for ky in range(3):
        for kx in range(3):
            if ky == 1 and kx == 1:
                continue
            dy, dx = ky - 1, kx - 1
            h0, h1, w0, w1 = max(0, -dy), h - max(0, dy), max(0, -dx), w - max(0, dx)
            # add_ on the view: `out[...] += t` would also copy the sum back onto itself (__setitem__)
            out[..., h0:h1, w0:w1].add_(taps[ky, kx, ..., h0 + dy:h1 + dy, w0 + dx:w1 + dx])
    return out


def shifted_grad(grad: torch.Tensor, g: int) -> torch.Tensor:
    """(N, g * o, H, W) output gradient -> (g, 9 * o, N * H * W): row (tap, o) holds the gradient of
    output channel o moved by that tap's offset, zero beyond the border (see _ThinConv.backward)."""
    n, go, h, w = grad.shape
    padded = F.pad(grad.permute(1, 0, 2, 3), (1, 1, 1, 1)).view(g, go // g, n, h + 2, w + 2)
    return torch.stack([padded[..., 2 - ky:2 - ky + h, 2 - kx:2 - kx + w]
                        for ky in range(3) for kx in range(3)], 1).view(g, 9 * go // g, n * h * w)


class _ThinConv(torch.autograd.Function):
    """conv2d(x, weight, bias, padding=1, groups=groups) for a 3x3 kernel with few outputs. Every
    matrix product is one GEMM per group on strided views of channels-last tensors (no copies)."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int):
        n, cin, h, w = x.shape
        g, o, c = groups, weight.shape[0] // groups, cin // groups
        pixels = pixel_rows(x).view(n * h * w, g, c)
        wt = taps_by_input(weight, g)
        taps = x.new_empty(g, 9 * o, n * h * w)
        for i in range(g):
            torch.mm(wt[i], pixels[:, i].t(), out=taps[i])
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.has_bias = groups, bias is not None
        return output_from_taps(taps, bias, n, h, w)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, cin, h, w = x.shape
        g = ctx.groups
        o, c = weight.shape[0] // g, cin // g
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        # shifted[tap, o, q] = grad[o, q - d(tap)], zero beyond the border; both gradients are matrix
        # products with it: grad_w[o, c, tap] = sum_q shifted[tap, o, q] x[c, q] and
        # grad_x[c, q] = sum_(tap, o) weight[o, c, tap] shifted[tap, o, q]
        shifted = shifted_grad(grad, g)
        if ctx.needs_input_grad[0]:
            wt = taps_by_input(weight, g)
            grad_x = x.new_empty(n * h * w, g, c)
            for i in range(g):
                torch.mm(shifted[i].t(), wt[i], out=grad_x[:, i])
            grad_x = grad_x.view(n, h, w, cin).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            pixels = pixel_rows(x).view(n * h * w, g, c)
            grad_w = weight.new_empty(g, 9 * o, c)
            for i in range(g):
                torch.mm(shifted[i], pixels[:, i], out=grad_w[i])
            grad_w = weight_from_taps(grad_w, weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


def taps_by_input(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(g * o, c, 3, 3) weights -> (g, 9 * o, c): row (ky, kx, o) of group i holds weight[o, :, ky, kx]."""
    o, c = weight.shape[0] // groups, weight.shape[1]
    return weight.view(groups, o, c, 3, 3).permute(0, 3, 4, 1, 2).reshape(groups, 9 * o, c)


def weight_from_taps(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of taps_by_input: (g, 9 * o, c) -> weights of `shape` (g * o, c, 3, 3)."""
    g, c = rows.shape[0], rows.shape[2]
    return rows.view(g, 3, 3, -1, c).permute(0, 3, 4, 1, 2).reshape(shape)


def pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N * H * W, C): one row per pixel (a view for channels-last x)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def output_from_taps(taps: torch.Tensor, bias: torch.Tensor | None, n: int, h: int, w: int) -> torch.Tensor:
    """taps (g, 9 * o, N * H * W), row (ky, kx, o) of group i -> the convolution's output
    (N, g * o, H, W), channels-last: the shifted sum over taps, plus the bias."""
    g, o = taps.shape[0], taps.shape[1] // 9
    out = shift_sum(taps.view(g, 3, 3, o, n, h, w).permute(1, 2, 0, 3, 4, 5, 6),  # (g, o, n, h, w)
                    None if bias is None else bias.view(g, o, 1, 1, 1))
    return out.permute(2, 3, 4, 0, 1).contiguous().view(n, h, w, g * o).permute(0, 3, 1, 2)


def thin_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1, groups=groups) for a 3x3 kernel, computed as above.
    Returns a channels-last tensor. Falls back to F.conv2d off CPU and under autocast."""
    if not fast_path_applies(x):
        return F.conv2d(x, weight, bias, padding=1, groups=groups)
    return _ThinConv.apply(x, weight, bias, groups)


class ThinConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state dict) that computes with `thin_conv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return thin_conv2d(x, self.weight, self.bias, self.groups)
