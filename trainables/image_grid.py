"""The image grid a trial shows in TensorBoard: noisy / denoised / clean rows of a few validation
images, labelled with the epoch and the PSNR, under the tag IMAGE_TAG (search/board.py writes the
rest of what TensorBoard shows)."""
from __future__ import annotations

import io
import itertools
import os
import time

import numpy as np
from ray import tune
from PIL import Image
from tensorboardX.event_file_writer import EventsWriter  # synchronous: the async writer's flush() does not wait
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary

#: The image grid's tag: its group (`samples`) comes after the PSNR curves' in TensorBoard.
IMAGE_TAG = "samples/noisy-denoised-clean"
_WRITERS = itertools.count()  # with the process id in each file's name: a retry in the same second never overwrites


class ImageGrid:
    """Noisy / denoised (first replica) / clean rows of a few validation images, labelled with the
    epoch and the replica's validation PSNR, written to TensorBoard in the trial's folder (tag
    IMAGE_TAG) each time the trial improves, so its last step is the trial's best epoch."""

    def __init__(self, count: int):
        self.count, self.writer = count, None

    def write(self, trainer, val_noisy, val_clean, epoch: int, psnr: float, seed: int):
        if self.count <= 0:
            return
        if self.writer is None:
            self.writer = EventsWriter(os.path.join(tune.get_context().get_trial_dir(), "events"),
                                       f".{os.getpid()}.{next(_WRITERS)}.images")
        noisy, clean = val_noisy[: self.count], val_clean[: self.count]
        rows = [("noisy", noisy.cpu().float() / 255), ("denoised", trainer.predict(noisy)[0].cpu()),
                ("clean", clean.cpu().float() / 255)]
        picture = labelled_grid([(name, images.numpy()) for name, images in rows],
                                f"epoch {epoch} - validation PSNR {psnr:.2f} dB (replica of seed {seed})")
        self.writer.write_event(Event(wall_time=time.time(), step=epoch, summary=image_summary(IMAGE_TAG, picture)))
        self.writer.flush()


def image_summary(tag: str, picture: np.ndarray):
    """A TensorBoard image summary of an H x W x 3 uint8 picture. PNG at zlib level 1: a third of
    the default's time for these grids, at about their size (a trial writes one on every best epoch;
    tensorboardX checksums it in C with the crc32c package, where TensorBoard's own writer does it
    in Python)."""
    png = io.BytesIO()
    Image.fromarray(picture).save(png, format="PNG", compress_level=1)
    h, w, c = picture.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=png.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def labelled_grid(rows: list[tuple[str, np.ndarray]], title: str, scale: int = 2) -> np.ndarray:
    """Rows of images (name, float array N x 3 x H x W in [0, 1]) as one labelled picture
    (H x W x 3 uint8): the row's name on its left, `title` (epoch, PSNR) above, tiles `scale` times
    their size so that 32-pixel crops can be seen."""
    from PIL import ImageDraw, ImageFont

    n, _, h, w = rows[0][1].shape
    tile_h, tile_w = h * scale, w * scale
    label_w, title_h, gap = 80, 20, 2
    width = label_w + n * (tile_w + gap)
    height = title_h + len(rows) * (tile_h + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType
        font = ImageFont.load_default()
    draw.text((4, 3), title, fill=(0, 0, 0), font=font)
    for r, (name, images) in enumerate(rows):
        top = title_h + r * (tile_h + gap)
        draw.text((4, top + tile_h // 2 - 7), name, fill=(0, 0, 0), font=font)
        pixels = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
        for i, tile in enumerate(pixels):
            image = Image.fromarray(tile).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(image, (label_w + i * (tile_w + gap), top))
    return np.asarray(canvas)
