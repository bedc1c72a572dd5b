"""`python analysis/report.py EXPERIMENT_DIR [--out DIR]`: an experiment folder -> report.md with
its tables (also .csv and .tex), figures (PNG) and the exported best model (best_model.pt).
Reads the folder only; no Ray cluster is needed.

Exit status: 0 done, 2 bad usage or bad input (one line on stderr), 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.experiment_file import BEST_MODEL_FILE, FINISH_SPACE, REFIT_FOLDER, REPORT_FOLDER, YARDSTICKS_FILE  # noqa: E402
from analysis.load import STATUSES, ExperimentData, ExperimentError, load_experiment  # noqa: E402
from analysis.provenance import provenance_md, provenance_notes  # noqa: E402
from analysis.tables import PSNR_DECIMALS, Table, fmt_hparam, importance_table, main_tables, mean_pm_std  # noqa: E402
from n2n_models.classical import read_yardsticks, yardstick_line  # noqa: E402
from n2n_models.config import shown_knobs  # noqa: E402
from n2n_models.provenance import version_line  # noqa: E402

MD_ROWS = 25  # longest search table shown in report.md (all rows are in the .csv/.tex)


class UsageError(Exception):
    """Bad usage: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="analysis/report.py", description="Write the report of an experiment folder made by "
                "search/run.py: tables (.md, .csv, .tex), figures (.png) and best_model.pt.")
    p.add_argument("--version", action="version", version=version_line())
    p.add_argument("experiment", metavar="EXPERIMENT_DIR", help="<storage>/<name> of a search")
    p.add_argument("--out", help="report folder (default: EXPERIMENT_DIR/report)")
    p.add_argument("--samples", type=int, default=32, help="noisy copies per SmoothGrad image (default 32)")
    return p


def _log(message: str) -> None:
    print(f"[report] {message}", file=sys.stderr, flush=True)


def _experiment_line(exp: ExperimentData) -> str:
    s = exp.spec
    if s.get("scheduler") == "pbt":
        return (f"Space `{s.get('space')}`, Population Based Training, budget `{s.get('budget')}`: a population of "
                f"{s.get('num_samples')} × {s.get('seeds')} seed{'s' if s.get('seeds') != 1 else ''} trained "
                + (f"for the whole time budget of {s['time_budget_min']:g} minutes" if s.get("time_budget_min")
                   else f"for {s.get('epochs')} epochs")
                + f" on {s.get('train_size')} training pairs, {s.get('val_size')} validation and {s.get('val_size')} "
                f"test images of `{s.get('data')}` data with `{s.get('noise')}` noise (data seed {s.get('data_seed', 0)}). "
                "The first member started at the report's setting; the worse half of the population regularly took "
                "the better half's weights and perturbed its training knobs (`pbt_global.txt` lists each exchange), "
                "so a trial's configuration is the last it trained with.")
    return (f"Space `{s.get('space')}`, {s.get('searcher')} searcher + {s.get('scheduler')} scheduler, budget "
            f"`{s.get('budget')}`: {'up to ' if s.get('time_budget_min') else ''}{s.get('num_samples')} configurations × {s.get('seeds')} seed{'s' if s.get('seeds') != 1 else ''}, up to "
            f"{s.get('epochs')} epochs, {s.get('train_size')} training pairs, {s.get('val_size')} validation "
            f"and {s.get('val_size')} test images of `{s.get('data')}` data with `{s.get('noise')}` noise "
            f"(data seed {s.get('data_seed', 0)})."
            + (f" Time budget {s['time_budget_min']:g} minutes, the refit included: the search stopped proposing "
               f"configurations when its share ran out." if s.get("time_budget_min") and s.get("space") != "refit" else "")
            + (f" Every trial trained on {'clean images (Noise2Clean)' if s['target'] == 'clean' else 'noisy pairs (Noise2Noise)'}"
               " (--target)." if s.get("target") else ""))


def _splits_line(exp: ExperimentData) -> str:
    """How the data was split, and what each split was used for."""
    from n2n_models.data import DataError, split_text

    try:
        how = split_text(exp.spec.get("data", "photos"))
    except DataError:  # the data folder is gone: the split is still the source kind's
        how = "see the data source's documentation"
    choices = ("which member of the population took over which" if exp.spec.get("scheduler") == "pbt"
               else "which trials ASHA stopped, what TPE proposed")
    return (f"Splits: {how}. Validation PSNR made every choice ({choices}, each trial's best epoch, the best "
            "trial); test PSNR was only recorded.")


