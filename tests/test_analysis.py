"""The report of real small experiments: its tables against a recomputation from the trials' own
files, its statuses on damaged experiments, its exported model, its figures, and its exit
status on folders that are not experiments."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from analysis.load import load_experiment
from analysis.report import main as report_main
from conftest import EXPERIMENT_ARGS, interrupt_when

pytestmark = pytest.mark.slow  # long end-to-end searches: python -m pytest -m "not slow" leaves them out

REPO = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a busy 2-core machine run several times faster on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {**os.environ, "OMP_NUM_THREADS": "1"}
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reports(experiments, one_thread):
    """Each experiment's report; the lr-grid one made by running the script from the repo root."""
    out = {}
    for name, path in experiments.items():
        if name == "lr-grid":
            run = subprocess.run([sys.executable, "analysis/report.py", str(path), "--samples", "8"], cwd=REPO,
                                 capture_output=True, text=True, timeout=300, env=one_thread)
            assert run.returncode == 0, run.stderr
            assert "PSNR (dB)" in run.stdout, "the main table is printed"
        else:
            assert report_main([str(path), "--samples", "8"]) == 0
        out[name] = path / "report"
    return out


# -- an independent recomputation from each trial's progress.csv ------------------------------------
def histories(experiment: Path) -> dict[str, pd.DataFrame]:
    """trial id -> its progress.csv (folders are named by number and configuration, the rows say the id)."""
    frames = [pd.read_csv(d / "progress.csv", dtype={"trial_id": str}) for d in sorted(experiment.glob("trial_*"))]
    return {frame["trial_id"].iloc[0]: frame for frame in frames}


def trial_folders(experiment: Path) -> dict[str, Path]:
    """trial id -> its folder."""
    return {trial_id_of(d): d for d in sorted(experiment.glob("trial_*"))}


def trial_id_of(folder: Path) -> str:
    return str(pd.read_csv(folder / "progress.csv", dtype={"trial_id": str})["trial_id"].iloc[0])


def seed_stats(row: pd.Series, metric: str) -> tuple[float, float]:
    values = row[[c for c in row.index if c.startswith(f"seed_{metric}/")]].astype(float)
    return values.mean(), values.std(ddof=1)


def row_test_shown(cell: str, test: tuple[float, float]) -> bool:
    """The test PSNR cell shows the seed mean (± std) of the trial's seed_test_psnr columns."""
    assert test[0] == test[0], "the trainable reported test PSNR"
    assert_shown(cell, *test)
    return True


def best_row(history: pd.DataFrame) -> pd.Series:
    means = history[[c for c in history.columns if c.startswith("seed_psnr/")]].astype(float).mean(axis=1)
    return history.loc[means.idxmax()]


def parse_pm(cell: str) -> tuple[float, float, int]:
    """'25.31 ± 0.01' -> (25.31, 0.01, 2 decimals)."""
    mean, _, std = cell.partition(" ± ")
    decimals = len(mean.split(".")[1]) if "." in mean else 0
    return float(mean), float(std) if std else math.nan, decimals


def assert_shown(cell: str, mean: float, std: float):
    shown_mean, shown_std, decimals = parse_pm(cell)
    half = 0.5 * 10 ** -decimals + 1e-12
    assert abs(shown_mean - mean) <= half, (cell, mean)
    assert abs(shown_std - std) <= half, (cell, std)


