"""The exported best model: one self-describing file with a network's name, hyperparameters and
weights, and where they came from (data, noise, seed, epoch, validation PSNR, and the code, libraries
and machine: n2n_models.provenance).

Only tensors, dicts, lists, strings, numbers, booleans and None go in, so the file loads with
`torch.load(path, weights_only=True)` and no project code is needed to read it.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from . import MODELS, build_model

FORMAT = "n2n-search/best-model"
VERSION = 1


class ModelFileError(ValueError):
    """A file that is not a readable exported model; the message says which and why, on one line."""


def save_model(path: str | os.PathLike, model: str, hparams: dict, state_dict: dict, **meta) -> dict:
    """Write the model file and return what was written. `meta` holds the plain facts that
    describe the weights (data, noise, val_psnr, seed, epoch, ...)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "hparams": dict(hparams),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        **meta,
    }
    build_model(model, **hparams).load_state_dict(payload["state_dict"])  # never write a file that cannot load
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return payload


def read_model_file(path: str | os.PathLike) -> dict:
    """The file's content as written by `save_model`; ModelFileError for anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ModelFileError(f"{path} is not a model file written by analysis/report.py ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a model file written by analysis/report.py "
                             "(use the best_model.pt of a report, not a Tune checkpoint)")
    if payload.get("version") != VERSION:
        raise ModelFileError(f"{path} has model file version {payload.get('version')!r}; "
                             f"this code reads version {VERSION}")
    if payload.get("model") not in MODELS:
        raise ModelFileError(f"{path} names an unknown model {payload.get('model')!r}")
    return payload


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The network in eval mode and the file's description (everything but the weights)."""
    payload = read_model_file(path)
    try:
        model = build_model(payload["model"], **payload.get("hparams", {}))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ModelFileError(f"{os.fspath(path)}: weights do not fit {payload['model']} ({first})") from None
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.eval(), info
