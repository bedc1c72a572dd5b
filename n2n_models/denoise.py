"""`python -m n2n_models.denoise --model best_model.pt IMAGE... --out DIR`: apply an exported
denoiser to PNG/JPEG images of any size and write PNGs; `--model FILE --info` prints what the file
says of itself (model, hyperparameters, data, validation PSNR, provenance) as JSON instead.

TNet and UNet are fully convolutional but pool down by 32: an image is reflect-padded to a
multiple of 32 and run whole (large images in overlapping tiles, so memory stays bounded).
BaseNet only takes 32x32 inputs: it runs on the 32x32 patches of the padded image.
Pure torch + PIL. Exit status: 0 done, 2 bad usage or bad input (one line on stderr), 1 other.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .export import ModelFileError, load_model, read_model_file
from .provenance import version_line

MULTIPLE = 32  # the networks pool down by 32; BaseNet takes exactly 32x32
FIXED_SIZE = {"basenet"}  # models that only take 32x32 inputs


class InputError(Exception):
    """Bad usage or input: one line on stderr, exit 2."""


def _pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect padding where the image is large enough for it, edge replication otherwise."""
    if not (left or right or top or bottom):
        return x
    h, w = x.shape[-2:]
    mode = "reflect" if max(left, right) < w and max(top, bottom) < h else "replicate"
    return F.pad(x, (left, right, top, bottom), mode=mode)


@torch.no_grad()
def _run_patches(model, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """`x` (1, 3, H, W) with H, W multiples of 32, through the model in independent 32x32 patches."""
    _, c, h, w = x.shape
    patches = x.unfold(2, MULTIPLE, MULTIPLE).unfold(3, MULTIPLE, MULTIPLE)  # 1, c, nh, nw, 32, 32
    nh, nw = patches.shape[2:4]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, MULTIPLE, MULTIPLE)
    out = torch.cat([model(patches[i:i + batch]) for i in range(0, len(patches), batch)])
    out = out.reshape(1, nh, nw, c, MULTIPLE, MULTIPLE).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(1, c, h, w)


