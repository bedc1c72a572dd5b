"""`python -m n2n_models.denoise`: a trained TNet applied to PNG and JPEG images of other sizes
than 32x32 improves them; bad input exits 2 with one line; the module never imports Ray."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from n2n_models import build_model
from n2n_models.denoise import denoise_tensor, main
from n2n_models.export import load_model, save_model

REPO = Path(__file__).resolve().parents[1]
SIGMA = 25


def train_tnet(tmp_path_factory) -> Path:
    """A TNet trained with Noise2Noise on photo crops with Gaussian noise (sigma 25) for 4 epochs
    (about 10 s on one thread); shared by the test modules of one session through its file."""
    from n2n_models.data import load_pairs
    from n2n_models.train import ReplicaTrainer, TrainSpec

    path = tmp_path_factory.getbasetemp() / "trained_tnet_gaussian25.pt"
    if path.exists():
        return path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is fastest on a busy 2-core machine
    try:
        pairs = load_pairs("photos", f"gaussian:{SIGMA}", train_size=1500, val_size=100, seed=0)
        trainer = ReplicaTrainer(TrainSpec(model="tnet", lr=3e-3, batch_size=16, epochs=4, seeds=(0,)))
        for _ in range(4):
            trainer.train_epoch(pairs.train_a, pairs.train_b)
        val_psnr = float(trainer.evaluate(pairs.val_noisy, pairs.val_clean)[0])
        save_model(path, "tnet", {}, trainer.replica_state_dicts()[0], val_psnr=val_psnr, seed=0, epoch=4,
                   data={"data": "photos", "noise": f"gaussian:{SIGMA}", "train_size": 1500, "val_size": 100,
                         "data_seed": 0})
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return train_tnet(tmp_path_factory)


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def noisy_copy(clean: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(clean + rng.normal(0, SIGMA, clean.shape)), 0, 255).astype(np.uint8)


def test_denoise_command_improves_a_100x75_png_and_a_64x64_jpeg(model_file, tmp_path):
    clean_png = skimage.data.astronaut()[100:175, 150:250]  # 75 rows x 100 columns
    clean_jpg = skimage.data.chelsea()[50:114, 100:164]  # 64 x 64
    Image.fromarray(noisy_copy(clean_png, 1)).save(tmp_path / "astronaut.png")
    Image.fromarray(noisy_copy(clean_jpg, 2)).save(tmp_path / "cat.jpg", quality=95)
    run = subprocess.run([sys.executable, "-m", "n2n_models.denoise", "--model", str(model_file),
                          str(tmp_path / "astronaut.png"), str(tmp_path / "cat.jpg"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    for name, clean in (("astronaut", clean_png), ("cat", clean_jpg)):
        source = tmp_path / ("astronaut.png" if name == "astronaut" else "cat.jpg")
        noisy = np.asarray(Image.open(source).convert("RGB"))
        out = Image.open(tmp_path / "out" / f"{name}.png")
        assert out.format == "PNG" and out.mode == "RGB" and out.size == (clean.shape[1], clean.shape[0])
        before, after = psnr8(noisy, clean), psnr8(np.asarray(out), clean)
        assert after > before + 1.0, f"{name}: {before:.2f} dB in, {after:.2f} dB out"


@pytest.mark.parametrize("height, width", [(1, 1), (5, 7), (32, 32), (33, 65), (75, 100)])
def test_any_image_size_comes_back_the_same_size(height, width):
    torch.manual_seed(0)
    for name in ("tnet", "unet", "basenet"):
        model = build_model(name).eval()
        out = denoise_tensor(model, torch.rand(3, height, width), fixed_size=name == "basenet")
        assert out.shape == (3, height, width) and out.min() >= 0 and out.max() <= 1


def test_large_images_go_in_tiles_that_agree_with_one_pass(model_file):
    model, _ = load_model(model_file)
    image = torch.from_numpy(skimage.data.astronaut()[:200, :300].copy()).permute(2, 0, 1).float() / 255
    whole = denoise_tensor(model, image, tile=512)
    tiled = denoise_tensor(model, image, tile=64)
    assert tiled.shape == whole.shape == image.shape
    assert (tiled - whole).abs().mean() < 0.01, "tiles with 32 pixels of context match the one-pass result"


def test_basenet_runs_on_32x32_patches(tmp_path):
    torch.manual_seed(0)
    model = build_model("basenet").eval()
    save_model(tmp_path / "basenet.pt", "basenet", {"latent": 8}, model.state_dict())
    Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    assert main(["--model", str(tmp_path / "basenet.pt"), str(tmp_path / "grey.png"), "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "grey_denoised.png").size == (70, 50), "never overwrites its input"
    x = torch.rand(3, 64, 96)
    patches = denoise_tensor(model, x, fixed_size=True)
    with torch.no_grad():
        first = model(x[None, :, 32:64, 32:64]).clamp(0, 1)[0]
    assert torch.allclose(patches[:, 32:64, 32:64], first, atol=1e-5)


def test_model_file_is_self_describing_and_loads_with_weights_only(model_file):
    payload = torch.load(model_file, weights_only=True)
    assert payload["model"] == "tnet" and payload["hparams"] == {}
    assert payload["data"]["noise"] == f"gaussian:{SIGMA}" and payload["epoch"] == 4 and payload["seed"] == 0
    assert isinstance(payload["val_psnr"], float)
    model, info = load_model(model_file)
    assert not model.training and "state_dict" not in info


@pytest.mark.parametrize("case", ["missing image", "unreadable image", "bad model file", "tune checkpoint",
                                  "missing model", "no --model"])
def test_bad_input_exits_2_with_one_line(model_file, tmp_path, case, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    args = ["--model", str(model_file), str(good), "--out", str(tmp_path / "out")]
    if case == "missing image":
        args[2] = str(tmp_path / "nothing.png")
    elif case == "unreadable image":
        (tmp_path / "text.png").write_text("not an image")
        args[2] = str(tmp_path / "text.png")
    elif case == "bad model file":
        (tmp_path / "bad.pt").write_bytes(os.urandom(200))
        args[1] = str(tmp_path / "bad.pt")
    elif case == "tune checkpoint":
        torch.save({"trainer": {"epoch": 1, "replicas": []}, "extra": {}}, tmp_path / "trainer.pt")
        args[1] = str(tmp_path / "trainer.pt")
    elif case == "missing model":
        args[1] = str(tmp_path / "none.pt")
    else:
        args = args[2:]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("n2n_models.denoise: error: ")
    assert not (tmp_path / "out").exists(), "nothing is written when an input is bad"


def test_an_out_that_is_a_file_exits_2_and_keeps_the_file(model_file, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    (tmp_path / "out").write_text("keep me")
    assert main(["--model", str(model_file), str(good), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"n2n_models.denoise: error: --out {tmp_path / 'out'} exists and is not a folder"]
    assert (tmp_path / "out").read_text() == "keep me"


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "n2n_models.denoise", "--model", str(tmp_path / "none.pt"),
                          str(tmp_path / "x.png"), "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_denoise_export_and_smoothgrad_never_import_ray():
    code = ("import sys, n2n_models.denoise, n2n_models.export, n2n_models.smoothgrad; "
            "sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_model_file_that_would_run_code_is_refused(tmp_path, capsys):
    import pickle

    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": "tnet", "state_dict": _RunsCode(marker)}, f)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    assert main(["--model", str(tmp_path / "evil.pt"), str(good), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.pt" in err[0]
    assert not marker.exists(), "loading a model file must never execute code"


def test_ctrl_c_keeps_finished_outputs_and_leaves_the_rest_untouched(model_file, tmp_path):
    """SIGINT after the first of two images is written, while a large second one is denoised: exit
    130 with one line; the first output is a whole PNG, the second image's output from an earlier
    run is left as it was, and no temporary file remains."""
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), np.uint8)).save(tmp_path / "large.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "large.png").write_bytes(b"from an earlier run")
    proc = subprocess.Popen([sys.executable, "-m", "n2n_models.denoise", "--model", str(model_file),
                             str(tmp_path / "small.png"), str(tmp_path / "large.png"), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    try:
        first = proc.stdout.readline()
        assert "small.png ->" in first, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["n2n_models.denoise: interrupted"]
    assert Image.open(out / "small.png").size == (40, 40)
    assert (out / "large.png").read_bytes() == b"from an earlier run"
    assert sorted(p.name for p in out.iterdir()) == ["large.png", "small.png"]
