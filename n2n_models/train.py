"""The training loop: Adam over K seed replicas of one configuration, each its own network or all K
fused into one (n2n_models.fused); the step that runs on every batch is ReplicaTrainer._train_step.

The whole dataset stays on the training device as uint8 and is batched by index: no DataLoader,
no worker processes, one float conversion per batch. Replica i is initialised with
`torch.manual_seed(seeds[i])` and draws its own data order from `seeds[i]` and the epoch
(`data_order`), so a replica trains the same numbers fused or alone. What makes the loop fast
without changing its math (docs/benchmarks.md): channels-last activations on CPU, Adam's fused
kernel, the layers of n2n_models.fast_layers on CPU, freed memory kept in the process's heap
(n2n_models.allocator), no host synchronisation inside an epoch, and on GPUs fused replicas and
each step replayed from a CUDA graph (n2n_models.cuda_graphs).
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from . import build_model
from .allocator import keep_freed_memory
from .augment import augment_pairs
from .config import ADAM_BETAS, TrainSpec
from .cuda_graphs import GRAPH_WARM_UP, GraphedStep
from .data.specs import TRAIN_CLEAN
from .fast_layers import speed_up
from .fused import NotGroupable, from_groups, group_replicas, to_groups
from .losses import PROGRESS_LOSSES, get_loss
from .metrics import psnr_per_image
from .reference import data_order

# the names tests, benchmarks and the trainable import from here
__all__ = ["GRAPH_WARM_UP", "NotGroupable", "ReplicaTrainer", "TrainSpec", "data_order", "eval_batch_size",
           "fused_by_default", "group_replicas", "training_target"]


def training_target(spec: TrainSpec, data: dict) -> torch.Tensor:
    """What the loss compares each output with, by name from `data` (the arrays of
    n2n_models.data.Pairs): the pair's second noisy copy `train_b` (Noise2Noise) or, for
    `spec.target == "clean"`, the clean image `train_clean` (Noise2Clean). The input, the batches
    and their order, and the initial weights are the same either way."""
    if spec.target != "clean":
        return data["train_b"]
    if data.get(TRAIN_CLEAN) is None:
        raise ValueError("target clean needs the clean training images, and this data has none "
                         "(epfl: data holds noisy pairs only)")
    return data[TRAIN_CLEAN]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0-255) to floats in [0, 1] of the default dtype, which the models' weights
    have too (float32; the exactness tests train in float64); the memory layout is kept."""
    return x.to(torch.get_default_dtype()).div_(255.0)


def init_replica(spec: TrainSpec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec.model, **spec.hparams)


def prefers_channels_last(device: torch.device) -> bool:
    """Channels-last activations where measured faster: CPU (oneDNN). GPUs keep the default
    layout, which was as fast or faster there (docs/benchmarks.md, "GPU figures")."""
    return torch.device(device).type == "cpu"


def eval_batch_size(device: torch.device) -> int:
    """Images per forward pass when evaluating. On CPU 64: chunks of 64 evaluate faster than one
    chunk of all images, whose activations do not stay in the caches; on GPUs 1000, fewer and
    fuller kernel launches (not measured smaller). bench/throughput.py --sections evaluation;
    docs/benchmarks.md."""
    return 64 if torch.device(device).type == "cpu" else 1000


def fused_by_default(device: torch.device, k: int) -> bool:
    """`fused=None`: fuse the replicas where that is the faster way to train them. On GPUs one
    grouped computation fills the device that one tiny model leaves idle; on CPU the grouped
    convolutions cost as much as the separate ones and a step is compute-bound, so sequential
    replicas are as fast or faster (docs/benchmarks.md)."""
    return torch.device(device).type == "cuda" and k > 1


