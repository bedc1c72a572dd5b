"""The plainest training loop, as the report's own code trains (the yardstick the fast loop of
n2n_models.train must match), and the data order both loops draw their batches in.

The data is one float tensor (0-255) in host memory, shuffled once per epoch, sliced per batch,
moved to the device and divided by 255 per batch; a standard module forward in the default memory
layout; the L2 loss; Adam (PyTorch's defaults but for its lr and beta2) and `optimizer.step()`.
"""
from __future__ import annotations

import torch

from . import build_model
from .config import ADAM_BETAS


def data_order(seed: int, epoch: int, n: int, device) -> torch.Tensor:
    """The order in which a replica of seed `seed` visits the n training pairs in epoch `epoch`."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


class ReferenceLoop:
    """Trains one model the plain way (see the module docstring), in the project's data order, so
    that it sees the same batches as `ReplicaTrainer` with the same seed."""

    def __init__(self, model: str, hparams: dict, seed: int, train_a: torch.Tensor, train_b: torch.Tensor,
                 batch_size: int, lr: float = 5e-4, device="cpu", beta2: float = ADAM_BETAS[1]):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = build_model(model, **hparams).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(ADAM_BETAS[0], beta2))
        dtype = torch.get_default_dtype()  # float32 unless a test trains in float64
        self.a, self.b = train_a.cpu().to(dtype), train_b.cpu().to(dtype)
        self.seed, self.batch_size, self.epoch = seed, batch_size, 0

    def train_epoch(self) -> list[torch.Tensor]:
        """One epoch; returns every step's loss (L2, mean over the batch)."""
        order = data_order(self.seed, self.epoch, len(self.a), "cpu")
        a, b = self.a[order], self.b[order]  # shuffle, then slice
        self.model.train()
        losses = []
        for start in range(0, len(a), self.batch_size):
            x = a[start:start + self.batch_size].to(self.device) / 255
            y = b[start:start + self.batch_size].to(self.device) / 255
            loss = torch.nn.functional.mse_loss(self.model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        self.epoch += 1
        return losses
