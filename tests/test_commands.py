"""The installed commands (`[project.scripts]` of pyproject.toml) do what the three scripts do, from
any directory: `n2n-search` runs a search, `n2n-report` writes its report and exports the model,
`n2n-denoise` denoises an image with it."""
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # a real search in a subprocess

BIN = Path(sys.executable).parent


def command(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `pip install -e .` installs the project's commands")
    return path


def test_installed_commands_search_report_and_denoise_from_any_directory(tmp_path):
    elsewhere = tmp_path / "elsewhere"  # not the checkout: relative paths resolve against it
    elsewhere.mkdir()

    def run(*args):
        proc = subprocess.run([command(args[0]), *args[1:]], cwd=elsewhere, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
        return proc.stdout

    out = run("n2n-search", "--space", "tnet", "--budget", "smoke", "--data", "synthetic", "--train-size", "64",
              "--val-size", "16", "--epochs", "1", "--num-samples", "2", "--storage", "runs", "--name", "s", "--quiet")
    assert "Best:" in out and (elsewhere / "runs" / "s" / "n2n_experiment.json").is_file()
    assert "[n2n-search]" not in out, "--quiet: the summary without progress lines"

    run("n2n-report", "runs/s", "--samples", "2")
    model = elsewhere / "runs" / "s" / "report" / "best_model.pt"
    assert model.is_file()

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(elsewhere / "noisy.png")
    run("n2n-denoise", "--model", str(model.relative_to(elsewhere)), "noisy.png", "--out", "clean")
    [written] = list((elsewhere / "clean").iterdir())
    assert Image.open(written).size == (48, 40)

    # each command's version, and bad usage (one line on stderr, exit 2, as the scripts do), at once
    version = importlib.metadata.version("n2n-search")
    calls = [[name, "--version"] for name in ("n2n-search", "n2n-report", "n2n-denoise")]
    calls.append(["n2n-search", "--budget", "nope"])
    procs = [subprocess.Popen([command(c[0]), *c[1:]], cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in calls]
    outputs = [(p.communicate(timeout=120), p.returncode) for p in procs]
    for c, ((out, err), rc) in zip(calls[:3], outputs):
        assert rc == 0 and out.startswith(f"n2n-search {version} (torch "), (c, rc, out, err[-1500:])
    (_, err), rc = outputs[3]
    assert rc == 2 and err.strip().splitlines() == [
        "search/run.py: error: unknown budget 'nope'; choose one of smoke, quick, paper"]
