"""The report's figures as PNGs (matplotlib, Agg): learning curves, PSNR against each
hyperparameter, denoised examples (the report's Figure 2), SmoothGrad (its Figure 3) and
hyperparameter importance."""
from __future__ import annotations

import math

import matplotlib
import matplotlib.collections

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from n2n_models.config import KNOB  # noqa: E402
from n2n_models.metrics import psnr_per_image  # noqa: E402
from n2n_models.smoothgrad import heatmap, smoothgrad  # noqa: E402

from .load import ExperimentData  # noqa: E402

STATUS_COLOURS = {"finished": "tab:blue", "stopped early": "tab:orange", "diverged": "tab:red",
                  "errored": "tab:red", "unfinished": "tab:gray",
                  "out of time": "tab:olive"}
TOP = 6  # searches: curves of the best trials in colour, the rest in grey
DPI = 120


def _save(fig, path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _value_columns(exp: ExperimentData) -> tuple[str, str]:
    """Grids are read after their last epoch (as their tables), searches at each trial's best epoch."""
    return ("final_psnr_mean", "final_psnr_std") if exp.is_grid else ("best_psnr_mean", "best_psnr_std")


def trial_names(exp: ExperimentData) -> dict:
    """A short legend name per trial: its grid label, else its trial id."""
    names = {}
    for trial_id, row in exp.trials.iterrows():
        if exp.spec.get("space") == "lr-grid":
            names[trial_id] = f"lr {row['lr']:.0e}"
        elif "label" in row and isinstance(row["label"], str):
            names[trial_id] = row["label"]
        else:
            names[trial_id] = str(trial_id)
    return names


def learning_curves(exp: ExperimentData, path) -> bool:
    """Validation PSNR per epoch, seed mean with a ± std band, one line per configuration."""
    history = exp.history.dropna(subset=["psnr_mean"])
    if history.empty:
        return False
    order = exp.trials.sort_values(_value_columns(exp)[0], ascending=False, na_position="last").index
    highlighted = {trial_id: rank for rank, trial_id in enumerate(order if exp.is_grid else order[:TOP], 1)}
    names = trial_names(exp)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_trial = {trial_id: h.sort_values("epoch") for trial_id, h in history.groupby("trial_id", sort=False)}
    rest = []  # the other trials' curves, in grey, drawn as one collection (thousands of lines)
    for trial_id in order:
        h = by_trial.get(trial_id)
        if h is None:
            continue
        x, y = h["epoch"].to_numpy(), h["psnr_mean"].to_numpy()
        if trial_id in highlighted:
            std = h["psnr_std"].fillna(0).to_numpy()
            rank = highlighted[trial_id]
            label = names[trial_id] if exp.is_grid else f"#{rank} {trial_id} ({exp.trials.loc[trial_id, 'status']})"
            line, = ax.plot(x, y, marker="o", ms=3, lw=1.6, label=label)
            ax.fill_between(x, y - std, y + std, color=line.get_color(), alpha=0.2, lw=0)
        else:
            rest.append(np.column_stack([x, y]))
    if rest:
        ax.add_collection(matplotlib.collections.LineCollection(rest, colors="0.7", linewidths=0.8, zorder=0,
                                                                alpha=max(0.15, min(1.0, 30 / len(rest)))))
        ax.autoscale_view()
    noisy = exp.trials.get("noisy_psnr", pd.Series(dtype=float)).dropna()
    if not noisy.empty:
        ax.axhline(float(noisy.iloc[0]), color="k", ls="--", lw=1, label="noisy input")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation PSNR (dB)")
    seeds = int(exp.spec.get("seeds", 1))
    ax.set_title(f"{exp.name}: validation PSNR, mean{' ± std' if seeds > 1 else ''} over {seeds} "
                 f"seed{'s' if seeds > 1 else ''}" + ("" if exp.is_grid else f" (best {TOP} in colour)"))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)
    return True


#: An integer knob with more values than this is drawn on a numeric axis, not one tick per value.
MAX_CATEGORIES = 12


def _is_numeric(key: str, values: pd.Series) -> bool:
    """A float knob (lr, weight decay, dropout), or an integer one with many values, on a numeric axis."""
    knob = KNOB.get(key)
    if knob is None or knob.kind not in (int, float) or not pd.api.types.is_numeric_dtype(values) \
            or pd.api.types.is_bool_dtype(values):
        return False
    return knob.kind is float or values.nunique() > MAX_CATEGORIES


