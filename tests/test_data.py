"""Tests for n2n_models.data: real files, real generation, no mocks. Every test caches under
tmp_path so the user's cache is never touched."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from n2n_models.data import (
    DataError,
    DataSpec,
    NoiseSpec,
    Pairs,
    area_downsample,
    cache_path,
    default_cache_dir,
    folder_split,
    load_pairs,
    parse_data_spec,
    parse_noise_spec,
    photo_files,
    photo_regions,
    point_sample,
    read_image,
)

NOISES = ["pixelate", "gaussian:25", "poisson:30", "impulse:0.3", "bernoulli:0.5", "text"]


def psnr(noisy: torch.Tensor, clean: torch.Tensor) -> float:
    """Course convention: [0, 1] images, per-image PSNR, mean over images."""
    x = noisy.double() / 255
    y = clean.double() / 255
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


def check_pairs(p: Pairs, n_train: int, n_val: int, n_test: int | None = None) -> None:
    n_test = n_val if n_test is None else n_test
    train_a, train_b, val_noisy, val_clean, test_noisy, test_clean = p  # unpacks like a 6-tuple
    for t, n in ((train_a, n_train), (train_b, n_train), (val_noisy, n_val), (val_clean, n_val),
                 (test_noisy, n_test), (test_clean, n_test)):
        assert isinstance(t, torch.Tensor)
        assert t.dtype == torch.uint8
        assert tuple(t.shape) == (n, 3, 32, 32)
        assert t.is_contiguous()
        assert t.device.type == "cpu"


def same(p: Pairs, q: Pairs) -> bool:
    return all(torch.equal(a, b) for a, b in zip(p, q))


@pytest.fixture(autouse=True)
def _isolated_default_cache(monkeypatch, tmp_path):
    """Belt and braces: even a call without cache_dir stays inside tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# ------------------------------------------------------------------------------------------
