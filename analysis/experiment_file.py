"""The layout of an experiment folder that `search/run.py` writes and the analysis reads: the
experiment file (the experiment's description, search.experiment -> analysis.load), the yardsticks
file (the noisy input's and the classical denoisers' test PSNR, n2n_models.classical) and the
refit's folder (the best configuration trained again, an experiment folder of its own,
search.refit; or, after a Population Based Training search under a time budget, its finish: the best
member trained on, search.finish, marked by FINISH_SPACE as its experiment's space), the Optuna study of a TPE search (Optuna's journal file, study named as the
experiment, search.searchers.write_study) and the report's folder with the exported best model
(analysis.report, search.api). Imports nothing."""

EXPERIMENT_FILE = "n2n_experiment.json"
YARDSTICKS_FILE = "yardsticks.json"
REFIT_FOLDER = "refit"
FINISH_SPACE = "finish"
OPTUNA_STUDY_FILE = "optuna_study.log"
REPORT_FOLDER = "report"
BEST_MODEL_FILE = "best_model.pt"