def psnr_vs_hparams(exp: ExperimentData, path) -> bool:
    """Each varying hyperparameter against the configuration's PSNR (± std over seeds)."""
    keys = exp.varying_hparams()
    if "label" in keys:  # a grid cell's label names its whole configuration
        keys = ["label"]
    mean_col, std_col = _value_columns(exp)
    trials = exp.trials.dropna(subset=[mean_col])
    if not keys or trials.empty:
        return False
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    size = (6.5, 3.8) if len(keys) == 1 else (4.2 * cols, 3.3 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    noisy = exp.trials.get("noisy_psnr", pd.Series(dtype=float)).dropna()
    for ax, key in zip(axes.flat, keys):
        if not noisy.empty:
            ax.axhline(float(noisy.iloc[0]), color="k", ls="--", lw=1, label="noisy input")
        values = trials[key]
        if _is_numeric(key, values):
            x = values.astype(float).to_numpy()
            if KNOB[key].log_scale and (x > 0).all():
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels would overlap
        else:
            cats = sorted(values.dropna().unique(), key=lambda v: (str(type(v)), v if not isinstance(v, str) else 0, str(v)))
            if key == "label":
                cats = list(dict.fromkeys(values))  # the table's order
            pos = {c: i for i, c in enumerate(cats)}
            jitter = 0 if exp.is_grid else rng.uniform(-0.12, 0.12, len(values))
            x = np.array([pos[v] for v in values], dtype=float) + jitter
            ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=30 if key == "label" else 0)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        for status, colour in STATUS_COLOURS.items():
            mask = (trials["status"] == status).to_numpy()
            if mask.any():
                ax.errorbar(x[mask], trials[mean_col].to_numpy()[mask], yerr=trials[std_col].fillna(0).to_numpy()[mask],
                            fmt="o", color=colour, label=status,
                            **({"ms": 5, "capsize": 3} if len(trials) <= 100 else {"ms": 2, "capsize": 0, "alpha": 0.5}))
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation PSNR (dB)")
    handles, labels = [], []
    for ax in axes.flat[:len(keys)]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    when = "after the last epoch" if exp.is_grid else "at each trial's best epoch"
    fig.suptitle(f"{exp.name}: validation PSNR {when} against each hyperparameter", fontsize=10)
    fig.tight_layout()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, -0.04))
    _save(fig, path)
    return True


def _to_image(x: torch.Tensor) -> np.ndarray:
    return x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def predict(model, noisy_u8: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The model's output on uint8 images, float in [0, 1] (clamped, as the trainer evaluates)."""
    model.eval()
    outs = [model(noisy_u8[i:i + batch].float() / 255) for i in range(0, len(noisy_u8), batch)]
    return torch.cat(outs).clamp(0, 1)


def denoised_examples(model, noisy_u8: torch.Tensor, clean_u8: torch.Tensor, path, count: int = 8) -> None:
    """Noisy / denoised / clean rows of the first `count` validation images, with their PSNR."""
    noisy, clean = noisy_u8[:count].float() / 255, clean_u8[:count].float() / 255
    denoised = predict(model, noisy_u8[:count])
    p_noisy, p_denoised = psnr_per_image(noisy, clean), psnr_per_image(denoised, clean)
    n = len(noisy)
    fig, axes = plt.subplots(3, n, figsize=(1.45 * n, 4.8), squeeze=False)
    for j in range(n):
        for i, (images, name) in enumerate(((noisy, "noisy"), (denoised, "denoised"), (clean, "clean"))):
            ax = axes[i, j]
            ax.imshow(_to_image(images[j]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i < 2:
                ax.set_title(f"{(p_noisy if i == 0 else p_denoised)[j]:.1f} dB", fontsize=8)
            if j == 0:
                ax.set_ylabel(name)
    fig.suptitle("Validation images: noisy input, denoised by the best model, clean reference (PSNR per image)",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def smoothgrad_figure(model, noisy_u8: torch.Tensor, clean_u8: torch.Tensor, path, loss: str = "l2",
                      count: int = 3, pool: int = 64, samples: int = 32) -> None:
    """Input, output, clean, and the smoothed gradients of the loss and of the output with respect
    to the input, for the `count` images (of the first `pool`) that the model improves most."""
    noisy, clean = noisy_u8[:pool].float() / 255, clean_u8[:pool].float() / 255
    gain = psnr_per_image(predict(model, noisy_u8[:pool]), clean) - psnr_per_image(noisy, clean)
    pick = torch.argsort(gain, descending=True)[:count]
    x, target = noisy[pick], clean[pick]
    sg = smoothgrad(model, x, target, samples=samples, loss=loss)
    maps = {"loss": heatmap(sg.loss_grad), "output": heatmap(sg.output_grad)}
    columns = ["noisy input", "output", "clean", f"|∂L/∂x| ({loss.upper()} loss)", "|∂f/∂x| (output)"]
    fig, axes = plt.subplots(len(pick), 5, figsize=(9.5, 2.0 * len(pick)), squeeze=False)
    for i in range(len(pick)):
        panels = [_to_image(x[i]), _to_image(sg.output[i]), _to_image(target[i]),
                  maps["loss"][i].cpu().numpy(), maps["output"][i].cpu().numpy()]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            if panel.ndim == 2:
                im = ax.imshow(panel, cmap="inferno", interpolation="nearest")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
            else:
                ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=8)
    fig.suptitle(f"SmoothGrad: gradients averaged over {samples} noisy copies of the input", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def importance_figure(importances: dict, evaluator: str, path) -> None:
    keys = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(keys) + 1.2))
    ax.barh(keys, [importances[k] for k in keys], color="tab:blue")
    ax.set_xlabel(f"importance ({evaluator}, Optuna)")
    ax.set_title("Hyperparameter importance for the best validation PSNR", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
