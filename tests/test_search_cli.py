"""Bad usage of `search/run.py` exits 2 with one line on stderr and no traceback."""
import pytest

from conftest import run_cli

BAD_USAGE = {
    "unknown space": (["--space", "resnet"], "unknown space 'resnet'"),
    "unknown searcher": (["--searcher", "bayes"], "unknown searcher 'bayes'"),
    "unknown scheduler": (["--scheduler", "pbt"], "unknown scheduler 'pbt'"),
    "unknown budget": (["--budget", "huge"], "unknown budget 'huge'"),
    "bad noise spec": (["--noise", "gaussian:abc"], "gaussian"),
    "unknown noise": (["--noise", "speckle"], "speckle"),
    "bad data spec": (["--data", "imagenet"], "imagenet"),
    "missing data folder": (["--data", "folder:/nonexistent/photos"], "/nonexistent/photos"),
    "fractional gpus above 1": (["--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5"),
    "negative cpus": (["--cpus-per-trial", "-1"], "--cpus-per-trial"),
    "zero epochs": (["--epochs", "0"], "--epochs"),
    "grid with a continuous space": (["--searcher", "grid"], "continuous"),
    "optuna on a fixed grid": (["--space", "lr-grid", "--searcher", "optuna"], "--searcher grid"),
}


@pytest.mark.parametrize("case", sorted(BAD_USAGE))
def test_bad_usage_exits_2_with_one_line(case, tmp_path):
    args, expected = BAD_USAGE[case]
    proc = run_cli(*args, "--storage", str(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert expected in lines[0]
    assert not any(tmp_path.iterdir()), "bad usage must not write anything"


def test_resume_of_a_missing_experiment_exits_2(tmp_path):
    proc = run_cli("--resume", "--name", "never-ran", "--storage", str(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no experiment to resume" in proc.stderr


def test_help_lists_the_spaces():
    proc = run_cli("--help", timeout=120)
    assert proc.returncode == 0
    for space in ("tnet", "unet", "basenet", "lr-grid", "models"):
        assert space in proc.stdout
