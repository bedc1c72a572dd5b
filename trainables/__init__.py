"""Ray Tune trainables: a trial's config -> model -> epochs -> `tune.report` with checkpoints."""
from .n2n import TRIAL_DEFAULTS, make_trainable, train_n2n

__all__ = ["TRIAL_DEFAULTS", "make_trainable", "train_n2n"]
