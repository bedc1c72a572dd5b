"""The Noise2Noise paper's UNet (Lehtinen et al. 2018, appendix A.1): 991,203 parameters at width 48,
and optionally a residual output (the input plus what the network computes)."""
import torch
from torch import nn


def _conv(cin: int, cout: int, batchnorm: bool, dropout: float) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Five 2x2 max-pools (1x1 bottleneck on 32x32 input); each decoder stage has its own two
    convolutions of 2*width channels after a nearest upsample and skip concatenation; a
    64 -> 32 -> 3 head on the concatenation with the input, linear output. `residual_output` adds the
    input to that output (no parameters): the network then learns the correction, and starts from
    the noisy image rather than from noise."""

    def __init__(self, width: int = 48, batchnorm: bool = False, dropout: float = 0.0, residual_output: bool = False):
        super().__init__()
        self.residual_output = residual_output
        w, d = width, 2 * width
        c = lambda i, o: _conv(i, o, batchnorm, dropout)  # noqa: E731
        self.enc0 = nn.Sequential(c(3, w), c(w, w))
        self.enc = nn.ModuleList([c(w, w) for _ in range(4)])  # enc_conv2..5, each after a pool
        self.bottleneck = c(w, w)  # enc_conv6
        self.dec = nn.ModuleList(
            [nn.Sequential(c(w + w, d), c(d, d))]
            + [nn.Sequential(c(d + w, d), c(d, d)) for _ in range(3)]
        )
        self.head = nn.Sequential(c(d + 3, 64), c(64, 32), nn.Conv2d(32, 3, 3, padding=1))
        self.pool, self.up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        h = self.pool(self.enc0(x))
        for conv in self.enc:
            skips.append(h)
            h = self.pool(conv(h))
        h = self.bottleneck(h)
        for conv in self.dec:
            h = conv(torch.cat([self.up(h), skips.pop()], 1))
        out = self.head(torch.cat([self.up(h), skips.pop()], 1))
        return x + out if self.residual_output else out
