"""Fused seed replicas: K replicas of one architecture rewritten (torch.fx) into one grouped network
in which replica i's weights are group i of every convolution, and the layout of its activations.

Activations of K replicas travel as one tensor (N, K*C, H, W): channels [i*C, (i+1)*C) belong to
replica i. Per-sample layers (activations, pools, upsampling, dropout) act on it unchanged;
convolutions become grouped convolutions, batch norm normalises each replica's channels over its
own batch (exactly as alone), and a concatenation along channels interleaves per replica.
"""
from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .fast_layers import ReplicaConv
from .thin_conv import thin_conv2d
from .up_concat import grouped_cat


class NotGroupable(ValueError):
    """The model has a layer that the fused (grouped) replicas do not know how to batch."""


_PER_SAMPLE_MODULES = (nn.LeakyReLU, nn.ReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity,
                       nn.MaxPool2d, nn.AvgPool2d, nn.Upsample, nn.Dropout, nn.Dropout2d)
_ELEMENTWISE_FUNCTIONS = (operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
                          torch.relu, torch.sigmoid, torch.tanh, F.relu, F.leaky_relu)


class _GroupedConv(ReplicaConv):
    """K convolutions (or transposed convolutions) of the same shape as one grouped convolution.
    On the fast path (fast_layers.speed_up) a thin 3x3 convolution takes thin_conv2d, one matrix
    product per replica."""

    def __init__(self, convs: list[nn.Module]):
        c = convs[0]
        super().__init__(c, replicas=len(convs))
        if c.padding_mode != "zeros":
            raise NotGroupable(f"padding_mode={c.padding_mode!r} convolutions cannot be fused")
        self.transposed = isinstance(c, nn.ConvTranspose2d)
        self.stride, self.padding, self.dilation, self.groups = c.stride, c.padding, c.dilation, c.groups
        self.output_padding = getattr(c, "output_padding", 0)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in convs]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in convs])) if c.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.flatten(0, 1), None if self.bias is None else self.bias.flatten()
        groups = self.groups * self.replicas
        if self.thin and self.fast_path:
            return thin_conv2d(x, w, b, groups)
        if self.transposed:
            return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, groups, self.dilation)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups)


class _GroupedBatchNorm(nn.Module):
    """K BatchNorm2d layers as one over K*C channels: each replica's statistics stay its own."""

    def __init__(self, norms: list[nn.BatchNorm2d]):
        super().__init__()
        n = norms[0]
        if not (n.affine and n.track_running_stats):
            raise NotGroupable("only affine batch norm with running statistics can be fused")
        self.eps, self.momentum = n.eps, n.momentum
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in norms]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in norms]))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, torch.stack([getattr(m, name) for m in norms]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        momentum = self.momentum
        if self.training:  # what nn.BatchNorm2d does, per replica
            self.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked[0])
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.flatten(),
                            self.bias.flatten(), self.training, momentum if momentum is not None else 0.0, self.eps)


def group_replicas(models: list[nn.Module]) -> torch.fx.GraphModule:
    """One network that runs K replicas of one architecture side by side in the grouped layout.
    Its parameters and buffers carry the replicas' state-dict names, stacked: (K, *shape).
    Raises NotGroupable for a layer it cannot batch (train those replicas with fused=False)."""
    k = len(models)
    try:
        net = torch.fx.symbolic_trace(models[0])
    except Exception as e:  # noqa: BLE001 - data-dependent control flow and the like
        raise NotGroupable(f"the model cannot be traced ({e})") from None
    for node in net.graph.nodes:
        if node.op == "call_module":
            layers = [m.get_submodule(node.target) for m in models]
            if isinstance(layers[0], (nn.Conv2d, nn.ConvTranspose2d)):
                net.set_submodule(node.target, _GroupedConv(layers))
            elif isinstance(layers[0], nn.BatchNorm2d):
                net.set_submodule(node.target, _GroupedBatchNorm(layers))
            elif not isinstance(layers[0], _PER_SAMPLE_MODULES):
                raise NotGroupable(f"layer {node.target} ({type(layers[0]).__name__}) cannot be fused")
        elif node.op == "call_function" and node.target is torch.cat:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim not in (1, -3):
                raise NotGroupable(f"{node.name}: only concatenation along channels can be fused")
            node.target, node.args, node.kwargs = grouped_cat, (node.args[0], k), {}
        elif node.op == "get_attr" or (node.op in ("call_function", "call_method")
                                       and node.target not in _ELEMENTWISE_FUNCTIONS):
            raise NotGroupable(f"{node.name} ({node.target}) cannot be fused")
    net.recompile()
    return net


def to_groups(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(K, N, C, H, W) replica batches -> (N, K*C, H, W) grouped layout, channels-last if asked
    (also for K = 1, where the reshape alone would keep the input's layout)."""
    k, n, c, h, w = x.shape
    if channels_last:
        grouped = x.permute(1, 3, 4, 0, 2).reshape(n, h, w, k * c).permute(0, 3, 1, 2)
        return grouped.contiguous(memory_format=torch.channels_last)
    return x.transpose(0, 1).reshape(n, k * c, h, w)


def from_groups(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, K*C, H, W) grouped layout -> (K, N, C, H, W) (a view)."""
    return x.unflatten(1, (k, -1)).transpose(0, 1)
