"""Real searches on a real local Ray: fractional GPU packing, the report's grids, TensorBoard files."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.cli import main

pytestmark = pytest.mark.slow  # long end-to-end searches: python -m pytest -m "not slow" leaves them out

SMALL = ["--data", "synthetic", "--train-size", "128", "--val-size", "32", "--budget", "smoke"]


def trial_histories(experiment: Path) -> dict[str, pd.DataFrame]:
    return {d.name: pd.read_csv(d / "progress.csv") for d in sorted(experiment.glob("trial_*"))
            if (d / "progress.csv").exists()}


def trial_configs(experiment: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "params.json").read_text()) for d in sorted(experiment.glob("trial_*"))}


def test_four_trials_share_two_logical_gpus_two_each(local_ray, tmp_path):
    """Fractional GPUs on one node (tests/test_multinode.py packs four to a GPU on two nodes)."""
    rc = main(["--space", "tnet", *SMALL, "--epochs", "4", "--num-samples", "4", "--cpus-per-trial", "0.5",
               "--gpus-per-trial", "0.5", "--scheduler", "fifo", "--storage", str(tmp_path), "--name", "pack"])
    assert rc == 0
    histories = trial_histories(tmp_path / "pack")
    assert len(histories) == 4
    spans = {name: (h["process_start"].min(), h["reported_at"].max()) for name, h in histories.items()}
    # the trials themselves recorded when they ran: find a moment when all four were running
    latest_start = max(start for start, _ in spans.values())
    earliest_end = min(end for _, end in spans.values())
    assert latest_start < earliest_end, f"the 4 trials never all ran at the same time: {spans}"
    gpu_ids = pd.Series({name: str(h["gpu_ids"].iloc[-1]) for name, h in histories.items()})
    assert sorted(gpu_ids.value_counts().tolist()) == [2, 2], gpu_ids.to_dict()
    assert all("," not in g for g in gpu_ids), "each trial sees exactly one GPU"


@pytest.mark.parametrize("space, cells", [
    ("lr-grid", [("TNet", 1e-4), ("TNet", 5e-4), ("TNet", 9e-4)]),
    ("models", [("BaseNet", 5e-4), ("UNet", 1e-3), ("TNet", 5e-4), ("TNet+L1", 5e-4), ("TNet+BN", 5e-4)]),
])
def test_grid_spaces_run_every_cell_with_five_seeds(experiments, space, cells):
    """The grids of conftest's `experiments`, run by the real command without --seeds."""
    configs = trial_configs(experiments[space])
    assert sorted((c["label"], c["lr"]) for c in configs.values()) == sorted(cells)
    for name, history in trial_histories(experiments[space]).items():
        assert configs[name]["seeds"] == 5
        seed_columns = [c for c in history.columns if c.startswith("seed_psnr/")]
        assert sorted(seed_columns) == [f"seed_psnr/{s}" for s in range(5)]
        assert len(history) == 2, "every cell trains its 2 epochs"
        last = history.iloc[-1]
        per_seed = last[seed_columns].astype(float)
        assert last["val_psnr"] == pytest.approx(per_seed.mean(), abs=1e-4)
        assert last["val_psnr_std"] == pytest.approx(per_seed.std(), abs=1e-4)
        assert per_seed.nunique() == 5, "the seeds are different replicas"
    if space == "models":
        by_label = {c["label"]: c for c in configs.values()}
        assert by_label["TNet+BN"]["batchnorm"] is True and by_label["TNet+L1"]["loss"] == "l1"
        assert by_label["UNet"]["model"] == "unet" and by_label["BaseNet"]["model"] == "basenet"


