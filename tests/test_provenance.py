"""Provenance: a finished search records its project version and commit, library versions, machine,
command line and data cache key beside the experiment, in each trial's folder, in best_model.pt
(loadable with weights_only=True), in the report's header and in `denoise --info`; a resume under
a changed version adds a second record and the report says so; trials on different machines get a
one-line warning; nothing outside the named environment variables is recorded."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_cli

from n2n_models import build_model
from n2n_models.provenance import (
    ENV_VARS,
    FIELDS,
    MODEL_KEY,
    SEARCH_FILE,
    TRIAL_PREFIX,
    VERSION_OVERRIDE,
    changes,
    make_record,
    mixed,
    read_search_records,
    read_trial_records,
    record_search,
    record_trial,
)

SMOKE = ["--space", "tnet", "--budget", "smoke", "--data", "synthetic", "--train-size", "64", "--val-size", "16",
         "--epochs", "1", "--seeds", "1", "--num-samples", "2", "--scheduler", "fifo"]
PATCHED = "0.1.0+patched"


def git_head():
    """The repository's commit, or None where the tests run outside a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=20,
                              check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# -- the record itself -------------------------------------------------------------------------
def test_a_record_has_every_field_and_of_the_environment_only_the_named_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-in-env")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    record = make_record("search", command=["search/run.py", "--storage", "s3://AKIA:sekrit-in-uri@bucket/runs"],
                         data_cache="synthetic_pixelate_64+16_seed0_0123456789abcdef.pt")
    assert list(record) == list(FIELDS)
    assert set(record["env"]) == set(ENV_VARS) and record["env"]["OMP_NUM_THREADS"] == "3"
    text = json.dumps(record)
    assert "sekrit" not in text and "AWS_SECRET" not in text, "no environment dump, no URI password"
    assert record["command"][-1] == "s3://***@bucket/runs"
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == torch.get_num_threads() and record["torch"] == torch.__version__
    assert record["git_commit"] == git_head() and (record["git_dirty"] is None) == (git_head() is None)
    assert json.loads(text) == record, "plain JSON values only"
    torch.save({"provenance": record}, tmp_path / "r.pt")
    assert torch.load(tmp_path / "r.pt", weights_only=True)["provenance"] == record


def test_the_recorded_project_version_is_the_package_version_unless_overridden(monkeypatch):
    import importlib.metadata

    monkeypatch.delenv(VERSION_OVERRIDE, raising=False)
    assert make_record("search")["project_version"] == importlib.metadata.version("n2n-search")
    monkeypatch.setenv(VERSION_OVERRIDE, PATCHED)
    assert make_record("search")["project_version"] == PATCHED


def test_records_compare_on_what_made_the_results_not_on_when_or_how_they_were_asked_for():
    a = make_record("search", command=["a"])
    b = {**a, "command": ["b", "--resume"], "made_at": "later", "role": "trial"}
    assert changes(a, b) == [] and mixed([a, b]) == {}
    other_isa = "AVX2" if a["cpu_capability"] != "AVX2" else "AVX512"
    c = {**a, "cpu_capability": other_isa, "torch": "9.9"}
    assert changes(a, c) == ["torch", "cpu_capability"]
    assert mixed([a, b, c]) == {"torch": [a["torch"], "9.9"], "cpu_capability": [a["cpu_capability"], other_isa]}
    assert mixed([a, {**a, "threads": 7, "env": {}}]) == {}, "a trial's share of a node is not a different machine"


def test_a_search_adds_a_record_only_when_something_changed(tmp_path, monkeypatch):
    monkeypatch.delenv(VERSION_OVERRIDE, raising=False)
    said = []
    assert len(record_search(str(tmp_path), "key.pt", said.append)) == 1
    assert len(record_search(str(tmp_path), "key.pt", said.append)) == 1 and said == []
    monkeypatch.setenv(VERSION_OVERRIDE, PATCHED)
    records = record_search(str(tmp_path), "key.pt", said.append)
    assert [r["project_version"] for r in records][1] == PATCHED and records == read_search_records(str(tmp_path))
    assert len(said) == 1 and "project_version" in said[0]


def test_a_trial_writes_one_file_per_distinct_record(tmp_path):
    record_trial(tmp_path)
    record_trial(tmp_path)
    (record,) = read_trial_records(tmp_path)
    assert record["role"] == "trial" and len(list(tmp_path.glob(f"{TRIAL_PREFIX}*.json"))) == 1


def test_a_start_interrupted_before_tune_saved_anything_still_leaves_no_folder(tmp_path):
    from search.cli import parse
    from search.experiment_folder import interrupted_hint

    experiment, _ = parse(["--space", "tnet", "--name", "x", "--storage", str(tmp_path)])
    experiment.save()
    record_search(experiment.path, None)
    assert "nothing to resume" in interrupted_hint(experiment, resume=False)
    assert not (tmp_path / "x").exists(), "the provenance record is part of what a start writes"


