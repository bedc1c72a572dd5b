"""Classical-denoiser yardsticks: the noisy input's PSNR and scikit-image's TV, wavelet and
non-local-means denoisers, each at the strength that scores best on the validation set, scored on
the test set in the networks' PSNR convention; cached as JSON once per data set."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

from .metrics import psnr_per_image, psnr_uint8

#: Validation images (the first ones) the strengths are chosen on and the val figures average over;
#: the test set is scored whole. More changes the chosen strengths little and costs time.
SELECTION_IMAGES = 100


def _strengths(weakest: float, strongest: float) -> tuple[float, ...]:
    """Strengths from `weakest` to `strongest` (a power of 2 apart) in steps of sqrt(2), to 2 digits."""
    steps = round(2 * np.log2(strongest / weakest))
    return tuple(float(f"{weakest * 2 ** (k / 2):.2g}") for k in range(steps + 1))


#: name -> (skimage denoiser, the keyword that sets its strength, the strengths it may get, fixed
#: keywords). Strengths are on the [0, 1] intensity scale, from about no change at the weakest noise
#: of interest (gaussian:5) to past the best at the strongest (bernoulli:0.5), so that the chosen one
#: is usually interior. Wavelet: BayesShrink in YCbCr, the best wavelet variant on most noises.
METHODS: dict[str, tuple[Callable, str, tuple[float, ...], dict]] = {
    "tv": (denoise_tv_chambolle, "weight", _strengths(0.005, 0.32), {"channel_axis": -1}),
    "wavelet": (denoise_wavelet, "sigma", _strengths(0.01, 0.64),
                {"mode": "soft", "method": "BayesShrink", "convert2ycbcr": True, "rescale_sigma": True,
                 "channel_axis": -1}),
    "nl_means": (denoise_nl_means, "h", _strengths(0.01, 0.64),
                 {"patch_size": 3, "patch_distance": 3, "fast_mode": True, "channel_axis": -1}),
}


def setup() -> dict:
    """How the yardsticks are made, as JSON: a cached result made otherwise is recomputed."""
    return {"selection_images": SELECTION_IMAGES,
            "methods": {name: {"function": fn.__name__, "param": param, "strengths": list(grid), "fixed": dict(fixed)}
                        for name, (fn, param, grid, fixed) in METHODS.items()}}


_KEYS = {"noisy_test_psnr", "noisy_val_psnr", "methods", "best", "setup"}
_METHOD_KEYS = {"strength", "param", "val_psnr", "test_psnr"}
_PAIR_KEYS = ("val_noisy", "val_clean", "test_noisy", "test_clean")


def _uint8(images) -> torch.Tensor:
    """uint8 (N, 3, H, W) images, from a tensor or a numpy array."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).cpu()
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3 or len(x) == 0:
        raise ValueError(f"yardsticks need uint8 images of shape (N, 3, H, W), N >= 1, got {x.dtype} "
                         f"{tuple(x.shape)}")
    return x


def _psnr(denoise: Callable, strength: float, noisy: torch.Tensor, clean: torch.Tensor) -> float:
    """Mean PSNR of `denoise` at `strength` over the images, scored as ReplicaTrainer.evaluate scores
    a network's prediction: float32 in [0, 1], clamped, against the clean images / 255."""
    images = noisy.permute(0, 2, 3, 1).numpy().astype(np.float32) / np.float32(255.0)  # NHWC for skimage
    out = np.stack([denoise(image, strength) for image in images])
    pred = torch.from_numpy(out).to(torch.float32).permute(0, 3, 1, 2).clamp_(0, 1)
    return psnr_per_image(pred, clean.float() / 255.0).mean().item()


def _choose(score: Callable[[float], float], grid: tuple[float, ...]) -> tuple[float, float]:
    """The strength of `grid` with the highest score, and its score, searched coarse to fine: every
    other strength, then the two beside the best (the validation PSNR rises to one peak and falls
    as the strength grows). Ties go to the weaker strength."""
    scores = {i: score(grid[i]) for i in range(0, len(grid), 2)}
    coarse = max(scores, key=scores.get)
    scores.update({i: score(grid[i]) for i in (coarse - 1, coarse + 1) if 0 <= i < len(grid)})
    best = max(sorted(scores), key=scores.get)
    return grid[best], scores[best]


