"""The experiment file's name: `search/run.py` writes the experiment's description there, beside
its trials (search.experiment), and the analysis reads it back (analysis.load). Imports nothing."""

EXPERIMENT_FILE = "n2n_experiment.json"