@torch.no_grad()
def denoise_tensor(model, image: torch.Tensor, fixed_size: bool = False, tile: int = 512) -> torch.Tensor:
    """Denoise one float image (3, H, W) in [0, 1]; returns (3, H, W) clamped to [0, 1].

    Fully convolutional models see the reflect-padded image in tiles of `tile` pixels (a multiple
    of 32) with 32 pixels of context on each side; `fixed_size` models see 32x32 patches."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    model.eval()
    device = next(model.parameters()).device
    h, w = image.shape[-2:]
    hc, wc = math.ceil(h / MULTIPLE) * MULTIPLE, math.ceil(w / MULTIPLE) * MULTIPLE
    x = image.unsqueeze(0).to(device)
    if fixed_size:
        out = _run_patches(model, _pad(x, 0, wc - w, 0, hc - h))
        return out[0, :, :h, :w].clamp(0, 1).cpu()
    tile = max(MULTIPLE, tile // MULTIPLE * MULTIPLE)
    if hc <= tile and wc <= tile:  # one pass over the whole padded image
        out = model(_pad(x, 0, wc - w, 0, hc - h))
        return out[0, :, :h, :w].clamp(0, 1).cpu()
    m = MULTIPLE  # context around each tile, a multiple of 32 so pooling stays aligned
    padded = _pad(x, m, m + wc - w, m, m + hc - h)
    out = torch.empty(1, 3, hc, wc, device=device)
    for ty in range(0, hc, tile):
        th = min(tile, hc - ty)
        for tx in range(0, wc, tile):
            tw = min(tile, wc - tx)
            y = model(padded[:, :, ty:ty + th + 2 * m, tx:tx + tw + 2 * m])
            out[:, :, ty:ty + th, tx:tx + tw] = y[:, :, m:m + th, m:m + tw]
    return out[0, :, :h, :w].clamp(0, 1).cpu()


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as a float tensor (3, H, W) in [0, 1]; InputError if it cannot be read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float grayscale
                a = np.asarray(im, dtype=np.float32)
                a = a / max(float(a.max()), 1.0) if im.mode == "F" else a / (65535.0 if a.max() > 255 else 255.0)
                rgb = np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=2)
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise InputError(f"cannot read image {path}: {first}") from None
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def write_image(image: torch.Tensor, path: str | os.PathLike) -> None:
    """A float tensor (3, H, W) in [0, 1] as an 8-bit RGB PNG."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    tmp = f"{os.fspath(path)}.tmp"  # a file of an earlier run stays whole until the new one is
    try:
        Image.fromarray(array, "RGB").save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def output_paths(inputs: list[str], out_dir: str) -> list[Path]:
    """`<out>/<stem>.png` per input; `-2`, `-3`... on repeated stems; `_denoised` where it would
    overwrite an input."""
    taken, inputs_resolved, paths = set(), {Path(p).resolve() for p in inputs}, []
    for p in inputs:
        stem, n = Path(p).stem, 1
        while True:
            candidate = Path(out_dir) / f"{stem}{'' if n == 1 else f'-{n}'}.png"
            if candidate.resolve() in inputs_resolved:
                candidate = candidate.with_name(candidate.stem + "_denoised.png")
            if candidate.resolve() not in taken:
                break
            n += 1
        taken.add(candidate.resolve())
        paths.append(candidate)
    return paths


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise InputError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m n2n_models.denoise",
                description="Denoise PNG/JPEG images with a model exported by analysis/report.py.")
    p.add_argument("--version", action="version", version=version_line())
    p.add_argument("--model", required=True, help="best_model.pt written by analysis/report.py")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="PNG or JPEG files, any size")
    p.add_argument("--out", help="folder for the denoised PNGs (created if missing)")
    p.add_argument("--info", action="store_true", help="print the model file's description and provenance "
                   "(JSON) and exit; takes no IMAGE or --out")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--tile", type=int, default=512,
                   help="largest square (pixels, multiple of 32) run at once by TNet/UNet (default 512)")
    return p


def check_usage(args: argparse.Namespace) -> None:
    """IMAGE and --out go together, without --info; InputError otherwise."""
    if args.info:
        if args.images or args.out:
            raise InputError("--info prints the model file's description only; drop IMAGE and --out")
        return
    missing = [name for name, given in (("IMAGE", args.images), ("--out", args.out)) if not given]
    if missing:
        raise InputError(f"the following arguments are required: {', '.join(missing)} (see --help)")


def print_info(path: str) -> None:
    """The model file's description, everything but the weights, as JSON on stdout."""
    try:
        info = {k: v for k, v in read_model_file(path).items() if k != "state_dict"}
    except ModelFileError as e:
        raise InputError(str(e)) from None
    print(json.dumps(info, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        check_usage(args)
        if args.info:
            print_info(args.model)
            return 0
        if args.tile < MULTIPLE:
            raise InputError(f"--tile {args.tile}: must be at least {MULTIPLE}")
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise InputError(f"--device {args.device!r} is not a torch device (use cpu or cuda)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
        try:
            model, info = load_model(args.model)
        except ModelFileError as e:
            raise InputError(str(e)) from None
        images = [read_image(p) for p in args.images]  # check every input before writing anything
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise InputError(f"--out {args.out} exists and is not a folder")
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create --out {args.out}: {e.strerror or e}") from None
        model.to(device)
        fixed = info["model"] in FIXED_SIZE
        for src, image, dst in zip(args.images, images, output_paths(args.images, args.out)):
            write_image(denoise_tensor(model, image, fixed_size=fixed, tile=args.tile), dst)
            print(f"{src} -> {dst} ({image.shape[2]}x{image.shape[1]})")
        return 0
    except InputError as e:
        print(f"n2n_models.denoise: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the images printed above are written whole; no other was touched
        print("n2n_models.denoise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