def md_table(report: str, heading: str) -> pd.DataFrame:
    """The markdown table that follows `## heading` in report.md, as strings."""
    lines = report.split(f"## {heading}", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append([c.strip() for c in line.strip("|").split(" | ")])
    return pd.DataFrame(block[2:], columns=block[0])


def assert_same_cells(md: pd.DataFrame, tex: pd.DataFrame):
    assert list(md.columns) == list(tex.columns) and md.values.tolist() == tex.values.tolist(), \
        f"markdown and LaTeX differ:\n{md}\n{tex}"


def tex_table(path: Path) -> pd.DataFrame:
    """The rows of a pandas-written LaTeX table, with $\\pm$ back to ±."""
    text = path.read_text()
    head, body = text.split(r"\midrule")[0].split(r"\toprule")[1], text.split(r"\midrule")[1].split(r"\bottomrule")[0]

    def cells(line):
        line = line.strip().removesuffix(r"\\").strip()
        back = {r"$\pm$": "±", r"$\times$": "×", r"\#": "#", r"\_": "_", "--": "—"}
        out = []
        for c in line.split(" & "):
            for tex, text in back.items():
                c = c.replace(tex, text)
            out.append(c.strip())
        return out
    rows = [cells(line) for line in body.strip().splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=cells(head.strip()))


# -- Done when 1: every number equals a recomputation; csv, tex and md agree ----------------------------
def test_table1_numbers_are_the_seed_mean_and_std_of_each_lr_after_the_last_epoch(experiments, reports):
    trials = histories(experiments["lr-grid"])
    configs = {t: json.loads((trial_folders(experiments["lr-grid"])[t] / "params.json").read_text()) for t in trials}
    by_lr = sorted(trials, key=lambda t: configs[t]["lr"])
    csv = pd.read_csv(reports["lr-grid"] / "table1_lr.csv", dtype={"trial_id": str})
    md = md_table((reports["lr-grid"] / "report.md").read_text(), "Table 1")
    tex = tex_table(reports["lr-grid"] / "table1_lr.tex")
    assert_same_cells(md, tex)
    assert list(md.columns) == ["LR × 1e-3", "0.1", "0.5", "0.9"]
    assert list(md.iloc[:, 0]) == ["PSNR (dB)", "Loss (L2)", "Test PSNR (dB)"]
    assert list(csv["trial_id"]) == by_lr
    for i, trial in enumerate(by_lr):
        last = trials[trial].iloc[-1]
        psnr, loss, test = seed_stats(last, "psnr"), seed_stats(last, "loss"), seed_stats(last, "test_psnr")
        assert row_test_shown(md.iloc[2, i + 1], test)
        row = csv.iloc[i]
        assert row["psnr_mean"] == pytest.approx(psnr[0], abs=1e-9) and row["psnr_std"] == pytest.approx(psnr[1], abs=1e-9)
        assert row["loss_mean"] == pytest.approx(loss[0], abs=1e-12) and row["loss_std"] == pytest.approx(loss[1], abs=1e-12)
        assert row["seeds"] == 5 and row["epoch"] == 2 and row["status"] == "finished"  # the grid's 5 seeds
        assert_shown(md.iloc[0, i + 1], *psnr)
        assert_shown(md.iloc[1, i + 1], *loss)


def test_table2_has_the_report_shape_and_recomputed_numbers(experiments, reports):
    trials = histories(experiments["models"])
    configs = {t: json.loads((trial_folders(experiments["models"])[t] / "params.json").read_text()) for t in trials}
    csv = pd.read_csv(reports["models"] / "table2_models.csv", dtype={"trial_id": str})
    md = md_table((reports["models"] / "report.md").read_text(), "Table 2")
    tex = tex_table(reports["models"] / "table2_models.tex")
    assert_same_cells(md, tex)
    assert list(md.columns) == ["Model", "#P (k)", "Res", "Loss", "BN", "PSNR (dB)", "Test PSNR (dB)"]
    assert list(md["Model"]) == ["BaseNet", "UNet", "TNet", "TNet+L1", "TNet+BN"]
    expected = {"BaseNet": ("166.9", "No", "L2", "No"), "UNet": ("991.2", "Yes", "L2", "No"),
                "TNet": ("43.1", "Yes", "L2", "No"), "TNet+L1": ("43.1", "Yes", "L1", "No"),
                "TNet+BN": ("43.6", "Yes", "L2", "Yes")}
    for i, row in md.iterrows():
        trial = csv.loc[i, "trial_id"]
        assert configs[trial]["label"] == row["Model"]
        assert (row["#P (k)"], row["Res"], row["Loss"], row["BN"]) == expected[row["Model"]]
        last = trials[trial].iloc[-1]
        psnr = seed_stats(last, "psnr")
        assert csv.loc[i, "psnr_mean"] == pytest.approx(psnr[0], abs=1e-9)
        assert csv.loc[i, "psnr_std"] == pytest.approx(psnr[1], abs=1e-9)
        assert csv.loc[i, "params"] == last["params"]
        assert_shown(row["PSNR (dB)"], *psnr)
        assert row_test_shown(row["Test PSNR (dB)"], seed_stats(last, "test_psnr"))


def test_search_table_ranks_trials_by_their_best_epoch_seed_mean(experiments, reports):
    trials = histories(experiments["tnet"])
    csv = pd.read_csv(reports["tnet"] / "search.csv", dtype={"trial_id": str})
    md = md_table((reports["tnet"] / "report.md").read_text(), "Search results")
    tex = tex_table(reports["tnet"] / "search.tex")
    assert_same_cells(md, tex)
    assert len(md) == len(trials) == 5
    best = {t: best_row(h) for t, h in trials.items()}
    ranked = sorted(trials, key=lambda t: -seed_stats(best[t], "psnr")[0])
    assert list(md["Trial"]) == ranked == list(csv["trial_id"])
    for i, trial in enumerate(ranked):
        psnr = seed_stats(best[trial], "psnr")
        assert csv.loc[i, "psnr_mean"] == pytest.approx(psnr[0], abs=1e-9)
        assert csv.loc[i, "psnr_std"] == pytest.approx(psnr[1], abs=1e-9)
        assert_shown(md.loc[i, "PSNR (dB)"], *psnr)
        assert row_test_shown(md.loc[i, "Test PSNR (dB)"], seed_stats(best[trial], "test_psnr"))  # at the best val epoch
        assert int(md.loc[i, "Best epoch"]) == csv.loc[i, "best_epoch"] == best[trial]["training_iteration"]
        assert md.loc[i, "Epochs"] == f"{len(trials[trial])}/2"
        stopped = len(trials[trial]) < 2
        assert md.loc[i, "Status"] == ("stopped early" if stopped else "finished")
        config = json.loads((trial_folders(experiments["tnet"])[trial] / "params.json").read_text())
        assert md.loc[i, "LR"] == f"{config['lr']:.2e}" and csv.loc[i, "lr"] == config["lr"]


# -- Done when 2: damaged experiments and folders that are not experiments -------------------------------
def _rewrite(trial_dir: Path, keep: int, edit=None):
    """Keep the first `keep` rows of a trial's progress.csv and result.json, then `edit` the last."""
    csv = pd.read_csv(trial_dir / "progress.csv", dtype={"trial_id": str}).head(keep)
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()][:keep]
    if edit:
        edit(csv, rows[-1])
    csv.to_csv(trial_dir / "progress.csv", index=False)
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _not_done(csv, row):
    csv.loc[csv.index[-1], "done"] = False
    row["done"] = False


