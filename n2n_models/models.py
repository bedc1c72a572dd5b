"""The registry of the report's networks: `build_model(name, **hparams)` is the one way to make one."""
from torch import nn

from .basenet import BaseNet
from .tnet import TNet
from .unet import UNet

MODELS = {"tnet": TNet, "unet": UNet, "basenet": BaseNet}


def build_model(name: str, **hparams) -> nn.Module:
    """Make the network `name` ("tnet", "unet", "basenet") with keyword hyperparameters
    (TNet/UNet: width, batchnorm, dropout; BaseNet: latent)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return cls(**hparams)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

