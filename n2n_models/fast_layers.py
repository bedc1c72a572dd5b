"""Faster CPU versions of two layers of the report's networks, with the same math: they compute the
same sums in another order (results agree to float rounding). The training loop swaps them in on
CPU (`speed_up`); models, checkpoints and the reference loop keep the standard layers.

- `ThinConv2d`: a 3x3 convolution (stride 1, padding 1) with few output channels and many inputs,
  like TNet's 32 -> 3 `dec1` and UNet's last layer. oneDNN vectorises a convolution over its
  output channels, so with 3 of them most of each vector is idle: at 32x32 it runs at a quarter of
  the speed of the wider layers. Here the forward pass is one matrix product of the input with all
  nine taps' weights (9 x 3 outputs per pixel, a well-shaped GEMM) followed by nine shifted adds
  of 3-channel planes; the weight and input gradients are matrix products with the nine shifted
  planes of the output gradient. Grouped (fused replica) convolutions use one product per group.
  Modules that can take this path themselves (the fused replicas' grouped convolutions) say so
  with a `use_fast_layers` attribute, which `speed_up` switches on.
- `UpConcatConv2d`: a 3x3 convolution of `torch.cat([upsample(low), skip], 1)` with `upsample`
  an s-fold nearest upsample, as in TNet's `dec2` and `dec3` and UNet's decoder. A 3x3 kernel
  over an s-fold nearest upsample is an (s + 2) x (s + 2) transposed convolution of the low-
  resolution input with stride s, whose kernel sums the taps that read the same low-resolution
  pixel. So the upsampled channels cost (s + 2)^2 multiply-adds per low-resolution pixel instead
  of 9 s^2 (36 against 144 for s = 4, 16 against 36 for s = 2), and neither the upsampled nor the
  concatenated tensor is built. The skip channels stay an ordinary convolution. The fused
  replicas' grouped version is `GroupedUpConcatConv2d`.
- `UpConcatThinConv2d`: the same pattern before a thin convolution, as in TNet's `dec1`. The
  upsampled half's matrix products run at the low resolution (a quarter of the pixels for s = 2)
  and their results are spread over each s x s block (14-22% of a TNet step on CPU).
  `speed_up` finds both patterns with torch.fx (`fuse_upsample_concat`).
- `NearestUpsample`: nearest-neighbour upsampling by an integer factor whose backward pass sums
  each s x s block with s + s - 2 strided adds instead of PyTorch's scatter kernel, which copies
  channels-last gradients first (3-5 times slower on TNet's and UNet's skip connections).

docs/benchmarks.md measures what each brings.
"""
from __future__ import annotations

import functools

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

THIN_MAX_OUT = 4  # output channels per group for which the GEMM path replaces oneDNN's kernel
THIN_MIN_IN = 8  # below this many inputs per group oneDNN's kernel is faster (measured: 6 -> 3)
# below this many output pixels times upsampled channels per call (batch x height x width x low
# channels), UpConcatConv2d computes the plain way: oneDNN's transposed convolution is slow on small
# images. Measured on TNet's and UNet's layers (bench/throughput.py --sections layers, forced
# through the transposed path, 2 threads): 0.46-0.69x up to 49k, 0.84-0.99x from 65k to 131k,
# 1.11-1.37x from 197k to 262k, 1.3-1.9x above
UP_CONCAT_MIN_WORK = 150_000


# -- thin 3x3 convolution -------------------------------------------------------------------------

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