class _Network(NamedTuple):
    """One network the trainer steps: the fused replicas' grouped network, or one replica's."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    replicas: slice  # the replicas it computes, in the order of spec.seeds
    count: int  # how many


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
        self._graphed = GraphedStep(self._train_step, self._drop_gradients, self.device)
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
        # what a step trains: the one grouped network of all K replicas, or one network per replica
        if self.fused:
            self._networks_list = [_Network(self.net, self.optimizers[0], slice(0, self.k), self.k)]
        else:
            self._networks_list = [_Network(m, opt, slice(i, i + 1), 1)
                                   for i, (m, opt) in enumerate(zip(self.models, self.optimizers))]
        # the weights' moving average (spec.ema): what evaluation, predictions and the replicas'
        # state dicts see, while the steps train the weights themselves
        self._trained = [p for opt in self.optimizers for group in opt.param_groups for p in group["params"]]
        self._averages = [p.detach().clone() for p in self._trained] if spec.ema else None
        self._averaged_steps = 0
        self._augment_buffers = None  # spec.augment's pairs of the epoch (_augmented)

    def _adam(self, params):
        # Adam's fused kernel: one pass over each tensor instead of a dozen (same update rule);
        # capturable keeps its step count on the GPU, so that a CUDA graph can replay it
        return torch.optim.Adam(params, lr=self.spec.lr, weight_decay=self.spec.weight_decay,
                                betas=(ADAM_BETAS[0], self.spec.beta2),
                                fused=self.device.type in ("cpu", "cuda"), capturable=self.cuda_graphs)

    def scale_lr(self, factor: float):
        """Train the next steps at `factor` times spec.lr (an annealed finish, search.finish); a
        captured CUDA graph holds the lr it was captured with, so the step is captured again."""
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = self.spec.lr * factor
        self._graphed.forget()

    @property
    def k(self) -> int:
        return len(self.spec.seeds)

    @property
    def _graph(self):
        """The captured CUDA graph of the step, None while no step was captured."""
        return self._graphed.captured

    def _networks(self) -> list[_Network]:
        """What a step trains (built once, in __init__; not on every batch)."""
        return self._networks_list

    def _autocast(self):
        if not self.spec.amp:
            return contextlib.nullcontext()
        # a captured step must not keep autocast's cache of cast weights (PyTorch's CUDA-graph notes)
        return torch.autocast(self.device.type, dtype=self._autocast_dtype, cache_enabled=not self.cuda_graphs)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _set_mode(self, training: bool):
        for network in self._networks():
            network.module.train(training)

    def _drop_gradients(self):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    # -- training --------------------------------------------------------------------------------
    def train_epoch(self, train_a: torch.Tensor, train_b: torch.Tensor,
                    step_losses: list | None = None) -> torch.Tensor:
        """One pass over the pairs (input a, target b); returns each replica's mean training loss.
        `step_losses`, when given, receives every step's per-replica losses, shape (K,)."""
        n, bs, epochs = len(train_a), self.spec.batch_size, max(self.spec.epochs, 1)
        if self.spec.augment:
            train_a, train_b = self._augmented(train_a, train_b)
        # a last batch of one image is left out: batch norm cannot train on it (UNet's 1x1 bottleneck)
        steps = max(1, n // bs if n % bs == 1 else math.ceil(n / bs))
        orders = torch.stack([data_order(s, self.epoch, n, self.device) for s in self.spec.seeds])
        self._set_mode(True)
        total = torch.zeros(self.k, device=self.device)
        graphs = self.cuda_graphs and train_a.is_cuda and train_b.is_cuda
        for step in range(steps):
            progress = (self.epoch + step / steps) / epochs
            idx = orders[:, step * bs:(step + 1) * bs]
            if graphs and idx.shape[1] == bs:  # a graph has one batch shape: a partial batch runs eagerly
                losses = self._graphed(train_a, train_b, idx, progress)
            else:
                losses = self._train_step(train_a, train_b, idx, progress)
            total += losses * idx.shape[1]
            if self._averages is not None:
                self._average_step()
            if step_losses is not None:
                step_losses.append(losses)
        self.epoch += 1
        return (total / min(n, steps * bs)).cpu()

    def _augmented(self, train_a: torch.Tensor, train_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's flipped, rotated and swapped pairs (spec.augment), in buffers kept for the next."""
        buffers = self._augment_buffers
        if buffers is None or buffers[0].shape != train_a.shape or buffers[1].shape != train_b.shape:
            buffers = self._augment_buffers = (torch.empty_like(train_a), torch.empty_like(train_b))
        return augment_pairs(train_a, train_b, self.epoch, self.spec.target == "noisy", *buffers)

    def _train_step(self, train_a: torch.Tensor, train_b: torch.Tensor, idx: torch.Tensor,
                    progress: float) -> torch.Tensor:
        """One Adam step of every replica on the uint8 pairs that `idx` (K, B) picks; their losses,
        (K,). This is what runs on every batch, eagerly or captured once and replayed."""
        losses = []
        for net, opt, replicas, k in self._networks():
            a, b = train_a[idx[replicas]], train_b[idx[replicas]]  # (k, B, C, H, W)
            x = to_unit(to_groups(a, self.channels_last))  # (B, k*C, H, W): replica i's channels are group i
            with self._autocast():
                out = net(x)
            pred = from_groups(out.to(x.dtype), k).flatten(0, 1)  # autocast's output in full precision
            loss = self.loss_fn(pred, to_unit(b).flatten(0, 1), progress).view(k, -1).mean(1)
            opt.zero_grad(set_to_none=True)
            if self._scaler is None:
                loss.sum().backward()  # the replicas' parameters are disjoint: each gets its own gradient
                opt.step()
            else:  # float16 autocast
                self._scaler.scale(loss.sum()).backward()
                self._scaler.step(opt)
                self._scaler.update()
            losses.append(loss.detach())
        return torch.cat(losses)

    @torch.no_grad()
    def _average_step(self):
        """Move the average towards the weights after a step; its decay ramps up from 0.1 over the
        first steps ((1 + n) / (10 + n)), so that the first epochs' average is not mostly the
        initial weights."""
        self._averaged_steps += 1
        n = self._averaged_steps
        decay = min(self.spec.ema, (1 + n) / (10 + n))
        get_ema_multi_avg_fn(decay)(self._averages, self._trained, n)

    @contextlib.contextmanager
    def _averaged(self):
        """Within it the networks hold the weights' moving average (spec.ema), else as trained."""
        if self._averages is None:
            yield
            return
        with torch.no_grad():
            trained = [p.detach().clone() for p in self._trained]
            for p, average in zip(self._trained, self._averages):
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, weights in zip(self._trained, trained):
                    p.copy_(weights)

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, noisy: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Denoised images of every replica, (K, N, 3, H, W) float in [0, 1], from uint8 input, in
        chunks of `batch_size` images (default `eval_batch_size(device)`); with spec.ema, by the
        weights' moving average."""
        with self._averaged():
            return self._predict(noisy, batch_size)

    def _predict(self, noisy: torch.Tensor, batch_size: int | None) -> torch.Tensor:
        self._set_mode(False)
        batch_size = batch_size or eval_batch_size(self.device)
        outs = []
        for start in range(0, len(noisy), batch_size):
            x = to_unit(self._layout(noisy[start:start + batch_size].to(self.device)))
            with self._autocast():  # every replica denoises the same images
                out = torch.cat([from_groups(net(to_groups(x.expand(k, *x.shape), self.channels_last)), k)
                                 for net, _, _, k in self._networks()])
            outs.append(out.to(x.dtype))
        return torch.cat(outs, 1).clamp_(0, 1)

    @torch.no_grad()
    def evaluate(self, val_noisy: torch.Tensor, val_clean: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Validation PSNR (dB, course convention) of each replica, shape (K,)."""
        batch_size = batch_size or eval_batch_size(self.device)
        sums = torch.zeros(self.k, device=self.device)
        with self._averaged():
            for start in range(0, len(val_noisy), batch_size):
                out = self._predict(val_noisy[start:start + batch_size], batch_size)
                clean = to_unit(val_clean[start:start + batch_size].to(self.device))
                sums += torch.stack([psnr_per_image(o, clean).sum() for o in out])
        return (sums / len(val_noisy)).cpu()

    # -- state -----------------------------------------------------------------------------------
    def replica_state_dicts(self) -> list[dict]:
        """Each replica's weights as a plain `build_model(...)` state dict (contiguous CPU tensors):
        with spec.ema their moving average, the weights it evaluates and exports."""
        with self._averaged():
            return self._replica_state_dicts()

    def _replica_state_dicts(self) -> list[dict]:
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
        """A snapshot, the same whether the replicas train fused or not: "epoch", "replicas" (each
        replica's `replica_state_dicts()`) and "optimizers" (each replica's Adam state, keyed by
        parameter name: `{"state": {name: {...}}, "param_groups": [...]}`) and "rng" (the random
        generator states dropout draws from: the CPU's, and the GPU's when training there), so that
        training resumed from it draws the dropout masks the uninterrupted run would have. With
        spec.ema, "replicas" holds the weights' moving average (what is evaluated and exported),
        "trained" the weights the steps train, and "average_steps" the average's step count. "loss"
        names the loss whose gradients Adam's moments measure. Copies, which later training leaves as
        they are (an optimiser's own state_dict holds its live tensors)."""
        optimizers = []
        for net, opt, _, k in self._networks():
            optimizers += _split_optimizer_state(net, opt, k, stacked=self.fused)
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {"epoch": self.epoch, "replicas": self.replica_state_dicts(), "optimizers": optimizers, "rng": rng,
                 "loss": self.spec.loss}
        if self._averages is not None:
            state["trained"] = self._replica_state_dicts()
            state["average_steps"] = self._averaged_steps
        return state

    def load_state_dict(self, state: dict):
        """Restore a `state_dict()`, written fused or not. Adam starts afresh (no moments, step 0)
        when the state was trained with another loss than spec.loss (Population Based Training
        changes the loss between checkpoints): its moments measure the other loss's gradients, and
        the HDR loss's are up to 10^4 times L2's, so carried over, the first updates are about 3 lr
        in every weight at once (measured: a UNet at 26.0 dB went to 4.5 dB in one epoch, and stayed
        there; with Adam afresh it went on at 25.9 dB; docs/search-quality.md)."""
        if "fused" in state:  # the earlier layout: optimiser state by position, one per network
            raise ValueError("checkpoint written before optimiser states were kept per replica and by name; "
                             "its weights (\"replicas\") load into build_model, but training cannot resume from it")
        if len(state["replicas"]) != self.k or len(state.get("optimizers", ())) != self.k:
            raise ValueError(f"checkpoint holds {len(state['replicas'])} replicas and "
                             f"{len(state.get('optimizers', ()))} optimiser states; this trainer trains {self.k}")
        self._load_replicas(state["replicas"])
        if self._averages is not None:  # a checkpoint without an average starts it at its weights
            with torch.no_grad():
                for average, p in zip(self._averages, self._trained):
                    average.copy_(p)
            self._averaged_steps = int(state.get("average_steps", 0))
        if "trained" in state:
            self._load_replicas(state["trained"])
        optimizers = state["optimizers"]
        if state.get("loss", self.spec.loss) != self.spec.loss:  # checkpoints before "loss" was kept: carried
            optimizers = [{**o, "state": {}} for o in optimizers]
        for net, opt, replicas, _ in self._networks():
            # a checkpoint from another device brings its own `capturable`: this trainer keeps its own
            _join_optimizer_state(net, opt, optimizers[replicas], stacked=self.fused,
                                  capturable=self.cuda_graphs)
        rng = state.get("rng", {})  # absent from checkpoints written before it was kept
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"].cpu())
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        self._graphed.forget()  # the optimiser's state tensors are new: capture the step again
        self.epoch = int(state["epoch"])

    def _load_replicas(self, replicas: list[dict]):
        if self.fused:
            with torch.no_grad():
                for source in (self.params, self.buffers):
                    for name, stacked in source.items():
                        stacked.copy_(torch.stack([r[name] for r in replicas]))
        else:
            for model, replica in zip(self.models, replicas):
                model.load_state_dict(replica)


# -- the optimiser state per replica, keyed by parameter name ----------------------------------------
_PER_OPTIMIZER = ("step",)  # Adam's state entries of one value per optimiser; the others are per element


def _names_in_order(net: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The names of `opt`'s parameters in `net`, in the order its state_dict numbers them."""
    name_of = {id(p): name for name, p in net.named_parameters()}
    return [name_of[id(p)] for group in opt.param_groups for p in group["params"]]


def _split_optimizer_state(net: nn.Module, opt: torch.optim.Optimizer, k: int, stacked: bool) -> list[dict]:
    """`opt`'s state as k replicas' (copies); a stacked network's parameters are (k, *shape)."""
    names, saved = _names_in_order(net, opt), opt.state_dict()
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]
    return [{"state": {names[i]: {key: (v[j] if stacked and key not in _PER_OPTIMIZER else v).clone()
                                  for key, v in entry.items()}
                       for i, entry in saved["state"].items()},
             "param_groups": [dict(g) for g in groups]} for j in range(k)]


def _join_optimizer_state(net: nn.Module, opt: torch.optim.Optimizer, replicas: list[dict], stacked: bool,
                          capturable: bool):
    """Load the states of the replicas `net` computes (`_split_optimizer_state`'s layout) into `opt`,
    each tensor in its parameter's device, dtype and memory layout."""
    names, params = _names_in_order(net, opt), dict(net.named_parameters())
    # lr, weight decay and betas are the trial's configuration's (Population Based Training changes
    # them between checkpoints); the rest of the optimiser's settings come with its state
    settings = {key: v for key, v in replicas[0]["param_groups"][0].items()
                if key not in ("params", "lr", "weight_decay", "betas")}
    state = {}
    for i, name in enumerate(names):
        if name not in replicas[0]["state"]:
            continue  # no step taken yet
        entries = [r["state"][name] for r in replicas]
        state[i] = {key: v.clone() if key in _PER_OPTIMIZER else
                    torch.empty_like(params[name]).copy_(torch.stack([e[key] for e in entries]) if stacked else v)
                    for key, v in entries[0].items()}
    groups = [{**g, **settings, "capturable": capturable, "params": g["params"]}
              for g in opt.state_dict()["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