def test_tensorboard_files_hold_scalars_hparams_and_the_image_grid(local_ray, tmp_path):
    from trainables.image_grid import IMAGE_TAG, labelled_grid
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    rc = main(["--space", "tnet", *SMALL, "--epochs", "3", "--num-samples", "2", "--scheduler", "fifo",
               "--storage", str(tmp_path), "--name", "tb"])
    assert rc == 0
    trials = sorted((tmp_path / "tb").glob("trial_*"))
    assert len(trials) == 2
    for trial in trials:
        acc = EventAccumulator(str(trial), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        psnr = acc.Scalars("psnr/val_psnr")
        assert [e.step for e in psnr] == [1, 2, 3], "one val_psnr point per epoch"
        assert "psnr/best_val_psnr" in tags["scalars"] and "trial/train_loss" in tags["scalars"]
        images = acc.Images(IMAGE_TAG)
        assert images, "the denoised-image grid is in the trial's TensorBoard files"
        picture = labelled_grid([(row, np.zeros((8, 3, 32, 32))) for row in ("noisy", "denoised", "clean")], "")
        assert (images[-1].height, images[-1].width) == picture.shape[:2], "8 images in 3 labelled rows"
        best_epoch = int(pd.read_csv(trial / "progress.csv")["best_epoch"].iloc[-1])
        assert images[-1].step == best_epoch, "the last grid is the trial's best epoch"
        hparams = None
        for tag, content in acc.PluginTagToContent("hparams").items():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                hparams = dict(data.session_start_info.hparams)
        assert hparams is not None, "HParams were written"
        for key in ("lr", "loss", "batchnorm", "dropout", "width", "batch_size"):
            assert key in hparams, f"searched parameter {key} missing from HParams: {sorted(hparams)}"


def test_configs_files_train_exactly_their_configurations_and_the_report_pairs_seeds(local_ray, tmp_path):
    """--configs: the report's TNet setting beside another, 3 seeds each; the report's table gives
    each one's mean ± std and the paired per-seed difference; best_config.json feeds --configs."""
    from analysis.report import main as report

    (tmp_path / "report-tnet.json").write_text(
        '{"label": "report TNet", "model": "tnet", "lr": 5e-4, "loss": "l2", "batchnorm": false, "width": 32}')
    (tmp_path / "others.json").write_text('[{"lr": 3e-3, "width": 16}, {"model": "basenet", "latent": 16}]')
    rc = main(["--configs", str(tmp_path / "report-tnet.json"), "--configs", str(tmp_path / "others.json"),
               *SMALL, "--seeds", "3", "--storage", str(tmp_path), "--name", "cmp"])
    assert rc == 0
    configs = {c["label"]: c for c in trial_configs(tmp_path / "cmp").values()}
    assert set(configs) == {"report TNet", "others-1", "others-2"}
    assert configs["report TNet"]["lr"] == 5e-4 and configs["report TNet"]["width"] == 32
    assert configs["others-1"]["lr"] == 3e-3 and configs["others-1"]["model"] == "tnet"
    assert configs["others-1"]["batchnorm"] is False, "keys an entry leaves out take the trainable's defaults"
    assert configs["others-2"]["model"] == "basenet" and configs["others-2"]["latent"] == 16
    assert all(c["seeds"] == 3 for c in configs.values())

    assert report([str(tmp_path / "cmp"), "--out", str(tmp_path / "rep"), "--samples", "2"]) == 0
    table = pd.read_csv(tmp_path / "rep" / "configs.csv").set_index("label")
    assert table.index.tolist()[0] == "report TNet", "the first file's configuration is the reference row"
    per_seed = {}
    for name, history in trial_histories(tmp_path / "cmp").items():
        last = history.iloc[-1]
        per_seed[configs_label(tmp_path / "cmp", name)] = last[[f"seed_psnr/{s}" for s in range(3)]].astype(float).values
    for label in ("others-1", "others-2"):
        diff = per_seed[label] - per_seed["report TNet"]
        assert table.loc[label, "diff_mean"] == pytest.approx(diff.mean(), abs=1e-6)
        assert table.loc[label, "diff_std"] == pytest.approx(diff.std(ddof=1), abs=1e-6)
        spread = max(per_seed[label].std(ddof=1), per_seed["report TNet"].std(ddof=1))
        assert bool(table.loc[label, "beyond_seed_spread"]) == (abs(diff.mean()) > spread)

    best = json.loads((tmp_path / "rep" / "best_config.json").read_text())
    winner = max(per_seed, key=lambda k: per_seed[k].mean())
    assert {k: best[k] for k in ("model", "lr", "width")} == {k: configs[winner][k] for k in ("model", "lr", "width")}
    rc = main(["--configs", str(tmp_path / "rep" / "best_config.json"), *SMALL, "--seeds", "3",
               "--storage", str(tmp_path), "--name", "again"])
    assert rc == 0
    (again,) = trial_histories(tmp_path / "again").values()
    retrained = again.iloc[-1][[f"seed_psnr/{s}" for s in range(3)]].astype(float).values
    assert retrained == pytest.approx(per_seed[winner], abs=1e-3), "same configuration, same seeds, same numbers"


def configs_label(experiment: Path, trial_dir: str) -> str:
    return json.loads((experiment / trial_dir / "params.json").read_text())["label"]