def _fast_path_applies(x: torch.Tensor) -> bool:
    """Whether the paths below apply to input `x`: float32 on CPU, outside autocast (they are
    measured only there; elsewhere each layer computes the plain way)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def _shift_sum(taps: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
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


def _shifted_grad(grad: torch.Tensor, g: int) -> torch.Tensor:
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
        pixels = _pixels(x).view(n * h * w, g, c)
        wt = _taps_by_input(weight, g)
        taps = x.new_empty(g, 9 * o, n * h * w)
        for i in range(g):
            torch.mm(wt[i], pixels[:, i].t(), out=taps[i])
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.has_bias = groups, bias is not None
        return _output_from_taps(taps, bias, n, h, w)

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
        shifted = _shifted_grad(grad, g)
        if ctx.needs_input_grad[0]:
            wt = _taps_by_input(weight, g)
            grad_x = x.new_empty(n * h * w, g, c)
            for i in range(g):
                torch.mm(shifted[i].t(), wt[i], out=grad_x[:, i])
            grad_x = grad_x.view(n, h, w, cin).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            pixels = _pixels(x).view(n * h * w, g, c)
            grad_w = weight.new_empty(g, 9 * o, c)
            for i in range(g):
                torch.mm(shifted[i], pixels[:, i], out=grad_w[i])
            grad_w = _weight_from_taps(grad_w, weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


def _taps_by_input(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(g * o, c, 3, 3) weights -> (g, 9 * o, c): row (ky, kx, o) of group i holds weight[o, :, ky, kx]."""
    o, c = weight.shape[0] // groups, weight.shape[1]
    return weight.view(groups, o, c, 3, 3).permute(0, 3, 4, 1, 2).reshape(groups, 9 * o, c)


