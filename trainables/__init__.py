"""Ray Tune trainables: a trial's config -> model -> epochs -> `tune.report` with checkpoints."""
from .n2n import make_trainable, train_n2n

__all__ = ["make_trainable", "train_n2n"]
