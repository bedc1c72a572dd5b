"""BaseNet, the report's plain convolutional autoencoder baseline (166,923 parameters at latent 8)."""
import torch
from torch import nn


class BaseNet(nn.Module):
    """Six convolutions down to a `latent`-dimensional 1x1 code and their mirror as transposed
    convolutions, ReLU after each but the last; no skip connections."""

    def __init__(self, latent: int = 8, width: int = 32):
        super().__init__()
        w = width
        spec = [(3, w, 5, 1), (w, w, 5, 1), (w, w, 5, 1), (w, w, 4, 2), (w, w, 3, 2), (w, latent, 4, 1)]
        enc, dec = [], []
        for cin, cout, k, s in spec:
            enc += [nn.Conv2d(cin, cout, k, stride=s), nn.ReLU()]
        for cin, cout, k, s in reversed(spec):
            dec += [nn.ConvTranspose2d(cout, cin, k, stride=s), nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