def _weight_from_taps(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of _taps_by_input: (g, 9 * o, c) -> weights of `shape` (g * o, c, 3, 3)."""
    g, c = rows.shape[0], rows.shape[2]
    return rows.view(g, 3, 3, -1, c).permute(0, 3, 4, 1, 2).reshape(shape)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N * H * W, C): one row per pixel (a view for channels-last x)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _output_from_taps(taps: torch.Tensor, bias: torch.Tensor | None, n: int, h: int, w: int) -> torch.Tensor:
    """taps (g, 9 * o, N * H * W), row (ky, kx, o) of group i -> the convolution's output
    (N, g * o, H, W), channels-last: the shifted sum over taps, plus the bias."""
    g, o = taps.shape[0], taps.shape[1] // 9
    out = _shift_sum(taps.view(g, 3, 3, o, n, h, w).permute(1, 2, 0, 3, 4, 5, 6),  # (g, o, n, h, w)
                     None if bias is None else bias.view(g, o, 1, 1, 1))
    return out.permute(2, 3, 4, 0, 1).contiguous().view(n, h, w, g * o).permute(0, 3, 1, 2)


def thin_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1, groups=groups) for a 3x3 kernel, computed as above.
    Returns a channels-last tensor. Falls back to F.conv2d off CPU and under autocast."""
    if not _fast_path_applies(x):
        return F.conv2d(x, weight, bias, padding=1, groups=groups)
    return _ThinConv.apply(x, weight, bias, groups)


# -- a 3x3 convolution of an upsample-and-concatenate ----------------------------------------------

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


def up_concat_transposed(low: torch.Tensor, skip: torch.Tensor, groups: int = 1) -> bool:
    """Whether up_concat_conv2d computes these inputs with the transposed convolution: float32 on CPU,
    no autocast, at least UP_CONCAT_MIN_WORK output pixels times upsampled channels (per group)."""
    work = skip.shape[0] * skip.shape[2] * skip.shape[3] * (low.shape[1] // groups)
    return work >= UP_CONCAT_MIN_WORK and _fast_path_applies(low)


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
        wt = _taps_by_input(weight, 1)[0]  # (9 * o, all input channels)
        taps = torch.mm(wt[:, cl:], _pixels(skip).t())
        taps_low = torch.mm(wt[:, :cl], _pixels(low).t())
        # one strided add per position in the s x s block: a broadcasting add over the block's
        # size-s dimensions runs element by element (2-3 times slower, measured at s = 2)
        blocks, taps_low = taps.view(9 * o, n, hl, s, wl, s), taps_low.view(9 * o, n, hl, wl)
        for i in range(s):
            for j in range(s):
                blocks[:, :, :, i, :, j].add_(taps_low)
        ctx.save_for_backward(low, skip, weight)
        ctx.s, ctx.has_bias = s, bias is not None
        return _output_from_taps(taps.unsqueeze(0), bias, n, h, w)

    @staticmethod
    def backward(ctx, grad):
        low, skip, weight = ctx.saved_tensors
        n, cl, hl, wl = low.shape
        _, cs, h, w = skip.shape
        o, s = weight.shape[0], ctx.s
        grad = grad.contiguous(memory_format=torch.channels_last)
        shifted = _shifted_grad(grad, 1)[0]  # (9 * o, n * h * w)
        shifted_low = block_sum(shifted.view(9 * o, n, h, w), s).reshape(9 * o, n * hl * wl)
        wt = _taps_by_input(weight, 1)[0]
        grad_low = grad_skip = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_low = torch.mm(shifted_low.t(), wt[:, :cl]).view(n, hl, wl, cl).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_skip = torch.mm(shifted.t(), wt[:, cl:]).view(n, h, w, cs).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[2]:
            grad_wt = torch.cat([torch.mm(shifted_low, _pixels(low)), torch.mm(shifted, _pixels(skip))], 1)
            grad_w = _weight_from_taps(grad_wt.unsqueeze(0), weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad.sum((0, 2, 3))
        return grad_low, grad_skip, grad_w, grad_b, None


def up_concat_thin_conv2d(low: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          s: int) -> torch.Tensor:
    """F.conv2d(torch.cat([F.interpolate(low, scale_factor=s), skip], 1), weight, bias, padding=1) for
    a thin 3x3 kernel (one group), computed as _UpConcatThinConv does; the plain way off CPU, under
    autocast and for other dtypes."""
    if not _fast_path_applies(low):
        return _up_concat_plain(low, skip, weight, bias, s)
    return _UpConcatThinConv.apply(low, skip, weight, bias, s)


class ThinConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state dict) that computes with `thin_conv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return thin_conv2d(x, self.weight, self.bias, self.groups)


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


# -- nearest upsampling ---------------------------------------------------------------------------

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


def _integer_nearest(m: nn.Module) -> int | None:
    """The integer factor of a nearest upsample (nn.Upsample or NearestUpsample), else None."""
    if type(m) is NearestUpsample:
        return m.scale_factor
    if type(m) is not nn.Upsample:
        return None
    s = m.scale_factor
    if m.mode != "nearest" or m.size is not None or s is None:
        return None
    s = s if isinstance(s, (int, float)) else (s[0] if len(set(s)) == 1 else None)
    return int(s) if s is not None and float(s).is_integer() and s >= 1 else None


class GroupedUpConcatConv2d(nn.Module):
    """The fused replicas' grouped convolution of a per-replica upsample-and-concatenate, called as
    `conv(low, skip)`, computed with `up_concat_conv2d(..., groups=replicas)`. It holds the grouped
    convolution's own parameters (stacked per replica, same state-dict names)."""

    def __init__(self, conv: nn.Module, scale: int):
        super().__init__()
        self.weight, self.bias, self.replicas, self.scale = conv.weight, conv.bias, conv.replicas, scale

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.flatten()
        return up_concat_conv2d(low, skip, self.weight.flatten(0, 1), bias, self.scale, self.replicas)

    def extra_repr(self) -> str:
        return f"replicas={self.replicas}, weight={tuple(self.weight.shape)}, scale={self.scale}"


def _one_group_3x3(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.groups == 1 and is_same_3x3(m)


def _replicas_3x3(m: nn.Module) -> int:
    """For the fused replicas' grouped convolution (a module with `replicas` and stacked weights of
    shape (K, out, in, 3, 3)) of a one-group, same-size 3x3 convolution that is not thin: K; else 0.
    A thin one keeps the grouped thin path (its upsample-and-concatenate version measured no faster)."""
    k = getattr(m, "replicas", 0)
    if not k or m.transposed or m.groups != 1 or m.thin:
        return 0
    return k if _same_size_3x3(m.weight.shape[-2:], m) else 0


# -- swapping them in -----------------------------------------------------------------------------

def _through_identities(node: torch.fx.Node, gm: torch.fx.GraphModule) -> torch.fx.Node:
    while (node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.Identity
           and len(node.users) == 1):
        node = node.args[0]
    return node


def fuse_upsample_concat(model: nn.Module) -> nn.Module:
    """Where a 3x3 convolution (one group, stride 1, padding 1) reads `torch.cat([up(low), skip], 1)`
    with `up` an integer nearest upsample, possibly through nn.Identity layers, and nothing else
    reads the upsampled or the concatenated tensor, compute it with UpConcatThinConv2d when the
    convolution is thin (TNet's `dec1`), else with UpConcatConv2d (TNet's `dec2` and `dec3`,
    UNet's decoder). In the fused replicas' network (a GraphModule, changed in place) the same
    pattern per replica, a grouped convolution of `grouped_cat`, becomes GroupedUpConcatConv2d,
    except for a thin convolution (measured no faster that way). Returns a torch.fx.GraphModule
    with the same state-dict names and parameters when that pattern occurs, else `model` itself
    (also when the model cannot be traced)."""
    layers = list(model.modules())
    if not (any(_one_group_3x3(m) or _replicas_3x3(m) for m in layers)
            and any(type(m) in (nn.Upsample, NearestUpsample) for m in layers)):
        return model  # nothing to fuse: do not trace (tracing runs the Python of non-leaf modules)
    if isinstance(model, torch.fx.GraphModule):
        gm = model  # the fused replicas' network: changed in place (tracing again would inline grouped_cat)
    else:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 - data-dependent control flow and the like: leave it as it is
            return model
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        conv = gm.get_submodule(node.target)
        replicas = _replicas_3x3(conv)
        if not (_one_group_3x3(conv) or replicas):
            continue
        cat = _through_identities(node.args[0], gm)
        if cat.op != "call_function" or len(cat.users) != 1:
            continue
        parts = cat.args[0]
        if replicas:  # the fused replicas' concatenation, per replica
            if cat.target is not grouped_cat or len(cat.args) != 2 or cat.args[1] != replicas:
                continue
        else:
            dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
            if cat.target is not torch.cat or dim not in (1, -3):
                continue
        if not isinstance(parts, (list, tuple)) or len(parts) != 2:
            continue
        up, skip = parts
        is_module = isinstance(up, torch.fx.Node) and up.op == "call_module"
        scale = _integer_nearest(gm.get_submodule(up.target)) if is_module else None
        if not scale or len(up.users) != 1 or len(up.args) != 1:
            continue
        if replicas:
            fast = GroupedUpConcatConv2d(conv, scale)
        else:
            layer = UpConcatThinConv2d if thin_conv_applies(conv) else UpConcatConv2d
            fast = layer(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None,
                         device="meta")
            fast.weight, fast.bias, fast.scale = conv.weight, conv.bias, scale
        fast.train(conv.training)
        gm.set_submodule(node.target, fast)
        node.args = (up.args[0], skip)
        fused += 1
    if not fused:
        return model
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()  # the upsample and identity layers it bypasses
    gm.recompile()
    return gm


def speed_up(model: nn.Module) -> nn.Module:
    """Swap the layers above into `model`, sharing its parameters (its state dict and optimiser are
    unchanged), switch on modules with a `use_fast_layers` attribute, and return the model to train.
    Other layers, and layers these do not cover, stay. That is `model` itself, changed in place,
    unless a convolution of an upsample-and-concatenate became one layer
    (fuse_upsample_concat): then it is a torch.fx.GraphModule with the same parameters and
    state-dict names, and `model` keeps its own layers."""
    model = fuse_upsample_concat(model)
    for name, module in list(model.named_modules()):
        if hasattr(module, "use_fast_layers"):
            module.use_fast_layers = True
        if not name:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        scale = _integer_nearest(module) if type(module) is nn.Upsample else None
        if type(module) is nn.Conv2d and thin_conv_applies(module):
            fast = ThinConv2d(module.in_channels, module.out_channels, 3, padding=1, groups=module.groups,
                              bias=module.bias is not None, device="meta")
            fast.weight, fast.bias = module.weight, module.bias
            fast.train(module.training)
            setattr(parent, attr, fast)
        elif scale:
            setattr(parent, attr, NearestUpsample(scale))
    return model
