"""TNet, the report's thin residual denoiser (43,064 parameters at width 32), and optionally a
residual output (the input plus what the network computes)."""
import torch
from torch import nn


class _Stage(nn.Sequential):
    """3x3 convolution, leaky ReLU (0.1), then optional batch norm and dropout."""

    def __init__(self, cin: int, cout: int, batchnorm: bool = False, dropout: float = 0.0):
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(cout))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class TNet(nn.Module):
    """Encoder 32 -> 16 -> 4 -> 1 with max pools, decoder with skip concatenations and a long
    residual path from the input. `batchnorm` adds BN after the encoder stages and on every
    concatenation (43,556 parameters at width 32); `dropout` acts after hidden stages in training.
    `residual_output` adds the input to the output convolution's result, in place of the output
    stage's leaky ReLU (no parameters, the same weight names): the network then learns the
    correction, negative as freely as positive."""

    def __init__(self, width: int = 32, batchnorm: bool = False, dropout: float = 0.0, residual_output: bool = False):
        super().__init__()
        if width < 1:
            raise ValueError(f"TNet width must be a positive integer, got {width}")
        self.residual_output = residual_output
        w = width
        self.enc1 = _Stage(3, 16, batchnorm, dropout)
        self.enc2 = _Stage(16, w, batchnorm, dropout)
        self.enc3 = _Stage(w, w, batchnorm, dropout)
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.cat3, self.cat2, self.cat1, self.cat0 = norm(2 * w), norm(32 + w), norm(32), norm(6)
        self.dec3 = _Stage(2 * w, 32, dropout=dropout)
        self.dec2 = _Stage(32 + w, 16, dropout=dropout)
        self.dec1 = _Stage(32, 3)
        self.out = nn.Sequential(nn.Conv2d(6, 3, 3, padding=1)) if residual_output else _Stage(6, 3)
        self.pool2, self.pool4 = nn.MaxPool2d(2), nn.MaxPool2d(4)
        self.up2, self.up4 = nn.Upsample(scale_factor=2), nn.Upsample(scale_factor=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.enc1(x)
        x2 = self.enc2(self.pool2(x1))
        x3 = self.enc3(self.pool4(x2))
        z = self.pool4(x3)
        y = self.dec3(self.cat3(torch.cat([self.up4(z), x3], 1)))
        y = self.dec2(self.cat2(torch.cat([self.up4(y), x2], 1)))
        y = self.dec1(self.cat1(torch.cat([self.up2(y), x1], 1)))
        out = self.out(self.cat0(torch.cat([y, x], 1)))
        return x + out if self.residual_output else out
