"""Report tables from per-seed values: Table 1 (lr-grid), Table 2 (models) and the ranking of a
search, each as numbers (the .csv, one row per configuration, full precision) and as display text
(the .md and .tex, mean ± std)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from n2n_models.config import KNOBS, OPEN_EPOCHS, show_value

from .load import ExperimentData

# Model traits the report's Table 2 lists, by model name.
RESIDUAL = {"tnet": True, "unet": True, "basenet": False}
MODEL_ORDER = ("BaseNet", "UNet", "TNet", "TNet+L1", "TNet+BN")  # the report's row order
PSNR_DECIMALS = 2


@dataclass
class Table:
    """One table: `data` is what the .csv holds, `display` what .md and .tex show."""

    name: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        return markdown_table(self.display)

    def to_latex(self) -> str:
        caption = "".join("\\" + c if c in "#%_&$" else c for c in self.caption)  # escape=True skips captions
        tex = self.display.to_latex(index=False, escape=True, caption=caption, label=f"tab:{self.name}",
                                    column_format="l" * len(self.display.columns))
        return tex.replace("±", r"$\pm$").replace("×", r"$\times$").replace("—", "--")

    def write(self, out_dir) -> None:
        self.data.to_csv(f"{out_dir}/{self.name}.csv", index=False)
        with open(f"{out_dir}/{self.name}.tex", "w", encoding="utf-8") as f:
            f.write(self.to_latex())


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table of the frame's cells as they are (strings)."""
    def cell(value) -> str:
        return str(value).replace("|", r"\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# -- number formatting ---------------------------------------------------------------------------
def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def mean_pm_std(mean, std, decimals: int) -> str:
    """`mean ± std` with a fixed number of decimals; the mean alone for one seed; — for none."""
    if not _finite(mean):
        return "—"
    if not _finite(std):
        return f"{float(mean):.{decimals}f}"
    return f"{float(mean):.{decimals}f} ± {float(std):.{decimals}f}"


def loss_decimals(values) -> int:
    """Decimals that show 4 significant digits of the smallest loss in a row (2 to 8)."""
    finite = [abs(float(v)) for v in values if _finite(v) and float(v) != 0]
    if not finite:
        return 5
    return int(min(8, max(2, 3 - math.floor(math.log10(min(finite))))))


def _yes_no(value) -> str:
    return "Yes" if bool(value) and str(value).lower() != "false" else "No"


def _status_mark(row) -> str:
    """A short remark for a configuration that did not run all its epochs normally."""
    if row["status"] == "finished":
        return ""
    if row["target_epochs"] >= OPEN_EPOCHS:
        return f"{row['status']} after {int(row['epochs'])} epochs"
    return f"{row['status']} after {int(row['epochs'])} of {int(row['target_epochs'])} epochs"


def _marked(cells: list[str], statuses) -> list[str]:
    """A grid cell's value with its status when the configuration did not finish normally."""
    return [c if s == "finished" or c == "—" else f"{c} ({s})" for c, s in zip(cells, statuses)]


def _grid_data(trials: pd.DataFrame, key_cols: list[str]) -> pd.DataFrame:
    """One row per grid cell: its config keys and the final epoch's seed mean/std."""
    data = trials[[c for c in key_cols if c in trials]].copy()
    data["psnr_mean"], data["psnr_std"] = trials["final_psnr_mean"], trials["final_psnr_std"]
    data["test_mean"], data["test_std"] = trials["final_test_mean"], trials["final_test_std"]
    data["loss_mean"], data["loss_std"] = trials["final_loss_mean"], trials["final_loss_std"]
    data["seeds"] = trials["final_n_seeds"].fillna(0).astype(int)
    data["epoch"] = trials["final_epoch"].fillna(0).astype(int)
    data["status"], data["trial_id"] = trials["status"], trials["trial_id"]
    return data


def _remarks(trials: pd.DataFrame, names: dict, statuses=None) -> list[str]:
    """One line per configuration that did not finish normally (only `statuses` if given)."""
    out = []
    for trial_id, row in trials.iterrows():
        mark = _status_mark(row)
        if mark and (statuses is None or row["status"] in statuses):
            error = f": {row['error']}" if row.get("error") else ""
            out.append(f"{names[trial_id]} {mark}{error}")
    return out


# -- the report's tables --------------------------------------------------------------------------
def lr_table(exp: ExperimentData) -> Table:
    """Table 1: learning rates as columns, PSNR and the final L2 training loss as rows."""
    trials = exp.trials.sort_values("lr")
    data = _grid_data(trials, ["lr", "label", "model", "loss"])
    heads = [f"{lr * 1e3:g}" for lr in trials["lr"]]
    d = loss_decimals(data["loss_mean"])
    loss_name = "/".join(sorted({str(v).upper() for v in trials["loss"].dropna()})) or "L2"
    display = pd.DataFrame(
        [["PSNR (dB)", *_marked([mean_pm_std(m, s, PSNR_DECIMALS) for m, s in zip(data["psnr_mean"], data["psnr_std"])],
                                data["status"])],
         [f"Loss ({loss_name})", *_marked([mean_pm_std(m, s, d) for m, s in zip(data["loss_mean"], data["loss_std"])],
                                          data["status"])],
         ["Test PSNR (dB)", *_test_cells(data)]],
        columns=["LR × 1e-3", *heads])
    epochs = int(exp.spec.get("epochs", 0))
    caption = (f"Learning rate comparison: validation PSNR and training loss after the last epoch "
               f"({epochs} planned), average ± standard deviation over {_seed_text(data)}; test PSNR on "
               "the held-out test images at the same epoch.")
    names = {t: f"LR {lr * 1e3:g} × 1e-3 (trial {t})" for t, lr in zip(trials.index, trials["lr"])}
    return Table("table1_lr", caption, data.reset_index(drop=True), display, _remarks(trials, names))


def models_table(exp: ExperimentData) -> Table:
    """Table 2: Model, #P (thousands), Res, Loss, BN, PSNR."""
    order = {name: i for i, name in enumerate(MODEL_ORDER)}
    trials = exp.trials.assign(_order=exp.trials["label"].map(order).fillna(len(order)))
    trials = trials.sort_values(["_order", "label"]).drop(columns="_order")
    data = _grid_data(trials, ["label", "model", "lr", "loss", "batchnorm"])
    data.insert(2, "params", trials["params"].astype("Int64") if "params" in trials else pd.NA)
    data.insert(3, "residual", trials["model"].map(RESIDUAL))
    display = pd.DataFrame({
        "Model": data["label"],
        "#P (k)": [f"{p / 1000:.1f}" if _finite(p) else "—" for p in data["params"]],
        "Res": [_yes_no(v) for v in data["residual"]],
        "Loss": [str(v).upper() for v in data["loss"]],
        "BN": [_yes_no(v) for v in data["batchnorm"]],
        "PSNR (dB)": _marked([mean_pm_std(m, s, PSNR_DECIMALS) for m, s in zip(data["psnr_mean"], data["psnr_std"])],
                             data["status"]),
        "Test PSNR (dB)": _test_cells(data),
    })
    caption = (f"Comparison of models: #P parameters in thousands, Res residual connections, BN batch "
               f"normalisation, validation PSNR after the last epoch, average ± standard deviation over "
               f"{_seed_text(data)}; test PSNR on the held-out test images, at the same epoch.")
    names = {t: f"{label} (trial {t})" for t, label in zip(trials.index, trials["label"])}
    return Table("table2_models", caption, data.reset_index(drop=True), display, _remarks(trials, names))


def configs_table(exp: ExperimentData) -> Table:
    """Exact configurations (search/run.py --configs) side by side: each one's final-epoch PSNR as
    mean ± std over its seeds, and its paired difference from the first configuration over the
    seeds both trained (same seed: same initialisation and data order), with whether that
    difference is larger than the seed spread (the larger of the two configurations' stds)."""
    order = {label: i for i, label in enumerate(c["label"] for c in exp.spec.get("configs") or [])}
    trials = exp.trials.assign(_order=exp.trials["label"].map(order)).sort_values(["_order", "label"])
    trials = trials.drop(columns="_order")
    keys = [k for k in exp.hparam_columns() if k == "label" or k in exp.varying_hparams()]
    data = _grid_data(trials, keys)
    per_seed = final_per_seed(exp, trials, "psnr")
    first = trials.index[0]
    diff_mean, diff_std, n_paired, beyond = [], [], [], []
    for trial_id in trials.index:
        if trial_id == first:
            diff_mean.append(float("nan")), diff_std.append(float("nan")), n_paired.append(0), beyond.append(None)
            continue
        paired = paired_difference(per_seed, trials, trial_id, first)
        diff_mean.append(paired.mean), diff_std.append(paired.std), n_paired.append(paired.seeds)
        beyond.append(paired.beyond)
    data["diff_mean"], data["diff_std"], data["paired_seeds"], data["beyond_seed_spread"] = \
        diff_mean, diff_std, n_paired, beyond
    display = pd.DataFrame({_HEADS.get(k, k): [fmt_hparam(k, v) for v in data[k]] for k in keys})
    display["PSNR (dB)"] = _marked([mean_pm_std(m, s, PSNR_DECIMALS) for m, s in zip(data["psnr_mean"], data["psnr_std"])],
                                   data["status"])
    first_label = trials.loc[first, "label"]
    display[f"Δ vs {first_label} (dB)"] = ["—" if not _finite(m) else mean_pm_std(m, sd, PSNR_DECIMALS)
                                           for m, sd in zip(diff_mean, diff_std)]
    display["Δ > seed spread"] = ["—" if b is None else _yes_no(b) for b in beyond]
    display["Test PSNR (dB)"] = _test_cells(data)
    caption = (f"Configurations side by side: validation PSNR after the last epoch, average ± standard deviation "
               f"over {_seed_text(data)}; Δ is the paired difference from {first_label} over the same seeds "
               f"(mean ± std of the per-seed differences), and whether its size exceeds the seed spread "
               f"(the larger std of the two).")
    names = {t: f"{label} (trial {t})" for t, label in zip(trials.index, trials["label"])}
    return Table("configs", caption, data.reset_index(drop=True), display, _remarks(trials, names))


def final_per_seed(exp: ExperimentData, trials: pd.DataFrame, value: str) -> pd.DataFrame:
    """`value` ("psnr": validation, "test_psnr", "loss") of every seed at its trial's final epoch:
    one row per seed, one column per trial."""
    final = exp.seeds[exp.seeds["epoch"] == exp.seeds["trial_id"].map(trials["final_epoch"])]
    return final.pivot_table(index="seed", columns="trial_id", values=value) if not final.empty else pd.DataFrame()


@dataclass
class Paired:
    """The per-seed difference of two configurations (same seed: same initialisation and data
    order): its mean and std over the seeds both trained, and whether its size exceeds the seed
    spread (the larger of the two configurations' stds; None when unknown)."""

    mean: float = float("nan")
    std: float = float("nan")
    seeds: int = 0
    beyond: bool | None = None


def paired_difference(per_seed: pd.DataFrame, trials: pd.DataFrame, trial_id, base_id,
                      spread_column: str = "final_psnr_std") -> Paired:
    """`trial_id` minus `base_id` over the seeds both have in `per_seed` (final_per_seed)."""
    if per_seed.empty or trial_id not in per_seed or base_id not in per_seed:
        return Paired()
    d = (per_seed[trial_id] - per_seed[base_id]).dropna()
    if d.empty:
        return Paired()
    spread = max(float(trials.loc[trial_id, spread_column]), float(trials.loc[base_id, spread_column]))
    return Paired(float(d.mean()), float(d.std()) if len(d) > 1 else float("nan"), len(d),
                  bool(abs(d.mean()) > spread) if _finite(spread) else None)


def n2n_vs_n2c_table(exp: ExperimentData) -> Table:
    """Noise2Noise against Noise2Clean (space n2n-vs-n2c, or any grid with both targets): per model,
    each target's final-epoch PSNR (mean ± std over seeds) and the paired difference N2N − N2C over
    the seeds both trained, on validation and on the test images, with whether it exceeds the seed
    spread."""
    trials = exp.trials
    rows, display = [], []
    for model in dict.fromkeys(trials["model"]):  # in the grid's order
        of_model = trials[trials["model"] == model]
        by_target = {t: of_model.index[of_model["target"] == t] for t in ("noisy", "clean")}
        if any(len(ids) != 1 for ids in by_target.values()):
            continue
        n2n, n2c = by_target["noisy"][0], by_target["clean"][0]
        row = {"model": model, "params": trials.loc[n2n, "params"] if "params" in trials else float("nan")}
        cells = {"Model": _MODEL_NAMES.get(model, model)}
        for split, value, spread in (("val", "psnr", "final_psnr_std"), ("test", "test_psnr", "final_test_std")):
            mean_col = "final_psnr_mean" if split == "val" else "final_test_mean"
            paired = paired_difference(final_per_seed(exp, trials, value), trials, n2n, n2c, spread)
            row.update({f"{split}_n2n_mean": trials.loc[n2n, mean_col], f"{split}_n2n_std": trials.loc[n2n, spread],
                        f"{split}_n2c_mean": trials.loc[n2c, mean_col], f"{split}_n2c_std": trials.loc[n2c, spread],
                        f"{split}_diff_mean": paired.mean, f"{split}_diff_std": paired.std,
                        f"{split}_beyond_seed_spread": paired.beyond})
            row["paired_seeds"] = paired.seeds
            name = "Validation" if split == "val" else "Test"
            cells[f"{name} N2N (dB)"] = mean_pm_std(trials.loc[n2n, mean_col], trials.loc[n2n, spread], PSNR_DECIMALS)
            cells[f"{name} N2C (dB)"] = mean_pm_std(trials.loc[n2c, mean_col], trials.loc[n2c, spread], PSNR_DECIMALS)
            cells[f"{name} N2N − N2C (dB)"] = mean_pm_std(paired.mean, paired.std, PSNR_DECIMALS)
            cells[f"{name} Δ > seed spread"] = "—" if paired.beyond is None else _yes_no(paired.beyond)
        for trial_id in (n2n, n2c):
            if trials.loc[trial_id, "status"] != "finished":
                cells["Model"] += f" ({trials.loc[trial_id, 'target']}: {trials.loc[trial_id, 'status']})"
        rows.append(row), display.append(cells)
    data = pd.DataFrame(rows)
    caption = (f"Noise2Noise (N2N: noisy targets) against Noise2Clean (N2C: clean targets), the same inputs, "
               f"batches and initialisations: PSNR after the last epoch, average ± standard deviation over "
               f"{_seed_text(_grid_data(trials, []))}; N2N − N2C is the paired difference over the same seeds "
               "(mean ± std of the per-seed differences), and whether its size exceeds the seed spread (the "
               "larger std of the two). The Noise2Noise paper finds the gap within 0.1 dB at convergence.")
    names = {t: f"{label} (trial {t})" for t, label in zip(trials.index, trials["label"])}
    return Table("n2n_vs_n2c", caption, data, pd.DataFrame(display), _remarks(trials, names))


_MODEL_NAMES = {"tnet": "TNet", "unet": "UNet", "basenet": "BaseNet"}


def fmt_hparam(key: str, value) -> str:
    return show_value(key, value)


def search_table(exp: ExperimentData) -> Table:
    """Every trial of a search, best first: its hyperparameters, seed mean ± std of PSNR at its best
    epoch, the epochs it reached, and its fate (finished, stopped early by ASHA, diverged, errored,
    unfinished)."""
    trials = exp.trials.sort_values(["best_psnr_mean", "trial_id"], ascending=[False, True], na_position="last")
    keys = exp.hparam_columns()
    data = trials[keys].copy()
    data.insert(0, "rank", range(1, len(trials) + 1))
    data.insert(1, "trial_id", trials["trial_id"])
    data["psnr_mean"], data["psnr_std"] = trials["best_psnr_mean"], trials["best_psnr_std"]
    data["test_mean"], data["test_std"] = trials["best_test_mean"], trials["best_test_std"]
    data["seeds"] = trials["best_n_seeds"].fillna(0).astype(int)
    data["best_epoch"] = trials["best_epoch"].astype("Int64")
    data["epochs"], data["target_epochs"] = trials["epochs"], trials["target_epochs"]
    data["status"], data["error"] = trials["status"], trials["error"]
    display = pd.DataFrame({"#": data["rank"], "Trial": data["trial_id"]})
    for key in keys:
        display[_HEADS.get(key, key)] = [fmt_hparam(key, v) for v in data[key]]
    display["PSNR (dB)"] = [mean_pm_std(m, s, PSNR_DECIMALS) for m, s in zip(data["psnr_mean"], data["psnr_std"])]
    display["Test PSNR (dB)"] = _test_cells(data)
    display["Best epoch"] = [str(int(v)) if not pd.isna(v) else "—" for v in data["best_epoch"]]
    # under a time budget a trial's epochs are only a bound (OPEN_EPOCHS): the time decided
    display["Epochs"] = [f"{int(e)}" if t >= OPEN_EPOCHS else f"{int(e)}/{int(t)}"
                         for e, t in zip(data["epochs"], data["target_epochs"])]
    display["Status"] = data["status"].tolist()
    caption = (f"Search over space {exp.spec.get('space')}: every trial, best first, with the validation "
               f"PSNR at its best epoch (average ± standard deviation over {_seed_text(data)}), the test "
               "PSNR at that epoch (held-out images that no choice of the search read), the epochs it ran "
               "of those planned, and its status.")
    notes = _remarks(trials, {t: f"Trial {t}" for t in trials.index}, statuses=("errored", "diverged", "unfinished"))
    return Table("search", caption, data.reset_index(drop=True), display.reset_index(drop=True), notes)


_HEADS = {k.name: k.heading for k in KNOBS}


def _test_cells(data: pd.DataFrame) -> list[str]:
    """Test PSNR, mean ± std over seeds, for rows that have it (older experiments do not)."""
    if "test_mean" not in data:
        return ["—"] * len(data)
    return [mean_pm_std(m, s, PSNR_DECIMALS) if _finite(m) else "—" for m, s in zip(data["test_mean"], data["test_std"])]


def _seed_text(data: pd.DataFrame) -> str:
    counts = sorted({int(n) for n in data["seeds"] if n > 0})
    if not counts:
        return "seeds"
    n = counts[0] if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{n} seed{'s' if counts[-1] > 1 else ''}"


def importance_table(importances: dict, evaluator: str) -> Table:
    data = pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())})
    display = pd.DataFrame({"Hyperparameter": [_HEADS.get(k, k) for k in importances],
                            "Importance": [f"{v:.3f}" for v in importances.values()]})
    caption = f"Hyperparameter importance for the best validation PSNR ({evaluator}, Optuna)."
    return Table("importance", caption, data, display)


def main_tables(exp: ExperimentData) -> list[Table]:
    """The tables of this kind of experiment: Table 1 or 2 for the report's grids, else the search."""
    space = exp.spec.get("space")
    if space == "lr-grid":
        return [lr_table(exp)]
    if space == "models":
        return [models_table(exp)]
    if space == "configs":
        return [configs_table(exp)]
    if space == "n2n-vs-n2c":
        return [n2n_vs_n2c_table(exp)]
    return [search_table(exp)]
