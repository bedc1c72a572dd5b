"""Tests for n2n_models.classical: real scikit-image denoisers on real generated data (synthetic,
gaussian:25); the validation set cut in two stands in for a validation and a test set."""
from __future__ import annotations

import json

import pytest
import torch

from n2n_models.classical import METHODS, cached_yardsticks, yardsticks
from n2n_models.data import load_pairs
from n2n_models.metrics import psnr_uint8

HALF = 24  # images in each of "val" and "test"


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> dict:
    p = load_pairs(data="synthetic", noise="gaussian:25", train_size=1, val_size=2 * HALF, seed=0,
                   cache_dir=tmp_path_factory.mktemp("data"))
    return {"val_noisy": p.val_noisy[:HALF], "val_clean": p.val_clean[:HALF],
            "test_noisy": p.val_noisy[HALF:], "test_clean": p.val_clean[HALF:]}


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    return tmp_path_factory.mktemp("yardsticks") / "yardsticks.json"


@pytest.fixture(scope="module")
def result(arrays, cache_file) -> dict:
    lines = []
    out = cached_yardsticks(arrays, cache_file, progress=lines.append)
    assert len(lines) == len(METHODS)  # one progress line per method
    return out


def chosen(result: dict) -> dict:
    """What validation decides: each method's strength and the best method."""
    return {"best": result["best"], **{name: m["strength"] for name, m in result["methods"].items()}}


def test_every_method_beats_the_noisy_input_on_gaussian_25(result, arrays):
    assert result["noisy_test_psnr"] == psnr_uint8(arrays["test_noisy"], arrays["test_clean"])
    assert result["noisy_val_psnr"] == psnr_uint8(arrays["val_noisy"], arrays["val_clean"])
    assert set(result["methods"]) == set(METHODS)
    for name, m in result["methods"].items():
        assert m["test_psnr"] > result["noisy_test_psnr"], name
        assert m["val_psnr"] > result["noisy_val_psnr"], name


def test_chosen_strengths_lie_inside_their_grids(result):
    for name, m in result["methods"].items():
        _, param, grid, _ = METHODS[name]
        assert m["param"] == param
        assert m["strength"] in grid
        # the grids span weak to strong: at a moderate noise level neither end is the best
        assert grid[0] < m["strength"] < grid[-1], name


def test_best_is_the_method_best_on_validation(result):
    val = {name: m["val_psnr"] for name, m in result["methods"].items()}
    assert result["best"] == max(val, key=val.get)


def test_the_test_images_choose_nothing(result, arrays):
    # noise-free "noisy" test images: had the test set any say, every method would pick its weakest strength
    # (as numpy arrays, which yardsticks takes like tensors)
    val_noisy, val_clean, test_clean = (arrays[k].numpy() for k in ("val_noisy", "val_clean", "test_clean"))
    swapped = yardsticks(val_noisy, val_clean, test_clean, test_clean)
    assert chosen(swapped) == chosen(result)
    for name, m in swapped["methods"].items():
        assert m["val_psnr"] == result["methods"][name]["val_psnr"]
        assert m["test_psnr"] != result["methods"][name]["test_psnr"]
    assert swapped["noisy_val_psnr"] == result["noisy_val_psnr"]


def test_cache_round_trips_without_recomputing(result, cache_file):
    assert json.loads(cache_file.read_text()) == result
    # images no denoiser accepts: only a read of the cache can answer
    unusable = dict.fromkeys(("val_noisy", "val_clean", "test_noisy", "test_clean"), torch.zeros(1))
    with pytest.raises(ValueError):
        cached_yardsticks(unusable, None)
    assert cached_yardsticks(unusable, cache_file) == result


def other_setup(result: dict) -> str:
    """A result made with other strengths, as a cache file holds it."""
    setup = json.loads(json.dumps(result["setup"]))
    setup["methods"]["tv"]["strengths"] = [0.1]
    return json.dumps({**result, "setup": setup})


@pytest.mark.parametrize("broken", [lambda r: json.dumps(r)[:100], lambda r: '{"noisy_test_psnr": 20.0}', other_setup],
                         ids=["truncated", "missing-keys", "other-setup"])
def test_a_corrupted_or_outdated_cache_is_recomputed(result, arrays, cache_file, broken):
    cache = cache_file.with_name("broken.json")
    cache.write_text(broken(result))
    assert cached_yardsticks(arrays, cache) == result
    assert json.loads(cache.read_text()) == result
    assert [p.name for p in cache.parent.iterdir() if p.suffix == ".tmp"] == []
