"""CUDA-graph replay of a training step: the whole step (gather, forward, backward, Adam) captured
once and replayed, the same kernels on the same memory launched by one call instead of one by one.

On GPUs a small model's step waits on Python launching its kernels (docs/benchmarks.md, "GPU
figures"); replaying removes that wait. PyTorch's CUDA-graph notes set the rules followed here:
warm up on a side stream, capture with static inputs, copy each step's inputs into them.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

GRAPH_WARM_UP = 3  # eager steps before a training step is captured as a CUDA graph


@dataclasses.dataclass
class _Captured:
    """A captured step: replaying `graph` trains on the pairs `idx` picks and writes the replicas'
    losses into `losses`. `key`: the data tensors and batch shape it was captured for."""

    key: tuple
    graph: "torch.cuda.CUDAGraph"
    idx: torch.Tensor
    losses: torch.Tensor


class GraphedStep:
    """`step(train_a, train_b, idx, progress) -> losses`, replayed from a CUDA graph. The first
    GRAPH_WARM_UP calls run eagerly on a side stream (lazy initialisation must not be captured);
    then the step is captured once per data tensors and batch shape, and each later call copies
    its indices into the graph's input and replays it. A replayed step ignores `progress`: only
    losses that do not change as training goes on can be graphed. `drop_gradients` sets the
    gradients to None before a capture, so that the captured backward writes them into the
    graph's own memory."""

    def __init__(self, step: Callable, drop_gradients: Callable[[], None], device):
        self.step, self.drop_gradients, self.device = step, drop_gradients, torch.device(device)
        self.captured: _Captured | None = None
        self.eager_steps = 0

    def __call__(self, train_a: torch.Tensor, train_b: torch.Tensor, idx: torch.Tensor,
                 progress: float) -> torch.Tensor:
        key = (train_a.data_ptr(), train_b.data_ptr(), train_a.shape, train_b.shape, idx.shape)
        if self.captured is None or self.captured.key != key:
            if self.eager_steps < GRAPH_WARM_UP:
                self.eager_steps += 1
                side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    losses = self.step(train_a, train_b, idx, progress)
                main.wait_stream(side)
                return losses
            self.captured = None  # let the previous graph's memory go first
            self.captured = self._capture(key, train_a, train_b, idx.shape)
        self.captured.idx.copy_(idx)
        self.captured.graph.replay()
        return self.captured.losses.clone()

    def forget(self):
        """Capture again at the next call: the state the graph reads was replaced (a checkpoint loaded)."""
        self.captured = None

    def _capture(self, key: tuple, train_a: torch.Tensor, train_b: torch.Tensor, idx_shape) -> _Captured:
        idx = torch.zeros(idx_shape, dtype=torch.long, device=self.device)
        self.drop_gradients()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records the kernels; nothing runs until replay
            losses = self.step(train_a, train_b, idx, 0.0)
        return _Captured(key, graph, idx, losses)
