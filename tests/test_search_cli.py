"""Bad usage of `search/run.py` exits 2 with one line on stderr and no traceback, before any
work is done; every flag is tried with an invalid value. Also what a Ctrl-C before the search
starts prints."""
import glob
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import interrupt_when, run_cli
from search.cli import main

BAD_USAGE = {
    "unknown space": (["--space", "resnet"], "unknown space 'resnet'"),
    "unknown searcher": (["--searcher", "bayes"], "unknown searcher 'bayes'"),
    "unknown scheduler": (["--scheduler", "hyperband"], "unknown scheduler 'hyperband'"),
    "unknown budget": (["--budget", "huge"], "unknown budget 'huge'"),
    "zero samples": (["--num-samples", "0"], "--num-samples"),
    "seeds not a number": (["--seeds", "five"], "--seeds"),
    "zero epochs": (["--epochs", "0"], "--epochs"),
    "negative train size": (["--train-size", "-5"], "--train-size"),
    "val size not a number": (["--val-size", "1e3"], "--val-size"),
    "data seed not an integer": (["--data-seed", "x"], "--data-seed"),
    "search seed not an integer": (["--search-seed", "1.5"], "--search-seed"),
    "bad data spec": (["--data", "imagenet"], "imagenet"),
    "missing data folder": (["--data", "folder:/nonexistent/photos"], "/nonexistent/photos"),
    "missing epfl folder": (["--data", "epfl:/nonexistent/epfl"], "/nonexistent/epfl"),
    "unknown noise": (["--noise", "speckle"], "speckle"),
    "bad noise parameter": (["--noise", "gaussian:abc"], "gaussian"),
    "noise parameter out of range": (["--noise", "impulse:1.5"], "impulse"),
    "zero cpus per trial": (["--cpus-per-trial", "0"], "--cpus-per-trial"),
    "negative cpus per trial": (["--cpus-per-trial", "-1"], "--cpus-per-trial"),
    "fractional gpus above 1": (["--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5"),
    "gpus not a number": (["--gpus-per-trial", "half"], "--gpus-per-trial"),
    "zero concurrency": (["--max-concurrent", "0"], "--max-concurrent"),
    "name with a slash": (["--name", "a/b"], "--name"),
    "unknown fused mode": (["--fused", "maybe"], "--fused"),
    "unreachable address": (["--address", "127.0.0.1:1"], "cannot reach a Ray cluster"),
    "malformed address": (["--address", "nowhere"], "--address"),
    "unknown flag": (["--learning-rate", "1"], "--learning-rate"),
    "grid with a continuous space": (["--searcher", "grid"], "continuous"),
    "optuna on a fixed grid": (["--space", "lr-grid", "--searcher", "optuna"], "--searcher grid"),
    "zero refit seeds": (["--refit-seeds", "0"], "--refit-seeds"),
    "refit of a grid": (["--space", "lr-grid", "--refit-seeds", "3"], "grids and --configs have no refit"),
    "negative time budget": (["--time-budget", "-5"], "--time-budget"),
    "time budget not a number": (["--time-budget", "soon"], "--time-budget"),
    "time budget and none": (["--time-budget", "5", "--no-time-budget"], "--no-time-budget"),
    "unknown target": (["--target", "denoised"], "--target"),
    "pbt on a grid": (["--space", "lr-grid", "--scheduler", "pbt"], "fixed grid"),
    "pbt with tpe": (["--scheduler", "pbt", "--searcher", "optuna"], "--searcher random"),
    "pbt with a refit": (["--scheduler", "pbt", "--refit-seeds", "2"], "no refit"),
    "target of a space that sets it": (["--space", "n2n-vs-n2c", "--target", "clean"], "leave --target out"),
}

# --configs FILE: what the file holds -> expected words of the error
BAD_CONFIGS = {
    "not json": ("lr = 1e-3", "not JSON"),
    "empty list": ("[]", "no configuration"),
    "not an object": ("[1e-3]", "expected a JSON object"),
    "unknown key": ('{"learning_rate": 1e-3}', "unknown key(s) learning_rate"),
    "unknown model": ('{"model": "resnet"}', "model must be one of"),
    "unknown loss": ('{"loss": "l3"}', "loss must be one of"),
    "lr a string": ('{"lr": "fast"}', "lr must be"),
    "negative lr": ('{"lr": -1}', "lr must be"),
    "dropout of one": ('{"dropout": 1.0}', "dropout must be"),
    "fractional width": ('{"width": 2.5}', "width must be"),
    "batch norm as text": ('{"batchnorm": "yes"}', "batchnorm must be"),
    "batch of one": ('{"batch_size": 1}', "batch_size must be"),
    "label twice": ('[{"label": "a"}, {"label": "a", "lr": 1e-3}]', "used twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_every_bad_configs_file_exits_2_with_one_line(case, tmp_path, capsys):
    text, expected = BAD_CONFIGS[case]
    (tmp_path / "c.json").write_text(text)
    assert main(["--configs", str(tmp_path / "c.json"), "--budget", "smoke", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert expected in err[0] and "c.json" in err[0] or case == "label twice" and expected in err[0], err
    assert not (tmp_path / "runs").exists(), "bad usage writes nothing"


@pytest.mark.parametrize("args", [["--target", "clean"], ["--space", "n2n-vs-n2c"]])
def test_clean_targets_on_course_data_exit_2_before_any_work(args, tmp_path, capsys):
    """epfl: data has no clean training images, so nothing that trains on clean targets can run on it."""
    import torch

    course = tmp_path / "course"
    course.mkdir()
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    torch.save((images, images), course / "train_data.pkl")
    torch.save((images, images), course / "val_data.pkl")
    assert main(["--budget", "smoke", "--data", f"epfl:{course}", "--storage", str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epfl: data has none" in err[0], err
    assert not (tmp_path / "runs").exists()
    from search.cli import parse

    experiment, _ = parse(["--budget", "smoke", "--data", f"epfl:{course}", "--target", "noisy"])
    assert experiment.target == "noisy"  # noisy targets are what the course's files hold


def test_target_is_every_trials_constant_and_the_default_leaves_the_space_as_it_is(tmp_path):
    from search.cli import parse
    from search.spaces import possible_values
    from search.tuning import param_space

    clean, _ = parse(["--space", "tnet", "--target", "clean", "--storage", str(tmp_path)])
    assert param_space(clean)["target"] == "clean" and possible_values(param_space(clean), "target") == {"clean"}
    default, _ = parse(["--space", "tnet", "--storage", str(tmp_path)])
    assert "target" not in param_space(default) and possible_values(param_space(default), "target") == {"noisy"}
    grid, _ = parse(["--space", "n2n-vs-n2c", "--storage", str(tmp_path)])
    assert possible_values(param_space(grid), "target") == {"noisy", "clean"}


def test_amp_is_every_trials_constant_and_kept_with_the_experiment(tmp_path):
    from n2n_models.config import spec_from_config
    from search.cli import parse
    from search.experiment import Experiment
    from search.tuning import param_space

    amp, _ = parse(["--space", "unet", "--amp", "--storage", str(tmp_path), "--name", "amp"])
    assert param_space(amp)["amp"] is True and amp.trial_constants()["amp"] is True  # the refit's too
    assert spec_from_config({"model": "unet", **amp.trial_constants()}).amp
    amp.save()
    assert Experiment.load(amp.path).amp is True  # what --resume and the analysis read
    default, _ = parse(["--space", "unet", "--storage", str(tmp_path)])
    assert "amp" not in param_space(default) and not spec_from_config({"model": "unet", **default.trial_constants()}).amp


def test_configs_with_space_or_missing_file_exit_2(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"lr": 1e-3}')
    assert main(["--configs", str(tmp_path / "c.json"), "--space", "tnet"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(["--configs", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD_USAGE))
def test_every_bad_flag_exits_2_with_one_line(case, tmp_path, capsys):
    args, expected = BAD_USAGE[case]
    # defaults first, so that the flag under test (given later) wins
    assert main(["--budget", "smoke", "--data", "synthetic", "--storage", str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert expected in err[0]
    assert not (tmp_path / "runs").exists(), "bad usage writes nothing"


def test_storage_that_is_a_file_exits_2(tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    assert main(["--storage", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"


def test_the_command_exits_2_with_one_line_and_no_traceback(tmp_path):
    proc = run_cli("--space", "resnet", "--storage", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "search/run.py: error: unknown space 'resnet'; choose one of tnet, unet, basenet, lr-grid, models, n2n-vs-n2c"]


@pytest.mark.slow
def test_resume_of_a_missing_experiment_exits_2(tmp_path):
    proc = run_cli("--resume", "--name", "never-ran", "--storage", str(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no experiment to resume" in proc.stderr


def test_help_lists_the_spaces():
    proc = run_cli("--help", timeout=120)
    assert proc.returncode == 0
    for space in ("tnet", "unet", "basenet", "lr-grid", "models"):
        assert space in proc.stdout


@pytest.mark.slow
def test_a_trial_larger_than_the_local_machine_exits_2_instead_of_waiting(tmp_path):
    """The local Ray is this machine: a trial that asks for more CPUs than it has could never start
    (Tune would wait for ever). Checked once Ray is up, before anything is written."""
    proc = run_cli("--budget", "smoke", "--data", "synthetic", "--cpus-per-trial", "4096",
                   "--storage", str(tmp_path / "runs"), timeout=180)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("search/run.py: error: a trial asks for 4096 CPU") and "--cpus-per-trial" in last, last
    assert "--gpus-per-trial" not in last, "only the flag that does not fit is named"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists(), "nothing is written"


def test_a_trial_needing_more_gpus_than_the_local_ray_has_exits_2(local_ray, tmp_path, capsys):
    gpus = int(local_ray.cluster_resources()["GPU"])
    assert main(["--budget", "smoke", "--data", "synthetic", "--gpus-per-trial", str(gpus + 1),
                 "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{gpus} GPUs" in err[0] and "--gpus-per-trial" in err[0], err
    assert not (tmp_path / "runs").exists()
    # what fits is accepted: the same Ray runs a trial that asks for all of its GPUs
    from search.ray_session import check_trial_fits
    check_trial_fits(1, gpus, joined=False, max_concurrent=None)


@pytest.mark.slow
def test_a_trial_no_node_can_hold_on_a_cluster_without_autoscaler_exits_2_within_a_minute(tmp_path):
    """A cluster started by hand (as `ray start --head --num-cpus=0`; here Ray's own Cluster helper)
    whose only node has no CPU: no autoscaler can add a node, so Tune would wait for ever. The search
    joins it with --address and exits 2 with one line, before anything is written."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # the session's local Ray from other tests
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        home = tmp_path / "home"  # no ~/ray_bootstrap_config.yaml here: this cluster was not made by `ray up`
        home.mkdir()
        token = Path.home() / ".ray" / "auth_token"
        env = {"HOME": str(home), **({"RAY_AUTH_TOKEN_PATH": str(token)} if token.exists() else {})}
        began = time.time()
        proc = run_cli("--budget", "smoke", "--data", "synthetic", "--train-size", "16", "--val-size", "8",
                       "--address", cluster.address, "--storage", str(tmp_path / "runs"), timeout=120, env=env)
        took = time.time() - began
    finally:
        cluster.shutdown()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("search/run.py: error: a trial asks for 1 CPU and 0 GPU, but no node of this cluster "
                             "has that (the largest has 0 CPUs and 0 GPUs) and nothing can add one (no autoscaler"), err
    assert "--cpus-per-trial" not in err[0], "no node has a CPU: lowering the trial's CPUs cannot help"
    assert "--num-cpus=0" in err[0], "the message names the likely cause"
    assert took < 60, f"{took:.0f} s"
    print(f"exit 2 after {took:.1f} s")
    assert not (tmp_path / "runs").exists(), "nothing is written"


@pytest.mark.slow
def test_ctrl_c_while_loading_data_says_nothing_was_saved(tmp_path):
    """A Ctrl-C before Tune has saved anything (here: the driver blocked reading an image that is
    a FIFO) exits 130 with one line that does not send the user to --resume, which would fail."""
    photos = tmp_path / "photos"
    photos.mkdir()
    os.mkfifo(photos / "a.png")
    writer, opened = [], []

    def reading(pid):
        """The driver has the FIFO open once a non-blocking writer can open it; then wait until it
        blocks reading (the kernel's wait channel says so; 3 s where it is hidden): a SIGINT in
        the moment between its open() and its read() is one CPython notices only after the read,
        which never ends."""
        if not writer:
            try:
                writer.append(os.open(photos / "a.png", os.O_WRONLY | os.O_NONBLOCK))
                opened.append(time.time())
            except OSError:
                return False
        try:
            wchan = Path(f"/proc/{pid}/wchan").read_text()
        except OSError:
            wchan = ""
        return "pipe_read" in wchan or time.time() - opened[0] > 3

    rc, out, err = interrupt_when(["search/run.py", "--budget", "smoke", "--data", f"folder:{photos}",
                                   "--storage", str(tmp_path / "runs"), "--name", "x"], reading)
    for fd in writer:
        os.close(fd)
    assert rc == 130, out[-2000:] + err[-2000:]
    assert err.strip().splitlines()[-1] == ("search/run.py: interrupted before the search started; "
                                            "nothing was saved, so there is nothing to resume"), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "x").exists()


@pytest.mark.slow
def test_ctrl_c_while_ray_starts_leaves_no_ray_process(tmp_path):
    """SIGINT as soon as the raylet of the driver's Ray has started its agents, while `ray.init` is
    still waiting for them: the command exits 130 and no process holds a file of that session for
    long (an interrupted `ray.init` used to leave the agents running for about a minute)."""
    root = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray"
    sessions = []

    def ray_starting(pid):
        sessions[:] = glob.glob(f"{root}/session_*_{pid}")
        return bool(sessions) and os.path.exists(f"{sessions[0]}/logs/runtime_env_agent.log")

    rc, out, err = interrupt_when(["search/run.py", "--budget", "smoke", "--data", "synthetic", "--storage", str(tmp_path / "runs"),
                                   "--name", "x"], ray_starting)
    assert rc == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in err
    deadline = time.time() + 10
    while (holders := processes_using(sessions[0])) and time.time() < deadline:
        time.sleep(0.5)
    for pid in holders:  # the test started them: end them before failing
        os.kill(pid, signal.SIGKILL)
    assert not holders, f"processes still hold files of {sessions[0]}: {list(holders.values())}"


def processes_using(folder: str) -> dict[int, str]:
    """{pid: command line} of the processes with a file open under `folder`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd).startswith(folder) for fd in (proc / "fd").iterdir()):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_an_interrupted_start_leaves_a_name_that_can_be_used_again(tmp_path):
    """Interrupted before Tune's first experiment state (the experiment file written, maybe Tune's
    tuner.pkl too): the folder is removed when that is all it holds; with anything else in it, it
    is kept. Either way the name is free again, and --resume of it exits 2 saying why instead of
    failing inside Tune's searcher. After --resume the hint is to resume again."""
    from search.cli import parse
    from search.experiment import EXPERIMENT_FILE
    from search.experiment_folder import experiment_exists, interrupted_hint as _interrupted_hint

    experiment, _ = parse(["--space", "tnet", "--name", "x", "--storage", str(tmp_path)])
    folder = tmp_path / "x"
    experiment.save()
    (folder / "tuner.pkl").write_bytes(b"written by Tune before its first experiment state")
    assert not experiment_exists(experiment.path)
    assert "nothing to resume" in _interrupted_hint(experiment, resume=False)
    assert not folder.exists()

    experiment.save()
    (folder / "tuner.pkl").write_bytes(b"written by Tune before its first experiment state")
    (folder / "trial_1").mkdir()
    _interrupted_hint(experiment, resume=False)
    assert (folder / EXPERIMENT_FILE).exists() and (folder / "trial_1").is_dir()
    assert not experiment_exists(experiment.path), "the same --name may start again"
    proc = run_cli("--resume", "--name", "x", "--storage", str(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"search/run.py: error: --resume: {folder} was interrupted before its search started, so there is nothing "
        "to resume; run the command again without --resume"]

    hint = _interrupted_hint(experiment, resume=True)
    assert f"--resume --name x --storage {tmp_path}" in hint and (folder / EXPERIMENT_FILE).exists()


def test_searches_refit_by_default_grids_never(tmp_path):
    from search.cli import parse

    storage = ["--storage", str(tmp_path)]
    # quick, the default budget: a time budget, so Population Based Training, which ends with its
    # finish (the best member trained on alone) and no refit; TPE + ASHA, when asked for, refits its winner
    default = parse(storage)[0]
    assert (default.scheduler, default.searcher, default.refit_seeds, default.num_samples) == ("pbt", "random", 0, 0)
    assert default.finish and not parse(["--no-refit", *storage])[0].finish
    assert not parse(["--scheduler", "pbt", "--no-time-budget", *storage])[0].finish  # the lr falls by the clock
    assert not parse(["--scheduler", "asha", *storage])[0].finish
    assert parse(["--scheduler", "asha", *storage])[0].refit_seeds == 2
    for asked in (["--searcher", "optuna"], ["--num-samples", "8"], ["--refit-seeds", "2"], ["--no-time-budget"],
                  ["--budget", "smoke"], ["--budget", "paper"]):
        chosen = parse([*asked, *storage])[0]
        assert (chosen.scheduler, chosen.searcher) == ("asha", "optuna"), asked
    assert parse(["--budget", "paper", *storage])[0].refit_seeds == 5
    assert parse(["--budget", "smoke", *storage])[0].refit_seeds == 0
    assert parse(["--no-refit", *storage])[0].refit_seeds == 0
    assert parse(["--refit-seeds", "4", "--budget", "smoke", *storage])[0].refit_seeds == 4
    assert parse(["--space", "lr-grid", *storage])[0].refit_seeds == 0
    assert parse(["--space", "lr-grid", "--no-refit", *storage])[0].refit_seeds == 0  # true of grids anyway
    # searches run for the budget's minutes unless told otherwise; grids and --configs run to their end
    from search.budgets import BUDGETS
    from n2n_models.config import OPEN_EPOCHS
    from search.refit import refit_experiment

    quick = parse(storage)[0]
    assert BUDGETS["quick"].minutes and quick.time_budget_min == BUDGETS["quick"].minutes
    assert parse(["--budget", "smoke", *storage])[0].time_budget_min is None
    assert parse(["--no-time-budget", *storage])[0].time_budget_min is None
    grid = parse(["--space", "lr-grid", *storage])[0]
    assert grid.time_budget_min is None
    assert (grid.train_size, grid.epochs) == (BUDGETS["quick"].grid_train_size, BUDGETS["quick"].grid_epochs)
    assert (quick.train_size, quick.epochs) == (BUDGETS["quick"].train_size, BUDGETS["quick"].epochs)
    config = {"model": "tnet", "lr": 1e-3, "loss": "l2", "batchnorm": False, "dropout": 0.0, "width": 32,
              "batch_size": 32}
    # the refit trains until the time is spent, under a time budget; else the search's epochs
    assert refit_experiment(quick, config).epochs == OPEN_EPOCHS > quick.epochs
    paper = parse(["--budget", "paper", *storage])[0]
    assert paper.time_budget_min is None and refit_experiment(paper, config).epochs == paper.epochs
    experiment = parse(["--time-budget", "30", "--scheduler", "asha", *storage])[0]
    assert experiment.time_budget_min == 30.0
    from search.finish import FINISH_SHARE
    from search.tuning import REFIT_SHARE, search_seconds

    assert search_seconds(experiment) == 30 * 60 * (1 - REFIT_SHARE)  # the rest is the refit's
    assert search_seconds(parse(["--time-budget", "30", "--scheduler", "asha", "--no-refit", *storage])[0]) == 30 * 60
    assert search_seconds(parse(["--time-budget", "30", *storage])[0]) == 30 * 60 * (1 - FINISH_SHARE)  # PBT, then its finish
    assert search_seconds(parse(["--time-budget", "30", "--no-refit", *storage])[0]) == 30 * 60  # PBT without it: all


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a CUDA GPU bfloat16 is in hardware whatever the CPU")
def test_amp_warns_only_where_the_cpu_lists_no_bfloat16_units(tmp_path):
    from search.cli import bfloat16_in_hardware

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
    (tmp_path / "avx2").write_text(avx2)
    (tmp_path / "amx").write_text(avx2.replace("fma", "fma avx512f avx512_bf16 amx_bf16 amx_tile"))
    (tmp_path / "zen4").write_text(avx2.replace("fma", "fma avx512f avx512_bf16"))
    unlimited = {"capability": "AVX512", "isa": ""}
    assert not bfloat16_in_hardware(str(tmp_path / "avx2"), **unlimited)
    assert bfloat16_in_hardware(str(tmp_path / "amx"), **unlimited)
    assert bfloat16_in_hardware(str(tmp_path / "zen4"), **unlimited)
    assert bfloat16_in_hardware(str(tmp_path / "absent"), **unlimited)  # no evidence, no warning
    # the units are there but the environment keeps torch from them (as in the README's AVX2 test run)
    assert not bfloat16_in_hardware(str(tmp_path / "amx"), capability="AVX2", isa="")
    assert not bfloat16_in_hardware(str(tmp_path / "amx"), capability="AVX512", isa="AVX2")
    assert bfloat16_in_hardware(str(tmp_path / "amx"), capability="AVX512", isa="AVX512_CORE_AMX")