def _status_line(exp: ExperimentData) -> str:
    counts = exp.trials["status"].value_counts()
    parts = [f"{int(counts[s])} {s}" for s in STATUSES if s in counts]
    return f"{len(exp.trials)} trials: " + ", ".join(parts) + "."


def _table_md(table: Table, title: str) -> list[str]:
    display = table.display
    lines = [f"## {title}", "", table.caption, ""]
    if len(display) > MD_ROWS:
        lines += [table.to_markdown().rsplit("\n", len(display) - MD_ROWS)[0], "",
                  f"The {len(display) - MD_ROWS} other trials are in [{table.name}.csv]({table.name}.csv)."]
    else:
        lines.append(table.to_markdown())
    lines.append("")
    if table.notes:
        lines += [f"- {note}" for note in table.notes[:MD_ROWS]]
        if len(table.notes) > MD_ROWS:
            lines.append(f"- and {len(table.notes) - MD_ROWS} more trials like these (their status and error "
                         f"are in [{table.name}.csv]({table.name}.csv))")
        lines.append("")
    lines += [f"Files: [{table.name}.csv]({table.name}.csv) (full precision, one row per configuration), "
              f"[{table.name}.tex]({table.name}.tex).", ""]
    return lines


TITLES = {"table1_lr": "Table 1: learning rate", "table2_models": "Table 2: models", "search": "Search results",
          "n2n_vs_n2c": "Noise2Noise against Noise2Clean"}


def _shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (portable reports), else absolute."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else Path(rel).as_posix()


def _validation_data(exp: ExperimentData):
    """The experiment's validation images regenerated from its saved spec, or a reason why not."""
    from n2n_models.data import DataError, load_pairs

    s = exp.spec
    try:
        pairs = load_pairs(s.get("data", "photos"), s.get("noise", "pixelate"), train_size=int(s["train_size"]),
                           val_size=int(s["val_size"]), seed=int(s.get("data_seed", 0)), progress=_log)
    except (DataError, KeyError, ValueError, TypeError) as e:
        return None, f"the validation data could not be regenerated ({e})"
    return (pairs.val_noisy, pairs.val_clean), ""


def _refit_md(refit: ExperimentData) -> list[str]:
    """What the refit measured: validation and test PSNR over its replicas, each at its best
    validation epoch."""
    done = refit.trials.dropna(subset=["best_psnr_mean"])
    val, test = done["best_psnr_mean"], done["best_test_mean"]

    def pm(x):
        return mean_pm_std(x.mean(), x.std(), PSNR_DECIMALS)

    reached = sorted({int(e) for e in done["epochs"]}) or [0]
    epochs = f"{reached[0]}" if len(reached) == 1 else f"{reached[0]}-{reached[-1]}"
    until = " (until the time budget ended)" if refit.spec.get("time_budget_min") else ""
    if refit.spec.get("space") == FINISH_SPACE:
        return [f"The search's best member trained on alone (the finish, in `{REFIT_FOLDER}/`) from its best "
                f"checkpoint, with every trial slot's resources and its lr falling linearly to 0, to epoch {epochs}"
                f"{until}: validation {pm(val)} dB, test {pm(test)} dB at its best validation epoch."]
    return [f"The search's best configuration was trained again (the refit, in `{REFIT_FOLDER}/`) with "
            f"{len(done)} fresh seed{'s' if len(done) != 1 else ''}, {epochs} epochs{until}: "
            f"validation {pm(val)} dB, test {pm(test)} dB (mean ± std over the replicas, each at its best "
            "validation epoch). The model exported below is the refit's best replica by validation."]


def _best_test(exp: ExperimentData) -> float | None:
    """The test PSNR of the trial with the best validation PSNR, at that epoch."""
    if "best_test_mean" not in exp.trials or exp.trials["best_psnr_mean"].dropna().empty:
        return None
    return float(exp.trials.loc[exp.trials["best_psnr_mean"].idxmax(), "best_test_mean"])


