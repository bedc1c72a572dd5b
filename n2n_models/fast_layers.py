"""Faster CPU versions of layers of the report's networks, and `speed_up`, which swaps them into a
model; the interface (ReplicaConv) through which the fused replicas' grouped convolutions take them.

The layers compute the same sums as the standard ones in another order (results agree to float
rounding): n2n_models.thin_conv (ThinConv2d, thin 3x3 convolutions as matrix products) and
n2n_models.up_concat (UpConcatConv2d, UpConcatThinConv2d and GroupedUpConcatConv2d, a 3x3
convolution of an upsample-and-concatenate without either tensor; NearestUpsample). Their names
import from here too. The training loop calls `speed_up` on CPU; models, checkpoints and the
reference loop keep the standard layers. What each brings: docs/benchmarks.md.
"""
from __future__ import annotations

import torch
import torch.fx
from torch import nn

from .thin_conv import THIN_MAX_OUT, THIN_MIN_IN, ThinConv2d, is_same_3x3, thin_conv2d, thin_conv_applies
from .up_concat import (GroupedUpConcatConv2d, NearestUpsample, UpConcatConv2d, UpConcatThinConv2d, block_sum,
                        grouped_cat, up_concat_conv2d, up_concat_thin_conv2d, up_concat_transposed)

__all__ = ["THIN_MAX_OUT", "THIN_MIN_IN", "GroupedUpConcatConv2d", "NearestUpsample",
           "ReplicaConv", "ThinConv2d", "UpConcatConv2d", "UpConcatThinConv2d", "block_sum", "fuse_upsample_concat",
           "grouped_cat", "is_same_3x3", "speed_up", "thin_conv2d", "thin_conv_applies", "up_concat_conv2d",
           "up_concat_thin_conv2d", "up_concat_transposed"]

class ReplicaConv(nn.Module):
    """The fused replicas' grouped convolution as the fast layers see it (n2n_models.fused
    implements it): K convolutions of one shape whose `weight` and `bias` are stacked per replica,
    (K, out, in, kh, kw) and (K, out). `speed_up` recognises it by this class and calls
    `take_fast_path()`; a thin one then computes with thin_conv2d, one matrix product per replica."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self, conv: nn.Module, replicas: int):
        super().__init__()
        self.replicas = replicas
        self.thin = thin_conv_applies(conv)  # each replica's convolution is a thin 3x3 one
        # one group, 3x3, stride 1, padding 1: it can compute a convolution of an upsample-and-concatenate
        self.same_size_3x3 = is_same_3x3(conv) and conv.groups == 1
        self.fast_path = False

    def take_fast_path(self):
        """Compute with the fast layers from now on (their own CPU checks still apply)."""
        self.fast_path = True


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


def _one_group_3x3(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.groups == 1 and is_same_3x3(m)


def _replicas_3x3(m: nn.Module) -> int:
    """For the fused replicas' grouped convolution (a ReplicaConv) of a one-group, same-size 3x3
    convolution that is not thin: its number of replicas; else 0. A thin one keeps the grouped thin
    path (its upsample-and-concatenate version was no faster: docs/benchmarks.md)."""
    return m.replicas if isinstance(m, ReplicaConv) and m.same_size_3x3 and not m.thin else 0


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
    except for a thin convolution (no faster that way). Returns a torch.fx.GraphModule
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
            fast = GroupedUpConcatConv2d(conv.weight, conv.bias, scale)
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
    """Swap the fast layers into `model`, sharing its parameters (its state dict and optimiser are
    unchanged), put the fused replicas' grouped convolutions (ReplicaConv) on their fast path, and
    return the model to train. Other layers, and layers these do not cover, stay. That is `model`
    itself, changed in place, unless a convolution of an upsample-and-concatenate became one layer
    (fuse_upsample_concat): then it is a torch.fx.GraphModule with the same parameters and
    state-dict names, and `model` keeps its own layers."""
    model = fuse_upsample_concat(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, ReplicaConv):
            module.take_fast_path()
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
