"""The training loop: Adam over K seed replicas of one configuration, run one after another or
fused into one grouped computation (replica i's weights are group i of every convolution).

The whole dataset stays on the training device as uint8 and is batched by index: no DataLoader,
no worker processes, one float conversion per batch. Replica i is initialised with
`torch.manual_seed(seeds[i])` and draws its own data order from `seeds[i]` and the epoch, so a
replica trains the same numbers fused or alone. What makes the loop fast without changing its
math (measured in docs/benchmarks.md): channels-last activations on CPU, where oneDNN
convolutions run about 1.7 times as fast as in the default layout, Adam's fused kernel, on CPU the
layers of n2n_models.fast_layers (thin 3x3 convolutions as matrix products, a convolution of an
upsample-and-concatenate computed at the low resolution as in TNet's and UNet's decoders, a
faster nearest-upsample backward), freed memory kept in
the process's heap instead of page-faulting back every step (n2n_models.allocator), and no host
synchronisation inside an epoch. On GPUs, where a small model's step waits on Python launching
its kernels one by one, each step is replayed from a CUDA graph (the same kernels, launched at
once) and seed replicas are fused.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from . import build_model
from .allocator import keep_freed_memory
from .fast_layers import grouped_cat, speed_up, thin_conv2d, thin_conv_applies
from .losses import PROGRESS_LOSSES, get_loss
from .metrics import psnr_per_image


@dataclasses.dataclass
class TrainSpec:
    """What one trial trains: a model configuration, its optimiser settings and its seeds.
    `amp` trains and evaluates under autocast (bfloat16; float16 with loss scaling on GPUs
    without bfloat16); off by default, because its effect on PSNR is measured only per device."""

    model: str = "tnet"
    hparams: dict = dataclasses.field(default_factory=dict)
    lr: float = 5e-4
    batch_size: int = 32
    epochs: int = 50
    loss: str = "l2"
    seeds: tuple = (0,)
    amp: bool = False

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds:
            raise ValueError("a TrainSpec needs at least one seed")
        get_loss(self.loss)  # fail early on an unknown loss


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0-255) to floats in [0, 1] of the default dtype, which the models' weights
    have too (float32; the exactness tests train in float64); the memory layout is kept."""
    return x.to(torch.get_default_dtype()).div_(255.0)


def init_replica(spec: TrainSpec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec.model, **spec.hparams)