def write_report(exp: ExperimentData, out: Path, samples: int = 32) -> list[Table]:
    """Write everything into `out`; returns the main tables. The files are made in a staging folder
    inside `out` and moved in when all are written, so an interrupted or failed report leaves the
    previous one as it was."""
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".report-{os.getpid()}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        tables = _write_report(exp, out, stage, samples)
        for path in sorted(stage.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return tables


def _write_report(exp: ExperimentData, out: Path, stage: Path, samples: int) -> list[Table]:
    """The report's files written into `stage`; the text names them as they will lie in `out`."""
    from analysis import figures
    from analysis.export import export_best, exported, load_refit
    from analysis.importance import USED_STATUSES, Skip, param_importances
    from n2n_models.export import load_model
    from n2n_models.metrics import psnr

    out.mkdir(parents=True, exist_ok=True)
    md = [f"# Report: {exp.name}", "", _experiment_line(exp), "", _status_line(exp)]
    noisy = exp.trials["noisy_psnr"].dropna() if "noisy_psnr" in exp.trials else []
    if len(noisy):
        md[-1] += f" Noisy validation inputs score {float(noisy.iloc[0]):.2f} dB (mean per-image PSNR)."
    md += ["", _splits_line(exp)]
    refit = load_refit(exp)
    refit_test = refit.trials["best_test_mean"].dropna() if refit is not None and "best_test_mean" in refit.trials else []
    finished = refit is not None and refit.spec.get("space") == FINISH_SPACE
    line = yardstick_line(read_yardsticks(exp.path / YARDSTICKS_FILE), *((refit_test.mean(), "the finish" if finished else "the refit (mean over its replicas)")
                          if len(refit_test) else (_best_test(exp), "the best trial (at its best validation epoch)")))
    if line:
        md += ["", line + "."]
    md.append("")
    md += provenance_md(exp)

    tables = main_tables(exp)
    for table in tables:
        table.write(stage)
        md += _table_md(table, TITLES.get(table.name, table.name))

    # -- best model -------------------------------------------------------------------------------
    md += ["## Best model", ""]
    source, best = exported(exp, refit)
    from_refit = source is refit
    model = info = None
    if from_refit or (finished and not refit.trials.dropna(subset=["best_psnr_mean"]).empty):
        md += _refit_md(refit) + [""]
    if finished and not from_refit:
        md += ["Its best validation epoch stayed below the member's it started from, so the model exported "
               "below is that member's.", ""]
    if best is None:
        md += ["No trial has a checkpoint with a finite validation PSNR: nothing to export.", ""]
    else:
        info = export_best(source, best, stage / BEST_MODEL_FILE)
        model, _ = load_model(stage / BEST_MODEL_FILE)
        shown = shown_knobs(info["config"])  # not, e.g., latent for TNet
        hp = ", ".join(f"{k} {fmt_hparam(k, v)}" for k, v in shown.items() if v is not None)
        spread = f" ± {best.config_psnr_std:.2f}" if best.config_psnr_std == best.config_psnr_std else ""
        which = ("Finish" if finished else "Refit replica") if from_refit else "Trial"
        md += [f"{which} `{best.trial_id}` ({hp}) reached the highest seed-mean validation PSNR, "
               f"{best.config_psnr_mean:.2f}{spread} dB, at epoch {best.epoch}. Its best replica (seed {best.seed}, "
               f"{best.val_psnr:.2f} dB) is exported as [best_model.pt](best_model.pt): model name, "
               "hyperparameters, weights, data and noise spec, seed, epoch, validation PSNR and provenance, "
               "loadable with `torch.load(path, weights_only=True)`.", ""]
        config = {k: v for k, v in shown.items() if k != "label"}
        config["label"] = f"best of {exp.name}"
        (stage / "best_config.json").write_text(json.dumps(config, indent=1) + "\n")
        md += ["Its configuration is in [best_config.json](best_config.json). To train it again with more "
               "seeds, beside other configurations (one JSON file each):", "", "```",
               f"python search/run.py --configs {_shown_path(out / 'best_config.json')} --configs OTHER.json "
               "--seeds 5", "```", ""]
    val = None
    if model is not None:
        val, why = _validation_data(exp)
        if val is None:
            md += [f"Figures of denoised images are left out: {why}.", ""]
        else:
            measured = psnr(figures.predict(model, val[0]), val[1].float() / 255)
            md += [f"Re-measured on the regenerated validation set: {measured:.2f} dB "
                   f"(recorded {best.val_psnr:.2f} dB).", ""]
        md += ["Denoise your own PNG/JPEG images of any size with it:", "", "```",
               f"python -m n2n_models.denoise --model {_shown_path(out / 'best_model.pt')} IMAGE... --out denoised/",
               "```", ""]

    # -- figures ------------------------------------------------------------------------------------
    md += ["## Figures", ""]
    if figures.learning_curves(exp, stage / "learning_curves.png"):
        md += ["### Learning curves", "", "![Validation PSNR per epoch](learning_curves.png)", "",
               "Validation PSNR per epoch, mean over seeds with a ± one standard deviation band; the dashed line "
               "is the noisy input.", ""]
    if figures.psnr_vs_hparams(exp, stage / "psnr_vs_hparams.png"):
        md += ["### PSNR against each hyperparameter", "", "![PSNR against hyperparameters](psnr_vs_hparams.png)",
               "", "Each point is a configuration (error bars: std over seeds), coloured by status; the dashed "
               "line is the noisy input.", ""]
    if model is not None and val is not None:
        figures.denoised_examples(model, val[0], val[1], stage / "denoised_examples.png")
        md += ["### Denoised examples", "", "![Noisy, denoised and clean validation images](denoised_examples.png)",
               "", "Noisy input (top), output of the best model (middle) and clean reference (bottom), as the "
               "report's Figure 2; titles give each image's PSNR.", ""]
        figures.smoothgrad_figure(model, val[0], val[1], stage / "smoothgrad.png", loss=info["training"]["loss"] or "l2",
                                  samples=samples)
        md += ["### SmoothGrad", "", "![SmoothGrad of the loss and the output](smoothgrad.png)", "",
               "As the report's Figure 3: input, output, clean image, and the magnitude (summed over colour "
               "channels) of the gradient of the loss and of the output with respect to the input, averaged "
               f"over {samples} copies of the input with Gaussian noise of 10% of its range. Bright pixels of "
               "the loss gradient are the ones whose value changes the error most; bright pixels of the "
               "output gradient are those the denoised image depends on.", ""]
    md += ["### Hyperparameter importance", ""]
    try:
        importances, evaluator, used = param_importances(exp)
        usable = int((exp.trials["status"].isin(USED_STATUSES) & exp.trials["best_psnr_mean"].notna()).sum())
    except Skip as e:
        md += [f"Not computed: {e}.", ""]
    else:
        table = importance_table(importances, evaluator)
        table.write(stage)
        figures.importance_figure(importances, evaluator, stage / "importance.png")
        md += ["![Hyperparameter importance](importance.png)", "", table.caption + f" Computed from {used} "
               "finished or ASHA-stopped trials (value: each one's best seed-mean PSNR)"
               + (f", drawn at random (seeded) from the search's {usable}" if usable > used else "")
               + "; with few trials it is a rough indication.", "", table.to_markdown(), "",
               "Files: [importance.csv](importance.csv), [importance.tex](importance.tex).", ""]
    (stage / "report.md").write_text("\n".join(md), encoding="utf-8")
    return tables


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.samples < 1:
            raise UsageError(f"--samples {args.samples}: must be at least 1")
        exp = load_experiment(args.experiment)
        out = Path(args.out).expanduser().resolve() if args.out else exp.path / REPORT_FOLDER
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    except (UsageError, ExperimentError) as e:
        print(f"analysis/report.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("analysis/report.py: interrupted", file=sys.stderr)
        return 130
    try:
        tables = write_report(exp, out, samples=args.samples)
    except KeyboardInterrupt:
        print(f"analysis/report.py: interrupted; {out} is as it was before", file=sys.stderr)
        return 130
    print(f"{exp.name}: {_status_line(exp)}")
    for note in provenance_notes(exp):
        print(note.replace("**", ""))
    for table in tables:
        shown = table.display.head(MD_ROWS)
        print(f"\n{TITLES.get(table.name, table.name)}\n{shown.to_string(index=False)}")
    print(f"\nReport: {out / 'report.md'}")
    if (out / BEST_MODEL_FILE).exists():
        print(f"Best model: {out / 'best_model.pt'} (python -m n2n_models.denoise --model "
              f"{out / 'best_model.pt'} IMAGE... --out DIR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
