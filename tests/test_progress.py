"""Progress lines of a search: one per ended trial, and a line at least every `quiet` seconds
while trials run, even when no result arrives for a while (long epochs)."""
import time

import pytest
from ray import tune

from search.progress import ProgressLog


@pytest.mark.slow
def test_progress_lines_keep_coming_while_no_result_arrives(local_ray, tmp_path):
    def slow_trainable(config):  # defined here: Ray's workers cannot import the tests folder
        for epoch in range(2):
            time.sleep(1.5)
            tune.report({"val_psnr": 20.0 + epoch})

    lines = []
    stamped = lambda message: lines.append((time.time(), message))  # noqa: E731
    tuner = tune.Tuner(slow_trainable, param_space={"x": 1},
                       tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="quiet", verbose=0,
                                                 callbacks=[ProgressLog(1, stamped, every=100, quiet=0.5)]))
    tuner.fit()
    running = [t for t, m in lines if "1 running" in m]
    assert len(running) >= 3, lines  # 3 s of training, results only at 1.5 s and 3 s
    assert any("1/1 trials ended" in m for _, m in lines)
    gaps = [b - a for a, b in zip(running, running[1:])]
    assert max(gaps) < 1.5, f"a silent stretch of {max(gaps):.1f} s: {lines}"