# -- denoise --info ------------------------------------------------------------------------------
def test_denoise_info_prints_the_model_files_description_and_bad_usage_exits_2(tmp_path, capsys):
    from n2n_models.denoise import main
    from n2n_models.export import save_model

    path = tmp_path / "best_model.pt"
    provenance = {"search": [make_record("search")], "trial": []}
    save_model(path, "tnet", {}, build_model("tnet").state_dict(), seed=0, **{MODEL_KEY: provenance})
    assert torch.load(path, weights_only=True)[MODEL_KEY] == provenance
    assert main(["--model", str(path), "--info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "tnet" and info[MODEL_KEY] == provenance and "state_dict" not in info
    for argv in (["--model", str(tmp_path / "missing.pt"), "--info"], ["--model", str(path), "--info", "x.png"],
                 ["--model", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("n2n_models.denoise: error: "), err


# -- a real search, its report and a resume -------------------------------------------------------
@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished smoke search (two trials of one epoch) and its report."""
    from analysis.report import main as report_main

    storage = tmp_path_factory.mktemp("provenance")
    proc = run_cli(*SMOKE, "--storage", str(storage), "--name", "prov", env={VERSION_OVERRIDE: ""})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    experiment = storage / "prov"
    assert report_main([str(experiment), "--samples", "2"]) == 0
    return experiment


@pytest.mark.slow
def test_a_finished_search_records_its_provenance_beside_it_in_best_model_pt_and_in_the_report(searched):
    (record,) = json.loads((searched / SEARCH_FILE).read_text())[:1]
    assert list(record) == list(FIELDS) and record["role"] == "search"
    assert record["command"][0].endswith("run.py") and record["command"][1:] == [
        *SMOKE, "--storage", str(searched.parent), "--name", "prov"]
    assert record["git_commit"] == git_head() and record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["data_cache"].startswith("synthetic_") and record["data_cache"].endswith(".pt")
    from n2n_models.data import default_cache_dir

    assert (default_cache_dir() / record["data_cache"]).is_file(), "the key names the data's cache file"
    trials = sorted(searched.glob("trial_*"))
    assert len(trials) == 2 and all(read_trial_records(t) for t in trials), "each trial recorded its machine"
    trial_record = read_trial_records(trials[0])[0]
    assert list(trial_record) == list(FIELDS) and trial_record["role"] == "trial"
    assert trial_record["cpu_capability"] == record["cpu_capability"]

    model = torch.load(searched / "report" / "best_model.pt", weights_only=True)
    assert model[MODEL_KEY]["search"][0] == record
    assert model[MODEL_KEY]["trial"] == read_trial_records(searched / model["checkpoint"].split("/")[0])

    report = (searched / "report" / "report.md").read_text()
    header = report.split("## Provenance")[1].split("\n## ")[0]
    for label in FIELDS.values():
        assert f"| {label} |" in header, label
    for key in ("project_version", "git_commit", "python", "torch", "ray", "optuna", "numpy", "cpu_capability",
                "data_cache"):
        assert str(record[key] or "—") in header, key
    assert f"| {record['threads']} |" in header[header.index("torch threads"):]
    assert "Resumed under changed provenance" not in report and "Warning:" not in report

    info = subprocess.run([sys.executable, "-m", "n2n_models.denoise", "--model",
                           str(searched / "report" / "best_model.pt"), "--info"],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)[MODEL_KEY] == model[MODEL_KEY]


@pytest.mark.slow
def test_a_resume_under_a_changed_version_keeps_both_records_and_the_report_says_so(searched, tmp_path, capsys):
    from analysis.report import main as report_main

    first = read_search_records(str(searched))[0]
    proc = run_cli(*SMOKE, "--storage", str(searched.parent), "--name", "prov", "--resume",
                   env={VERSION_OVERRIDE: PATCHED})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "provenance changed since the last run (project_version)" in proc.stdout + proc.stderr
    records = read_search_records(str(searched))
    assert len(records) == 2 and records[0] == first and records[1]["project_version"] == PATCHED
    assert records[1]["command"][-1] == "--resume"

    # one trial's record as if it had been trained on a machine with another instruction set
    experiment = tmp_path / "prov"
    shutil.copytree(searched, experiment)
    trial = min(experiment.glob("trial_*"))
    mine = read_trial_records(trial)[0]
    other_isa = "AVX2" if mine["cpu_capability"] != "AVX2" else "AVX512"
    other = {**mine, "cpu_capability": other_isa, "made_at": "9999"}
    (trial / f"{TRIAL_PREFIX}other.json").write_text(json.dumps(other))
    assert report_main([str(experiment), "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    report = (experiment / "report" / "report.md").read_text()
    header = report.split("## Provenance")[1].split("\n## ")[0]
    assert "| record 1 | record 2 |" in header
    resumed = [line for line in header.splitlines() if line.startswith("Resumed under changed provenance")]
    expected = (f"Resumed under changed provenance: record 2 differs from record 1 in n2n-search version "
                f"{first['project_version']} → {PATCHED}.")
    assert resumed == [expected]
    (warning,) = [line for line in header.splitlines() if line.startswith("**Warning:**")]
    assert f"(CPU instruction set {first['cpu_capability']} vs {other_isa})" in warning
    assert resumed[0] in printed and warning.replace("**", "") in printed
    model = torch.load(experiment / "report" / "best_model.pt", weights_only=True)
    assert model[MODEL_KEY]["search"] == records