def data_order(seed: int, epoch: int, n: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def prefers_channels_last(device: torch.device) -> bool:
    """Channels-last activations where measured faster: CPU (oneDNN). GPUs keep the default
    layout: channels-last was 0.85-1.02x there (H100, docs/benchmarks.md)."""
    return torch.device(device).type == "cpu"


def eval_batch_size(device: torch.device) -> int:
    """Images per forward pass when evaluating. On CPU 64: 500 validation images in chunks of 64
    evaluate 1.2-1.5 times as fast as in one chunk of 1000 (TNet, BaseNet, UNet; 1 and 2 threads),
    whose activations do not stay in the caches; on GPUs 1000, fewer and fuller kernel launches
    (not measured smaller). bench/throughput.py --sections evaluation; docs/benchmarks.md."""
    return 64 if torch.device(device).type == "cpu" else 1000


def fused_by_default(device: torch.device, k: int) -> bool:
    """`fused=None`: fuse the replicas where that is the faster way to train them. On GPUs one
    grouped computation fills the device that one tiny model leaves idle; on CPU the grouped
    convolutions cost as much as the separate ones and a step is compute-bound (a batch five
    times larger costs more than five times as much), so sequential replicas are as fast or faster
    (docs/benchmarks.md)."""
    return torch.device(device).type == "cuda" and k > 1


# -- fused replicas: one grouped network ----------------------------------------------------------
# Activations of K replicas travel as one tensor (N, K*C, H, W): channels [i*C, (i+1)*C) belong to
# replica i. Per-sample layers (activations, pools, upsampling, dropout) act on it unchanged;
# convolutions become grouped convolutions, batch norm normalises each replica's channels over its
# own batch (exactly as alone), and a concatenation along channels interleaves per replica.

class NotGroupable(ValueError):
    """The model has a layer that the fused (grouped) replicas do not know how to batch."""


_PER_SAMPLE_MODULES = (nn.LeakyReLU, nn.ReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity,
                       nn.MaxPool2d, nn.AvgPool2d, nn.Upsample, nn.Dropout, nn.Dropout2d)
_ELEMENTWISE_FUNCTIONS = (operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
                          torch.relu, torch.sigmoid, torch.tanh, F.relu, F.leaky_relu)


class _GroupedConv(nn.Module):
    """K convolutions (or transposed convolutions) of the same shape as one grouped convolution.
    With `use_fast_layers` (set by fast_layers.speed_up) a thin 3x3 convolution takes
    fast_layers.thin_conv2d, one matrix product per replica."""

    use_fast_layers = False

    def __init__(self, convs: list[nn.Module]):
        super().__init__()
        c = convs[0]
        if c.padding_mode != "zeros":
            raise NotGroupable(f"padding_mode={c.padding_mode!r} convolutions cannot be fused")
        # `replicas` is also how fast_layers recognises a grouped convolution of replicas
        self.replicas, self.transposed = len(convs), isinstance(c, nn.ConvTranspose2d)
        self.stride, self.padding, self.dilation, self.groups = c.stride, c.padding, c.dilation, c.groups
        self.output_padding = getattr(c, "output_padding", 0)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in convs]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in convs])) if c.bias is not None else None
        self.thin = thin_conv_applies(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.flatten(0, 1), None if self.bias is None else self.bias.flatten()
        groups = self.groups * self.replicas
        if self.thin and self.use_fast_layers:
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
    """(K, N, C, H, W) replica batches -> (N, K*C, H, W) grouped layout."""
    k, n, c, h, w = x.shape
    if channels_last:
        return x.permute(1, 3, 4, 0, 2).reshape(n, h, w, k * c).permute(0, 3, 1, 2)
    return x.transpose(0, 1).reshape(n, k * c, h, w)


def from_groups(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, K*C, H, W) grouped layout -> (K, N, C, H, W) (a view)."""
    return x.unflatten(1, (k, -1)).transpose(0, 1)


# -- the trainer ----------------------------------------------------------------------------------
GRAPH_WARM_UP = 3  # eager steps before a training step is captured as a CUDA graph


@dataclasses.dataclass
class _StepGraph:
    """A captured training step: replaying `graph` trains on the pairs `idx` picks and writes the
    replicas' losses into `losses`. `key`: the data tensors and batch shape it was captured for."""

    key: tuple
    graph: "torch.cuda.CUDAGraph"
    idx: torch.Tensor
    losses: torch.Tensor


class ReplicaTrainer:
    """Trains `spec.seeds` replicas of `spec` on `device`; `fused=None` fuses them where that is
    faster (`fused_by_default`: on GPUs). `fast_layers=None` swaps in n2n_models.fast_layers on CPU
    (same math, faster there); False keeps the model's own layers. `cuda_graphs=None` replays full
    batches' steps from a CUDA graph where it can (a CUDA device and the data on it, any loss but
    the annealed l0, no float16 loss scaling); False keeps every step eager."""

    def __init__(self, spec: TrainSpec, device="cpu", fused: bool | None = None, fast_layers: bool | None = None,
                 cuda_graphs: bool | None = None):
        self.spec, self.device = spec, torch.device(device)
        self.fused = fused_by_default(self.device, len(spec.seeds)) if fused is None else bool(fused)
        self.channels_last = prefers_channels_last(self.device)
        self.fast_layers = self.device.type == "cpu" if fast_layers is None else bool(fast_layers)
        self.loss_fn = get_loss(spec.loss)
        self.epoch = 0
        self._autocast_dtype = (torch.bfloat16 if self.device.type != "cuda" or torch.cuda.is_bf16_supported()
                                else torch.float16)
        self._scaler = (torch.amp.GradScaler("cuda") if spec.amp and self._autocast_dtype == torch.float16
                        else None)
        graphable = self.device.type == "cuda" and spec.loss not in PROGRESS_LOSSES and self._scaler is None
        if cuda_graphs and not graphable:
            raise ValueError(f"cuda_graphs needs a CUDA device, a loss that does not change as training goes on "
                             f"(not {', '.join(PROGRESS_LOSSES)}) and no float16 loss scaling")
        self.cuda_graphs = graphable if cuda_graphs is None else bool(cuda_graphs)
        self._graph: _StepGraph | None = None
        self._eager_steps = 0
        keep_freed_memory()  # process-wide, once
        models = [init_replica(spec, s) for s in spec.seeds]
        if self.fused:
            self.net = group_replicas(models).to(self.device)
            if self.fast_layers:
                self.net = speed_up(self.net)
            self.params = dict(self.net.named_parameters())
            self.buffers = dict(self.net.named_buffers())
            self.optimizers = [self._adam(self.params.values())]
        else:
            fmt = torch.channels_last if self.channels_last else torch.preserve_format
            self.models = [m.to(self.device, memory_format=fmt) for m in models]
            # the optimiser sees the model's own parameter order, with or without fast layers
            self.optimizers = [self._adam(m.parameters()) for m in self.models]
            if self.fast_layers:
                self.models = [speed_up(m) for m in self.models]

    def _adam(self, params):
        # Adam's fused kernel: one pass over each tensor instead of a dozen (same update rule);
        # capturable keeps its step count on the GPU, so that a CUDA graph can replay it
        return torch.optim.Adam(params, lr=self.spec.lr, fused=self.device.type in ("cpu", "cuda"),
                                capturable=self.cuda_graphs)

    @property
    def k(self) -> int:
        return len(self.spec.seeds)

    def _autocast(self):
        if not self.spec.amp:
            return contextlib.nullcontext()
        # a captured step must not keep autocast's cache of cast weights (PyTorch's CUDA-graph notes)
        return torch.autocast(self.device.type, dtype=self._autocast_dtype, cache_enabled=not self.cuda_graphs)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _set_mode(self, training: bool):
        for m in ([self.net] if self.fused else self.models):
            m.train(training)

    # -- training --------------------------------------------------------------------------------
    def train_epoch(self, train_a: torch.Tensor, train_b: torch.Tensor,
                    step_losses: list | None = None) -> torch.Tensor:
        """One pass over the pairs (input a, target b); returns each replica's mean training loss.
        `step_losses`, when given, receives every step's per-replica losses, shape (K,)."""
        n, bs, epochs = len(train_a), self.spec.batch_size, max(self.spec.epochs, 1)
        # a last batch of one image is left out: batch norm cannot train on it (UNet's 1x1 bottleneck)
        steps = max(1, n // bs if n % bs == 1 else math.ceil(n / bs))
        orders = torch.stack([data_order(s, self.epoch, n, self.device) for s in self.spec.seeds])
        self._set_mode(True)
        total = torch.zeros(self.k, device=self.device)
        graphs = self.cuda_graphs and train_a.is_cuda and train_b.is_cuda
        for step in range(steps):
            progress = (self.epoch + step / steps) / epochs
            idx = orders[:, step * bs:(step + 1) * bs]
            if graphs and idx.shape[1] == bs:
                losses = self._graphed_step(train_a, train_b, idx, progress)
            else:
                losses = self._train_step(train_a, train_b, idx, progress)
            total += losses * idx.shape[1]
            if step_losses is not None:
                step_losses.append(losses)
        self.epoch += 1
        return (total / min(n, steps * bs)).cpu()

    def _train_step(self, train_a: torch.Tensor, train_b: torch.Tensor, idx: torch.Tensor,
                    progress: float) -> torch.Tensor:
        """One Adam step of every replica on the pairs that `idx` (K, B) picks; their losses, (K,)."""
        if self.fused:
            return self._fused_step(train_a[idx], train_b[idx], progress)
        return torch.stack([self._step(i, train_a[idx[i]], train_b[idx[i]], progress) for i in range(self.k)])

    def _graphed_step(self, train_a: torch.Tensor, train_b: torch.Tensor, idx: torch.Tensor,
                      progress: float) -> torch.Tensor:
        """`_train_step` replayed from a CUDA graph of the whole step (gather, forward, backward, Adam):
        the same kernels on the same memory, launched by one call instead of one by one from Python,
        which is what a small model's step on a GPU waits for (docs/benchmarks.md, GPU figures).
        The first GRAPH_WARM_UP steps run eagerly on a side stream (lazy initialisation must not be
        captured); then the step is captured once per data tensors and batch shape, and each later
        step copies its indices into the graph's input and replays it."""
        key = (train_a.data_ptr(), train_b.data_ptr(), train_a.shape, train_b.shape, idx.shape)
        if self._graph is None or self._graph.key != key:
            if self._eager_steps < GRAPH_WARM_UP:
                self._eager_steps += 1
                side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    losses = self._train_step(train_a, train_b, idx, progress)
                main.wait_stream(side)
                return losses
            self._graph = None  # let the previous graph's memory go first
            self._graph = self._capture(key, train_a, train_b, idx.shape)
        self._graph.idx.copy_(idx)
        self._graph.graph.replay()
        return self._graph.losses.clone()

    def _capture(self, key, train_a: torch.Tensor, train_b: torch.Tensor, idx_shape) -> "_StepGraph":
        idx = torch.zeros(idx_shape, dtype=torch.long, device=self.device)
        for opt in self.optimizers:  # backward then writes the gradients into the graph's own memory
            opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records the kernels; nothing runs until replay
            losses = self._train_step(train_a, train_b, idx, 0.0)  # graphed losses ignore progress
        return _StepGraph(key, graph, idx, losses)

    def _step(self, i: int, a: torch.Tensor, b: torch.Tensor, progress: float) -> torch.Tensor:
        """One Adam step of replica i on uint8 batches (B, C, H, W); its loss, detached."""
        model, opt = self.models[i], self.optimizers[i]
        x, y = to_unit(self._layout(a)), to_unit(self._layout(b))
        with self._autocast():
            out = model(x)
        loss = self.loss_fn(out.to(y.dtype), y, progress).mean()  # autocast's output in full precision
        self._backward_and_step(loss, opt)
        return loss.detach()

    def _fused_step(self, a: torch.Tensor, b: torch.Tensor, progress: float) -> torch.Tensor:
        """One Adam step of all replicas on uint8 batches (K, B, C, H, W); their losses, (K,)."""
        k, batch = a.shape[:2]
        x = to_unit(to_groups(a, self.channels_last))
        with self._autocast():
            out = self.net(x)
        pred = from_groups(out.to(x.dtype), k).reshape(k * batch, *a.shape[2:])
        losses = self.loss_fn(pred, to_unit(b).flatten(0, 1), progress).view(k, batch).mean(1)
        self._backward_and_step(losses.sum(), self.optimizers[0])  # replicas' gradients are disjoint
        return losses.detach()

    def _backward_and_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer):
        opt.zero_grad(set_to_none=True)
        if self._scaler is None:
            loss.backward()
            opt.step()
        else:
            self._scaler.scale(loss).backward()
            self._scaler.step(opt)
            self._scaler.update()

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, noisy: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Denoised images of every replica, (K, N, 3, H, W) float in [0, 1], from uint8 input, in
        chunks of `batch_size` images (default `eval_batch_size(device)`)."""
        self._set_mode(False)
        batch_size = batch_size or eval_batch_size(self.device)
        outs = []
        for start in range(0, len(noisy), batch_size):
            x = to_unit(self._layout(noisy[start:start + batch_size].to(self.device)))
            with self._autocast():
                if self.fused:
                    out = from_groups(self.net(to_groups(x.expand(self.k, *x.shape), self.channels_last)), self.k)
                else:
                    out = torch.stack([m(x) for m in self.models])
            outs.append(out.to(x.dtype))
        return torch.cat(outs, 1).clamp_(0, 1)

    @torch.no_grad()
    def evaluate(self, val_noisy: torch.Tensor, val_clean: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Validation PSNR (dB, course convention) of each replica, shape (K,)."""
        self._set_mode(False)
        batch_size = batch_size or eval_batch_size(self.device)
        sums = torch.zeros(self.k, device=self.device)
        for start in range(0, len(val_noisy), batch_size):
            out = self.predict(val_noisy[start:start + batch_size], batch_size)
            clean = to_unit(val_clean[start:start + batch_size].to(self.device))
            sums += torch.stack([psnr_per_image(o, clean).sum() for o in out])
        return (sums / len(val_noisy)).cpu()

    # -- state -----------------------------------------------------------------------------------
    def replica_state_dicts(self) -> list[dict]:
        """Each replica's weights as a plain `build_model(...)` state dict (contiguous CPU tensors)."""
        if not self.fused:
            return [{k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                     for k, v in m.state_dict().items()} for m in self.models]
        states = [{} for _ in range(self.k)]
        for source in (self.params, self.buffers):
            for name, stacked in source.items():
                for i in range(self.k):
                    states[i][name] = stacked[i].detach().cpu().clone()
        return states

    def replica_model(self, i: int) -> nn.Module:
        model = build_model(self.spec.model, **self.spec.hparams)
        model.load_state_dict(self.replica_state_dicts()[i])
        return model.eval()

    def state_dict(self) -> dict:
        """A snapshot: copies, which later training leaves as they are (an optimiser's own
        state_dict holds its live tensors, which the next step changes in place)."""
        return {
            "epoch": self.epoch,
            "fused": self.fused,
            "replicas": self.replica_state_dicts(),
            "optimizers": [copy.deepcopy(o.state_dict()) for o in self.optimizers],
        }

    def load_state_dict(self, state: dict):
        if state["fused"] != self.fused or len(state["replicas"]) != self.k:
            raise ValueError("checkpoint was written by a trainer with other replicas or fusion")
        if self.fused:
            with torch.no_grad():
                for source in (self.params, self.buffers):
                    for name, stacked in source.items():
                        stacked.copy_(torch.stack([r[name] for r in state["replicas"]]))
        else:
            for model, replica in zip(self.models, state["replicas"]):
                model.load_state_dict(replica)
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
            for group in opt.param_groups:  # a checkpoint from another device brings its own setting
                group["capturable"] = self.cuda_graphs
        self._graph = None  # the optimiser's state tensors are new: capture the step again
        self.epoch = int(state["epoch"])