def _diverged(csv, row):
    seed_cols = [c for c in csv.columns if c.startswith("seed_psnr/")]
    csv.loc[csv.index[-1], ["diverged", "val_psnr", *seed_cols]] = [True, float("nan")] + [float("nan")] * len(seed_cols)
    row.update(diverged=True, val_psnr=float("nan"), seed_psnr={k: float("nan") for k in row["seed_psnr"]})


def test_report_says_which_trials_errored_diverged_stopped_or_are_unfinished(experiments, one_thread, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(experiments["tnet"], damaged, ignore=shutil.ignore_patterns("report"))
    dirs = sorted(damaged.glob("trial_*"))
    ids = [trial_id_of(d) for d in dirs]
    # an interrupted trial: one epoch, not done; a failed one: the same plus Ray's error.txt
    _rewrite(dirs[0], 1, _not_done)
    _rewrite(dirs[1], 1, _not_done)
    (dirs[1] / "error.txt").write_text("Failure # 1 (occurred at 2026-01-01_00-00-00)\n"
                                       "Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    _rewrite(dirs[2], 2, _diverged)
    _rewrite(dirs[3], 1, lambda csv, row: (csv.__setitem__("done", True), row.update(done=True)))  # ASHA-stopped
    out = tmp_path / "out"
    assert report_main([str(damaged), "--out", str(out), "--samples", "4"]) == 0
    status = pd.read_csv(out / "search.csv", dtype={"trial_id": str}).set_index("trial_id")["status"]
    assert status[ids[0]] == "unfinished"
    assert status[ids[1]] == "errored"
    assert status[ids[2]] == "diverged"
    assert status[ids[3]] == "stopped early"
    report = (out / "report.md").read_text()
    md = md_table(report, "Search results").set_index("Trial")
    assert md.loc[ids[0], "Status"] == "unfinished" and md.loc[ids[0], "Epochs"] == "1/2"
    assert md.loc[ids[1], "Status"] == "errored" and md.loc[ids[2], "Status"] == "diverged"
    assert f"Trial {ids[1]} errored after 1 of 2 epochs: RuntimeError: CUDA out of memory" in report
    assert f"Trial {ids[2]} diverged" in report and f"Trial {ids[0]} unfinished" in report
    assert (out / "best_model.pt").is_file()


@pytest.mark.parametrize("make", ["empty", "other-tool", "missing", "storage"])
def test_a_folder_that_is_not_an_experiment_exits_2_with_one_line(experiments, tmp_path, make, capsys):
    folder = tmp_path / "folder"
    if make == "empty":
        folder.mkdir()
    elif make == "other-tool":
        (folder / "run1").mkdir(parents=True)
        (folder / "run1" / "progress.csv").write_text("a,b\n1,2\n")
        (folder / "events.out.tfevents.1").write_bytes(b"\0\1")
    elif make == "storage":
        folder = experiments["tnet"].parent  # the --storage folder, one level too high
    assert report_main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "not an experiment folder" in err or "does not exist" in err
    if make == "storage":
        assert str(experiments["tnet"]) in err, "the message names the experiments inside"


def test_an_experiment_without_trials_exits_2(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "n2n_experiment.json").write_text(json.dumps({"space": "tnet", "epochs": 2}))
    run = subprocess.run([sys.executable, str(REPO / "analysis" / "report.py"), str(tmp_path / "exp")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "no trials" in run.stderr


# -- Done when 3: the exported model ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXPERIMENT_ARGS))
def test_exported_model_reproduces_its_recorded_validation_psnr(experiments, reports, name):
    from n2n_models import build_model
    from n2n_models.data import load_pairs
    from n2n_models.metrics import psnr

    payload = torch.load(reports[name] / "best_model.pt", weights_only=True)
    spec = json.loads((experiments[name] / "n2n_experiment.json").read_text())
    assert payload["data"] == {"data": spec["data"], "noise": spec["noise"], "train_size": spec["train_size"],
                               "val_size": spec["val_size"], "data_seed": spec["data_seed"]}
    # it is the best configuration at its best epoch, and that epoch's best seed
    trials = histories(experiments[name])
    means = {(t, int(r["training_iteration"])): seed_stats(r, "psnr")[0] for t, h in trials.items() for _, r in h.iterrows()}
    (trial, epoch), _ = max(means.items(), key=lambda kv: kv[1])
    assert (payload["trial_id"], payload["epoch"]) == (trial, epoch)
    row = trials[trial].iloc[epoch - 1]
    seeds = {int(c.split("/")[1]): float(row[c]) for c in row.index if c.startswith("seed_psnr/")}
    assert payload["seed"] == max(seeds, key=seeds.get)
    assert payload["val_psnr"] == pytest.approx(max(seeds.values()), abs=1e-9)
    # loaded fresh, it scores that PSNR on the regenerated validation set
    model = build_model(payload["model"], **payload["hparams"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    pairs = load_pairs(**{k: payload["data"][k] for k in ("data", "noise", "train_size", "val_size")},
                       seed=payload["data"]["data_seed"])
    with torch.no_grad():
        denoised = model(pairs.val_noisy.float() / 255).clamp(0, 1)
    assert psnr(denoised, pairs.val_clean.float() / 255) == pytest.approx(payload["val_psnr"], abs=0.01)


def test_model_hparams_are_those_the_trainable_builds():
    from n2n_models.config import model_hparams, spec_from_config, trial_seeds

    for config in ({"model": "tnet", "lr": 1e-3, "width": 64, "batchnorm": True, "dropout": 0.1, "seeds": 3},
                   {"model": "tnet", "label": "TNet+BN", "batchnorm": True, "seeds": 2, "seed": 5},
                   {"model": "unet", "width": 24, "dropout": 0.2, "batchnorm": False},
                   {"model": "basenet", "latent": 16, "seeds": 1}, {"model": "basenet"}):
        spec = spec_from_config(config)
        assert model_hparams(config) == spec.hparams
        assert tuple(trial_seeds(config)) == spec.seeds


# -- Done when 5: figures in place, importance -----------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("tnet", {"learning_curves", "psnr_vs_hparams", "denoised_examples", "smoothgrad", "importance"}),
    ("lr-grid", {"learning_curves", "psnr_vs_hparams", "denoised_examples", "smoothgrad"}),
])
def test_report_md_shows_every_figure_in_place(reports, name, expected):
    report = (reports[name] / "report.md").read_text()
    pngs = {p.stem for p in reports[name].glob("*.png")}
    assert pngs == expected
    for stem in pngs:
        assert re.search(rf"!\[[^\]]+\]\({stem}\.png\)", report), f"{stem}.png is not shown in report.md"
        with Image.open(reports[name] / f"{stem}.png") as im:
            assert im.width >= 300 and im.height >= 200
    if "importance" not in expected:
        assert "### Hyperparameter importance\n\nNot computed:" in report
    else:
        importance = pd.read_csv(reports[name] / "importance.csv")
        from ray.tune.search.sample import Domain

        from search.spaces import SPACES

        searched = {k for k, v in SPACES[name].params.items() if isinstance(v, Domain)}  # the space's knobs
        assert set(importance["parameter"]) <= searched
        assert importance["importance"].between(0, 1).all()


def test_importance_is_the_same_in_two_reports(experiments, reports):
    """fANOVA is seeded and scikit-learn, which it needs, is a dependency: not an evaluator that
    depends on what else happens to be installed."""
    from analysis.importance import param_importances

    exp = load_experiment(experiments["tnet"])
    first, evaluator, used = param_importances(exp)
    assert evaluator == "fANOVA" and used >= 4
    assert param_importances(load_experiment(experiments["tnet"]))[0] == first
    written = pd.read_csv(reports["tnet"] / "importance.csv")
    assert dict(zip(written["parameter"], written["importance"])) == pytest.approx(first, abs=1e-12)


def test_an_interrupted_report_leaves_the_previous_one_as_it_was(reports, one_thread):
    """SIGINT once the new report has begun writing: exit 130 with one line, every file of the
    previous report byte for byte the same, and no staging folder left behind."""
    out = reports["tnet"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, _, err = interrupt_when(["analysis/report.py", str(out.parent), "--samples", "64"],
                                lambda pid: bool(list(out.glob(".report-*.tmp/*.csv"))), env=one_thread)
    assert rc == 130, err
    assert err.strip().splitlines() == [f"analysis/report.py: interrupted; {out} is as it was before"], err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_tune_trial_states_reads_what_tune_saved(local_ray, tmp_path):
    """analysis.load reads trial statuses and configs from Tune's private experiment_state file: a
    Ray upgrade that changes that format fails here, not silently in reports."""
    from ray import tune

    from analysis.load import tune_trial_states

    def trainable(config):
        if config["x"] == 2:
            raise RuntimeError("this trial fails")
        tune.report({"value": config["x"]})

    tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2])},
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="states"))
    results = tuner.fit()
    states = tune_trial_states(tmp_path / "states")
    assert len(states) == len(results) == 2
    by_x = {config["x"]: status for status, config, _ in states.values()}
    assert by_x == {1: "TERMINATED", 2: "ERROR"}
    assert all(folder and (tmp_path / "states" / folder).is_dir() for _, _, folder in states.values())
