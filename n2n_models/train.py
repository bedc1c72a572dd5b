"""The training loop: Adam over K seed replicas of one configuration, fused into one batched
computation (torch.func vmap over stacked weights) or run one after another.

The whole dataset stays on the training device as uint8 and is batched by index: no DataLoader,
no worker processes, one float conversion per batch. Replica i is initialised with
`torch.manual_seed(seeds[i])` and draws its own data order from `seeds[i]` and the epoch, so a
replica trains the same numbers fused or alone.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import build_model
from .losses import get_loss
from .metrics import psnr_per_image


@dataclasses.dataclass
class TrainSpec:
    """What one trial trains: a model configuration, its optimiser settings and its seeds."""

    model: str = "tnet"
    hparams: dict = dataclasses.field(default_factory=dict)
    lr: float = 5e-4
    batch_size: int = 32
    epochs: int = 50
    loss: str = "l2"
    seeds: tuple = (0,)

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds:
            raise ValueError("a TrainSpec needs at least one seed")
        get_loss(self.loss)  # fail early on an unknown loss


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0-255) to float in [0, 1]."""
    return x.float().div_(255.0)


def init_replica(spec: TrainSpec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec.model, **spec.hparams)


def data_order(seed: int, epoch: int, n: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


class ReplicaTrainer:
    """Trains `spec.seeds` replicas of `spec` on `device`; `fused=None` fuses them on GPUs."""

    def __init__(self, spec: TrainSpec, device="cpu", fused: bool | None = None):
        self.spec, self.device = spec, torch.device(device)
        self.fused = (self.device.type == "cuda" and len(spec.seeds) > 1) if fused is None else fused
        self.loss_fn = get_loss(spec.loss)
        self.epoch = 0
        models = [init_replica(spec, s).to(self.device) for s in spec.seeds]
        if self.fused:
            params, buffers = stack_module_state(models)
            self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
            self.buffers = buffers
            self._base = copy.deepcopy(models[0]).to("meta")
            self.optimizers = [torch.optim.Adam(self.params.values(), lr=spec.lr)]
        else:
            self.models = models
            self.optimizers = [torch.optim.Adam(m.parameters(), lr=spec.lr) for m in models]

    @property
    def k(self) -> int:
        return len(self.spec.seeds)

    # -- forward passes --------------------------------------------------------------------------
    def _fused_forward(self, x: torch.Tensor, batched_input: bool = True) -> torch.Tensor:
        def f(p, b, xi):
            return functional_call(self._base, (p, b), (xi,))

        in_dims = (0, 0, 0 if batched_input else None)
        return vmap(f, in_dims=in_dims, randomness="different")(self.params, self.buffers, x)

    def _set_mode(self, training: bool):
        if self.fused:
            self._base.train(training)
        else:
            for m in self.models:
                m.train(training)

    # -- training --------------------------------------------------------------------------------
    def train_epoch(self, train_a: torch.Tensor, train_b: torch.Tensor) -> torch.Tensor:
        """One pass over the pairs (input a, target b); returns each replica's mean training loss."""
        n, bs, epochs = len(train_a), self.spec.batch_size, max(self.spec.epochs, 1)
        steps = math.ceil(n / bs)
        orders = torch.stack([data_order(s, self.epoch, n, self.device) for s in self.spec.seeds])
        self._set_mode(True)
        total = torch.zeros(self.k, device=self.device)
        for step in range(steps):
            progress = (self.epoch + step / steps) / epochs
            idx = orders[:, step * bs:(step + 1) * bs]
            if self.fused:
                x, y = to_unit(train_a[idx]), to_unit(train_b[idx])  # (K, B, 3, 32, 32)
                per_sample = vmap(lambda p, t: self.loss_fn(p, t, progress))(self._fused_forward(x), y)
                losses = per_sample.mean(1)
                opt = self.optimizers[0]
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                total += losses.detach() * idx.shape[1]
            else:
                for i, (model, opt) in enumerate(zip(self.models, self.optimizers)):
                    x, y = to_unit(train_a[idx[i]]), to_unit(train_b[idx[i]])
                    loss = self.loss_fn(model(x), y, progress).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total[i] += loss.detach() * idx.shape[1]
        self.epoch += 1
        return (total / n).cpu()

    @torch.no_grad()
    def predict(self, noisy: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Denoised images of every replica, (K, N, 3, H, W) float in [0, 1], from uint8 input."""
        self._set_mode(False)
        outs = []
        for start in range(0, len(noisy), batch_size):
            x = to_unit(noisy[start:start + batch_size].to(self.device))
            if self.fused:
                outs.append(self._fused_forward(x, batched_input=False))
            else:
                outs.append(torch.stack([m(x) for m in self.models]))
        return torch.cat(outs, 1).clamp_(0, 1)

    @torch.no_grad()
    def evaluate(self, val_noisy: torch.Tensor, val_clean: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Validation PSNR (dB, course convention) of each replica, shape (K,)."""
        self._set_mode(False)
        sums = torch.zeros(self.k, device=self.device)
        for start in range(0, len(val_noisy), batch_size):
            out = self.predict(val_noisy[start:start + batch_size], batch_size)
            clean = to_unit(val_clean[start:start + batch_size].to(self.device))
            sums += torch.stack([psnr_per_image(o, clean).sum() for o in out])
        return (sums / len(val_noisy)).cpu()

    # -- state -----------------------------------------------------------------------------------
    def replica_state_dicts(self) -> list[dict]:
        """Each replica's weights as a plain `build_model(...)` state dict (CPU tensors)."""
        if not self.fused:
            return [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in self.models]
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
        return {
            "epoch": self.epoch,
            "fused": self.fused,
            "replicas": self.replica_state_dicts(),
            "optimizers": [o.state_dict() for o in self.optimizers],
        }

    def load_state_dict(self, state: dict):
        if state["fused"] != self.fused or len(state["replicas"]) != self.k:
            raise ValueError("checkpoint was written by a trainer with other replicas or fusion")
        if self.fused:
            with torch.no_grad():
                for name in self.params:
                    self.params[name].copy_(torch.stack([r[name] for r in state["replicas"]]))
                for name in self.buffers:
                    self.buffers[name].copy_(torch.stack([r[name] for r in state["replicas"]]))
        else:
            for model, replica in zip(self.models, state["replicas"]):
                model.load_state_dict(replica)
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        self.epoch = int(state["epoch"])
