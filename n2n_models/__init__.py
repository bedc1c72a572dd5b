"""n2n_models: the report's denoisers (TNet, UNet, BaseNet), losses, PSNR, data and training, in
pure PyTorch. `build_model(name, **hparams)` is the one way to make a network.

The registry (n2n_models.models) is imported on first use, so that the trial configuration
(n2n_models.config) reads without torch: a command-line check does not wait for it.
"""
__all__ = ["MODELS", "build_model", "count_parameters", "TNet", "UNet", "BaseNet"]


def __getattr__(name: str):
    if name in __all__:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