# fixtures: a folder of assorted images, course-format files
# ------------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour image with some edges (so pixelate noise is non-zero)."""
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)).copy()
    img[h // 3: h // 2, :, 0] = 255 - img[h // 3: h // 2, :, 0]
    return img


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("imgs")
    sub = root / "sub"
    sub.mkdir()
    rng = np.random.default_rng(123)
    Image.fromarray(_texture(rng, 200, 260)).save(root / "a00_rgb.png")
    Image.fromarray(_texture(rng, 180, 240)).save(root / "a01_photo.jpg", quality=90)
    Image.fromarray(_texture(rng, 170, 170)[:, :, 0]).save(root / "a02_gray.png")  # mode L
    rgba = np.dstack([_texture(rng, 190, 210), rng.integers(0, 256, (190, 210), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "a03_rgba.png")
    g16 = (_texture(rng, 200, 200)[:, :, 1].astype(np.uint16) * 257)
    Image.fromarray(g16).save(root / "a04_gray16.png")  # mode I;16
    Image.fromarray(_texture(rng, 20, 20)).save(root / "a05_tiny.png")  # smaller than any crop
    Image.fromarray(_texture(rng, 200, 220)).convert("P").save(root / "a06_palette.png")
    Image.fromarray(_texture(rng, 210, 200)).save(root / "a07.bmp")
    Image.fromarray(_texture(rng, 200, 200)).save(root / "a08.tiff")
    Image.fromarray(_texture(rng, 240, 200)).save(root / "a09.JPEG")
    Image.fromarray(_texture(rng, 200, 200)).save(sub / "b10_nested.png")
    Image.fromarray(_texture(rng, 220, 230)).save(sub / "b11_nested.jpg")
    (root / "notes.txt").write_text("not an image\n")
    (root / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    return root, g16


def _save_course(dirpath, train, val) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    torch.save(train, dirpath / "train_data.pkl")
    torch.save(val, dirpath / "val_data.pkl")


def _course_tensors(n_train: int = 20, n_val: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
    return (t(n_train), t(n_train)), (t(n_val), t(n_val))


# ------------------------------------------------------------------------------------------
# every source x every noise: shapes and dtypes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", NOISES)
def test_photos_every_noise(tmp_path, noise):
    p = load_pairs("photos", noise, train_size=48, val_size=24, seed=3, cache_dir=tmp_path)
    check_pairs(p, 48, 24)
    assert not torch.equal(p.train_a, p.train_b)  # independent noisy copies
    assert not torch.equal(p.val_noisy, p.val_clean)
    assert noise in p.description


@pytest.mark.parametrize("noise", NOISES)
def test_synthetic_every_noise(tmp_path, noise):
    p = load_pairs("synthetic", noise, train_size=40, val_size=20, seed=1, cache_dir=tmp_path)
    check_pairs(p, 40, 20)
    assert not torch.equal(p.train_a, p.train_b)
    assert not torch.equal(p.val_noisy, p.val_clean)
    assert p.val_clean.float().std() > 20  # real structure, not flat images


@pytest.mark.parametrize("noise", NOISES)
def test_folder_every_noise(tmp_path, image_folder, noise):
    root, _ = image_folder
    with pytest.warns(UserWarning, match=r"skipped 1 non-image file\(s\) and 1 unreadable"):
        p = load_pairs(f"folder:{root}", noise, train_size=40, val_size=12, cache_dir=tmp_path)
    check_pairs(p, 40, 12)
    assert not torch.equal(p.train_a, p.train_b)


def test_folder_reports_skips_through_progress(tmp_path, image_folder):
    root, _ = image_folder
    messages = []
    with pytest.warns(UserWarning):
        load_pairs(f"folder:{root}", "gaussian:10", 8, 4, cache_dir=tmp_path, progress=messages.append)
    assert any("non-image" in m for m in messages)
    assert any("unreadable" in m for m in messages)


def test_read_image_conversions(image_folder):
    root, g16 = image_folder
    for name in ["a00_rgb.png", "a02_gray.png", "a03_rgba.png", "a04_gray16.png",
                 "a05_tiny.png", "a06_palette.png", "a07.bmp", "a08.tiff", "a09.JPEG"]:
        img = read_image(root / name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
    gray16 = read_image(root / "a04_gray16.png")
    assert np.array_equal(gray16[:, :, 0], (g16 // 257).astype(np.uint8))  # 16 -> 8 bit, not clipped
    assert np.array_equal(gray16[:, :, 0], gray16[:, :, 2])
    gray = read_image(root / "a02_gray.png")
    assert np.array_equal(gray[:, :, 0], gray[:, :, 1])


def test_epfl_loads_course_files(tmp_path):
    train, val = _course_tensors(20, 20)
    _save_course(tmp_path / "course", train, val)
    p = load_pairs(f"epfl:{tmp_path / 'course'}", "pixelate", train_size=20, val_size=10,
                   cache_dir=tmp_path / "cache")
    check_pairs(p, 20, 10)
    assert torch.equal(p.train_a, train[0]) and torch.equal(p.train_b, train[1])
    # the validation file's first half validates, its second half tests
    assert torch.equal(p.val_noisy, val[0][:10]) and torch.equal(p.val_clean, val[1][:10])
    assert torch.equal(p.test_noisy, val[0][10:]) and torch.equal(p.test_clean, val[1][10:])
    # first N are taken; the noise spec is ignored for epfl (the noise is in the files)
    q = load_pairs(f"epfl:{tmp_path / 'course'}", "gaussian:25", train_size=7, val_size=3,
                   cache_dir=tmp_path / "cache", test_size=4)
    check_pairs(q, 7, 3, 4)
    assert torch.equal(q.train_a, train[0][:7]) and torch.equal(q.val_clean, val[1][:3])
    assert torch.equal(q.test_clean, val[1][10:14])
    assert not (tmp_path / "cache").exists()  # nothing cached for epfl
    with pytest.raises(DataError, match="larger than half of the 20 images"):
        load_pairs(f"epfl:{tmp_path / 'course'}", train_size=5, val_size=11)


@pytest.mark.parametrize("source", ["photos", "synthetic", "folder"])
def test_the_clean_image_of_every_training_pair_is_kept(tmp_path, image_folder, source):
    """train_clean is the clean crop both noisy copies were made from: without noise the copies are
    it, and with pixelate noise (whose expectation is the clean image) the mean of the two copies
    is nearer to it than either copy alone."""
    import warnings

    data = f"folder:{image_folder[0]}" if source == "folder" else source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folder's deliberately unreadable files
        plain = load_pairs(data, "gaussian:0", train_size=200, val_size=8, cache_dir=tmp_path)
        pix = load_pairs(data, "pixelate", train_size=200, val_size=8, cache_dir=tmp_path)
    assert torch.equal(plain.train_a, plain.train_clean) and torch.equal(plain.train_b, plain.train_clean)
    assert pix.train_clean.dtype == torch.uint8 and tuple(pix.train_clean.shape) == (200, 3, 32, 32)
    a, b, clean = (t.double() for t in (pix.train_a, pix.train_b, pix.train_clean))
    single, mean_of_two = ((a - clean) ** 2).mean(), (((a + b) / 2 - clean) ** 2).mean()
    assert mean_of_two < 0.75 * single, (float(mean_of_two), float(single))  # 0.5 for independent copies
    # the same crops: the clean images of two noises agree where the noise has none to add
    assert torch.equal(pix.train_clean, plain.train_clean)


def test_course_data_has_no_clean_training_images(tmp_path):
    train, val = _course_tensors(8, 8)
    _save_course(tmp_path / "course", train, val)
    assert load_pairs(f"epfl:{tmp_path / 'course'}", train_size=8, val_size=4).train_clean is None


def test_a_cache_without_the_clean_training_images_is_regenerated(tmp_path):
    args = dict(data="synthetic", noise="gaussian:25", train_size=16, val_size=8, seed=1, cache_dir=tmp_path)
    fresh = load_pairs(**args)
    path = cache_path(**args)
    old = torch.load(path, weights_only=True)
    del old["train_clean"]  # as files written before the clean images were kept
    torch.save(old, path)
    messages = []
    again = load_pairs(**args, progress=messages.append)
    assert any("regenerating" in m for m in messages), messages
    assert same(fresh, again) and torch.equal(fresh.train_clean, again.train_clean)
    assert "train_clean" in torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------------------
# train / validation separation
# ------------------------------------------------------------------------------------------


def test_photo_regions_are_disjoint_and_cover_the_photo():
    """Training half, validation quarter, test quarter: marked pixels land in exactly one."""
    for h, w in ((400, 600), (600, 400), (512, 512)):
        img = np.arange(h * w, dtype=np.int64).reshape(h, w, 1)
        code = np.concatenate([img % 256, img // 256 % 256, img // 65536], axis=2).astype(np.uint8)
        regions = photo_regions(code)
        keys = [set((r.astype(np.int64) @ [1, 256, 65536]).ravel().tolist()) for r in regions]
        assert all(min(r.shape[:2]) >= 160 for r in regions)  # no upscaling needed at these sizes
        assert sum(len(k) for k in keys) == h * w, "together they are the whole photo"
        assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
        assert len(keys[0]) == 2 * len(keys[1]) == 2 * len(keys[2])


def test_every_photo_gives_validation_and_test_crops(tmp_path):
    """Each photo's validation and test quarters, cut from it directly, hold the crops the
    source produces: every photo (scene) is in both held-out splits."""
    files = photo_files()
    assert len(files) >= 5 and all(read_image(p).shape[2] == 3 for p in files)
    p = load_pairs("photos", "gaussian:0", train_size=16, val_size=400, cache_dir=tmp_path)
    for split in ("val", "test"):
        clean = getattr(p, f"{split}_clean")
        assert torch.equal(getattr(p, f"{split}_noisy"), clean)  # sigma 0: noisy == clean
        means = clean.float().mean(dim=(1, 2, 3))
        assert means.std() > 10, "crops from several photos, not one"
    assert not torch.equal(p.val_clean, p.test_clean)


def test_folder_split_by_file():
    train, val, test = folder_split(range(25))
    assert val == [0, 10, 20] and test == [5, 15]
    assert set(train) | set(val) | set(test) == set(range(25))
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)


def test_folder_validation_and_test_crops_come_only_from_their_files(tmp_path):
    # 16 files sorted by name; index 0 and 10 validate, 5 and 15 test: red, green, the rest blue
    root = tmp_path / "colours"
    root.mkdir()
    for i in range(16):
        colour = (255, 0, 0) if i % 10 == 0 else (0, 255, 0) if i % 10 == 5 else (0, 0, 255)
        Image.new("RGB", (200, 200), colour).save(root / f"img{i:02d}.png")
    p = load_pairs(f"folder:{root}", "pixelate", train_size=200, val_size=50, cache_dir=tmp_path / "c")
    assert (p.val_clean[:, 0] == 255).all() and (p.val_clean[:, 1:] == 0).all()
    assert (p.test_clean[:, 1] == 255).all() and (p.test_clean[:, [0, 2]] == 0).all()
    assert (p.train_a[:, :2] == 0).all() and (p.train_b[:, 2] == 255).all()


# ------------------------------------------------------------------------------------------
# noise levels and pixelate statistics
# ------------------------------------------------------------------------------------------


def test_pixelate_photos_noisy_psnr_is_in_the_courses_range(tmp_path):
    """The course's pixelate pairs score about 20.7 dB; the photos' held-out quarters allow
    smaller downsampling factors than whole photos, so less noise (docs/search-quality.md)."""
    p = load_pairs("photos", "pixelate", train_size=16, val_size=1000, cache_dir=tmp_path)
    for noisy, clean in ((p.val_noisy, p.val_clean), (p.test_noisy, p.test_clean)):
        value = psnr(noisy, clean)
        assert 19.0 < value < 25.0, value


def test_gaussian25_noisy_psnr(tmp_path):
    p = load_pairs("photos", "gaussian:25", train_size=16, val_size=1000, cache_dir=tmp_path)
    for noisy, clean in ((p.val_noisy, p.val_clean), (p.test_noisy, p.test_clean)):
        value = psnr(noisy, clean)
        # 20.17 dB = sigma 25/255 unclipped; clipping at 0 and 255 only lowers the error
        assert 20.17 - 0.05 < value < 20.17 + 1.0, value


def test_point_samples_average_to_area_mean():
    photo = read_image(photo_files()[0])
    f = 8
    region = photo[100:100 + 32 * f, 120:120 + 32 * f]
    clean = area_downsample(region, f)
    assert clean.shape == (32, 32, 3)
    rng = np.random.default_rng(0)
    total = np.zeros((32, 32, 3))
    count = 0
    errors = {}
    for target in (4, 64, 1024, 4096):
        while count < target:
            k = min(512, target - count)
            total += point_sample(region, f, rng, copies=k).sum(axis=0, dtype=np.float64)
            count += k
        errors[target] = np.sqrt(np.mean((total / count - clean) ** 2))
    assert errors[4] > errors[64] > errors[1024] > errors[4096]
    assert errors[4096] < errors[64] / 4  # ~1/sqrt(n) convergence
    assert errors[4096] < 1.0  # on the 0-255 scale
    assert errors[4] > 5  # a single point sample really is noisy here


def test_point_sample_picks_one_subpixel_per_block_for_all_channels():
    f = 4
    ys, xs = np.mgrid[0:8 * f, 0:8 * f]
    code = ys * 1000 + xs  # unique per position
    region = np.stack([code, code + 10**7, code + 2 * 10**7], axis=-1)
    s = point_sample(region, f, np.random.default_rng(1), copies=3)
    assert s.shape == (3, 8, 8, 3)
    y, x = s[..., 0] // 1000, s[..., 0] % 1000
    assert (s[..., 1] == s[..., 0] + 10**7).all() and (s[..., 2] == s[..., 0] + 2 * 10**7).all()
    assert (y // f == np.arange(8)[:, None]).all() and (x // f == np.arange(8)[None, :]).all()
    assert not np.array_equal(s[0], s[1])  # copies are independent draws


# ------------------------------------------------------------------------------------------
# determinism and caching
# ------------------------------------------------------------------------------------------


def test_deterministic_generation_and_seed_dependence(tmp_path):
    args = dict(data="photos", noise="pixelate", train_size=64, val_size=32)
    p1 = load_pairs(**args, seed=5, cache_dir=tmp_path / "one")
    p2 = load_pairs(**args, seed=5, cache_dir=tmp_path / "two")  # regenerated, not cached
    assert same(p1, p2)
    p3 = load_pairs(**args, seed=6, cache_dir=tmp_path / "one")
    assert not torch.equal(p1.train_a, p3.train_a)
    assert not torch.equal(p1.val_clean, p3.val_clean)


def test_synthetic_deterministic_and_val_from_other_stream(tmp_path):
    p1 = load_pairs("synthetic", "gaussian:25", 30, 30, seed=2, cache_dir=tmp_path / "one")
    p2 = load_pairs("synthetic", "gaussian:25", 30, 30, seed=2, cache_dir=tmp_path / "two")
    assert same(p1, p2)
    clean_train = load_pairs("synthetic", "gaussian:0", 30, 30, seed=2, cache_dir=tmp_path).train_a
    assert not torch.equal(clean_train, p1.val_clean)


def test_validation_set_does_not_depend_on_train_size(tmp_path):
    a = load_pairs("photos", "gaussian:25", train_size=10, val_size=40, cache_dir=tmp_path)
    b = load_pairs("photos", "gaussian:25", train_size=30, val_size=40, cache_dir=tmp_path)
    assert torch.equal(a.val_noisy, b.val_noisy) and torch.equal(a.val_clean, b.val_clean)


def test_second_call_loads_from_cache(tmp_path):
    args = dict(data="synthetic", noise="pixelate", train_size=32, val_size=16, seed=4,
                cache_dir=tmp_path)
    first_msgs, second_msgs = [], []
    p1 = load_pairs(**args, progress=first_msgs.append)
    path = cache_path(**{k: v for k, v in args.items()})
    assert path is not None and path.is_file() and path.parent == tmp_path
    assert any("generating" in m for m in first_msgs)
    p2 = load_pairs(**args, progress=second_msgs.append)
    assert same(p1, p2)
    assert any("from cache" in m for m in second_msgs)
    assert not any("generating" in m for m in second_msgs)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # atomic write left no temp


def test_corrupt_cache_is_regenerated(tmp_path):
    args = dict(data="photos", noise="impulse:0.2", train_size=24, val_size=8, seed=0,
                cache_dir=tmp_path)
    p1 = load_pairs(**args)
    path = cache_path(**args)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # as if a writer had been killed without os.replace
    msgs = []
    p2 = load_pairs(**args, progress=msgs.append)
    assert same(p1, p2)
    assert any("regenerating" in m for m in msgs)
    p3 = load_pairs(**args, progress=msgs.append)  # the rewritten cache is valid again
    assert same(p1, p3) and any("from cache" in m for m in msgs)


def test_folder_cache_key_follows_folder_contents(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(_texture(rng, 200, 200)).save(root / f"{i}.png")
    before = cache_path(f"folder:{root}", "pixelate", 8, 4, cache_dir=tmp_path)
    Image.fromarray(_texture(rng, 200, 200)).save(root / "3.png")
    after = cache_path(f"folder:{root}", "pixelate", 8, 4, cache_dir=tmp_path)
    assert before != after


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "n2n-search"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "n2n-search"


# ------------------------------------------------------------------------------------------
# specs
# ------------------------------------------------------------------------------------------


def test_parse_specs_accept_valid_input(tmp_path):
    assert parse_data_spec("photos") == DataSpec("photos")
    assert parse_data_spec("synthetic").kind == "synthetic"
    assert parse_data_spec(f"folder:{tmp_path}").path == tmp_path.resolve()
    assert parse_noise_spec("pixelate") == NoiseSpec("pixelate")
    assert parse_noise_spec("gaussian:25") == NoiseSpec("gaussian", 25.0)
    assert str(parse_noise_spec("gaussian:25")) == "gaussian:25"
    assert str(parse_noise_spec("impulse:0.5")) == "impulse:0.5"
    assert parse_noise_spec("text").kind == "text"


# ------------------------------------------------------------------------------------------
# bad inputs: one DataError each, with a message that names the problem
# ------------------------------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_unknown_source(tmp_path):
    with pytest.raises(DataError, match="unknown data source 'imagenet'") as e:
        load_pairs("imagenet", cache_dir=tmp_path)
    _one_line(e)


def test_unknown_noise(tmp_path):
    with pytest.raises(DataError, match="unknown noise 'speckle'") as e:
        load_pairs("photos", "speckle", cache_dir=tmp_path)
    _one_line(e)


@pytest.mark.parametrize("noise, problem", [
    ("gaussian:abc", "not a number"),
    ("impulse:1.5", "out of range"),
    ("bernoulli:-0.1", "out of range"),
    ("poisson:0", "out of range"),
    ("gaussian:nan", "out of range"),
    ("gaussian", "needs a parameter"),
    ("pixelate:3", "takes no parameter"),
])
def test_bad_noise_parameter(tmp_path, noise, problem):
    with pytest.raises(DataError, match=problem) as e:
        parse_noise_spec(noise)
    _one_line(e)
    with pytest.raises(DataError, match=problem):
        load_pairs("photos", noise, cache_dir=tmp_path)


def test_bad_sizes_and_seed(tmp_path):
    with pytest.raises(DataError, match="train_size"):
        load_pairs("photos", train_size=0, cache_dir=tmp_path)
    with pytest.raises(DataError, match="val_size"):
        load_pairs("photos", val_size="10", cache_dir=tmp_path)
    with pytest.raises(DataError, match="seed"):
        load_pairs("photos", seed=-1, cache_dir=tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_pairs(f"folder:{tmp_path / 'nope'}", cache_dir=tmp_path)
    _one_line(e)
    with pytest.raises(DataError, match="needs a directory"):
        parse_data_spec("folder:")


def test_folder_without_images(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "readme.txt").write_text("nothing to see")
    with pytest.raises(DataError, match="contains no images") as e:
        load_pairs(f"folder:{root}", cache_dir=tmp_path)
    _one_line(e)


def test_folder_with_one_readable_image(tmp_path):
    root = tmp_path / "one"
    root.mkdir()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(root / "only.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="at least 6"), pytest.warns(UserWarning):
        load_pairs(f"folder:{root}", train_size=4, val_size=2, cache_dir=tmp_path)


def test_epfl_wrong_shape(tmp_path):
    (a, b), val = _course_tensors()
    _save_course(tmp_path / "c", (a[:, :, :16, :16].clone(), b[:, :, :16, :16].clone()), val)
    with pytest.raises(DataError, match=r"shape \(20, 3, 16, 16\)") as e:
        load_pairs(f"epfl:{tmp_path / 'c'}", train_size=5, val_size=5, cache_dir=tmp_path)
    _one_line(e)


def test_epfl_wrong_dtype(tmp_path):
    train, (vn, vc) = _course_tensors()
    _save_course(tmp_path / "c", train, (vn.float(), vc.float()))
    with pytest.raises(DataError, match="dtype torch.float32") as e:
        load_pairs(f"epfl:{tmp_path / 'c'}", train_size=5, val_size=5, cache_dir=tmp_path)
    _one_line(e)


def test_epfl_truncated_file(tmp_path):
    train, val = _course_tensors()
    _save_course(tmp_path / "c", train, val)
    f = tmp_path / "c" / "train_data.pkl"
    f.write_bytes(f.read_bytes()[:2000])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        load_pairs(f"epfl:{tmp_path / 'c'}", train_size=5, val_size=5, cache_dir=tmp_path)
    _one_line(e)


def test_epfl_not_a_tuple_of_tensors(tmp_path):
    (a, b), val = _course_tensors()
    _save_course(tmp_path / "c", {"a": a, "b": b}, val)
    with pytest.raises(DataError, match="not a pair of tensors") as e:
        load_pairs(f"epfl:{tmp_path / 'c'}", train_size=5, val_size=5, cache_dir=tmp_path)
    _one_line(e)
    _save_course(tmp_path / "d", (a, b, a), val)
    with pytest.raises(DataError, match="tuple of length 3"):
        load_pairs(f"epfl:{tmp_path / 'd'}", train_size=5, val_size=5, cache_dir=tmp_path)


def test_epfl_more_than_the_file_holds(tmp_path):
    train, val = _course_tensors(20, 10)
    _save_course(tmp_path / "c", train, val)
    with pytest.raises(DataError, match="larger than the 20 pairs"):
        load_pairs(f"epfl:{tmp_path / 'c'}", train_size=21, val_size=5, cache_dir=tmp_path)


def test_epfl_missing_files(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="no train_data.pkl"):
        parse_data_spec(f"epfl:{tmp_path / 'c'}")


class _Exploit:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_epfl_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    course = tmp_path / "c"
    train, val = _course_tensors()
    _save_course(course, train, val)
    victim = tmp_path / "somefile"
    with open(course / "train_data.pkl", "wb") as fh:
        pickle.dump(_Exploit(str(victim)), fh)
    with pytest.raises(DataError, match="not plain tensor data") as e:
        load_pairs(f"epfl:{course}", train_size=5, val_size=5, cache_dir=tmp_path)
    _one_line(e)
    assert not victim.exists()
    assert not (tmp_path / "pwned").exists()