def yardsticks(val_noisy, val_clean, test_noisy, test_clean,
               progress: Callable[[str], None] | None = None) -> dict:
    """PSNRs (dB) to set a trained denoiser's test PSNR against, from uint8 (N, 3, H, W) tensors or
    arrays: the noisy test images', and each method of METHODS at the strength with the best mean
    PSNR on the first SELECTION_IMAGES validation images, on all test images. A plain (JSON-able)
    dict: noisy_test_psnr, noisy_val_psnr, methods ({name: {strength, param, val_psnr, test_psnr}}),
    best (the method best on validation: the test set chooses nothing), val_images and test_images
    (how many images the val and test figures average over) and setup (`setup()`). `progress(line)`, when given, hears
    one line per method."""
    val_noisy, val_clean, test_noisy, test_clean = map(_uint8, (val_noisy, val_clean, test_noisy, test_clean))
    if val_noisy.shape != val_clean.shape or test_noisy.shape != test_clean.shape:
        raise ValueError(f"noisy and clean images must pair up: val {tuple(val_noisy.shape)} vs "
                         f"{tuple(val_clean.shape)}, test {tuple(test_noisy.shape)} vs {tuple(test_clean.shape)}")
    val_noisy, val_clean = val_noisy[:SELECTION_IMAGES], val_clean[:SELECTION_IMAGES]
    noisy_test = psnr_uint8(test_noisy, test_clean)
    methods = {}
    for name, (fn, param, grid, fixed) in METHODS.items():
        def denoise(image, strength, fn=fn, param=param, fixed=fixed):
            return fn(image, **{param: strength}, **fixed)
        strength, val_psnr = _choose(lambda s, denoise=denoise: _psnr(denoise, s, val_noisy, val_clean), grid)
        methods[name] = {"strength": strength, "param": param, "val_psnr": val_psnr,
                         "test_psnr": _psnr(denoise, strength, test_noisy, test_clean)}
        if progress is not None:
            progress(f"yardstick {name}: {param}={strength:g} (val {val_psnr:.2f} dB), test "
                     f"{methods[name]['test_psnr']:.2f} dB; noisy test {noisy_test:.2f} dB")
    return {"noisy_test_psnr": noisy_test, "noisy_val_psnr": psnr_uint8(val_noisy, val_clean),
            "methods": methods, "best": max(methods, key=lambda n: methods[n]["val_psnr"]),
            "val_images": len(val_noisy), "test_images": len(test_noisy), "setup": setup()}


def _valid(result) -> bool:
    return (isinstance(result, dict) and _KEYS <= result.keys() and result["setup"] == setup()
            and isinstance(result["methods"], dict) and isinstance(result["best"], str)
            and result["best"] in result["methods"]
            and all(isinstance(m, dict) and _METHOD_KEYS <= m.keys() for m in result["methods"].values()))


def cached_yardsticks(pairs_arrays: dict, cache_file: Path | None,
                      progress: Callable[[str], None] | None = None) -> dict:
    """`yardsticks` of `pairs_arrays` (keys val_noisy, val_clean, test_noisy, test_clean), read from
    the JSON `cache_file` when it holds a valid result made by the current `setup()`, else computed
    and written there atomically. `cache_file=None`: no cache. An unreadable, malformed or outdated
    cache file is recomputed and replaced."""
    missing = [k for k in _PAIR_KEYS if k not in pairs_arrays]
    if missing:
        raise KeyError(f"pairs_arrays lacks {', '.join(missing)}; pass all of {', '.join(_PAIR_KEYS)}")
    if cache_file is not None:
        cache_file = Path(cache_file)
        try:
            cached = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cached = None
        if _valid(cached):
            return cached
    result = yardsticks(*(pairs_arrays[k] for k in _PAIR_KEYS), progress=progress)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=cache_file.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(result, f, indent=1)
            os.replace(tmp, cache_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return result


def write_yardsticks(path: str, result: dict) -> None:
    """The yardsticks as JSON at `path`, a local path or a pyarrow URI (s3://...); its folder is
    made when missing."""
    import pyarrow.fs

    fs, where = pyarrow.fs.FileSystem.from_uri(path)
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(where) as f:
        f.write(json.dumps(result, indent=1).encode())


def read_yardsticks(path) -> dict | None:
    """The yardsticks in the local JSON file `path`, or None (missing, unreadable, or not ours)."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and _KEYS <= result.keys() else None


def yardstick_line(result: dict | None, model_psnr: float | None = None, what: str = "the model") -> str:
    """One line: on the test images, the noisy input, the best classical denoiser (its strength
    chosen on validation) and, when given, a model's test PSNR; "" without yardsticks."""
    if not result:
        return ""
    best = result["methods"][result["best"]]
    text = (f"Test images: noisy input {result['noisy_test_psnr']:.2f} dB; best classical denoiser "
            f"{best['test_psnr']:.2f} dB ({result['best']}, {best['param']} {best['strength']:g} chosen on "
            "validation)")
    if model_psnr is not None and model_psnr == model_psnr:
        text += f"; {what} {model_psnr:.2f} dB"
    return text
