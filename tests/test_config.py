"""n2n_models.config, the one owner of the trial configuration: its knobs are exactly what the
models' constructors and the training spec take, and a configuration converts to the TrainSpec
and network the trainable builds."""
import inspect

import pytest

from n2n_models import MODELS, build_model
from n2n_models.config import (KNOBS, MODEL_HPARAMS, TRIAL_DEFAULTS, ConfigError, TrainSpec, check_config,
                               model_hparams, shown_knobs, spec_from_config)


def test_every_knob_a_model_takes_is_an_argument_of_its_constructor():
    assert set(MODEL_HPARAMS) == set(MODELS)
    for name, cls in MODELS.items():
        assert set(MODEL_HPARAMS[name]) <= set(inspect.signature(cls).parameters), name


def test_every_training_knob_is_a_train_spec_field_with_the_configuration_default():
    fields = {f.name: f.default for f in TrainSpec.__dataclass_fields__.values()}
    for knob in KNOBS:
        if not knob.models and knob.name not in ("label", "model"):
            assert fields[knob.name] == knob.default, knob.name
    assert TrainSpec().epochs == TRIAL_DEFAULTS["epochs"], "one default run length"


@pytest.mark.parametrize("model", list(MODELS))
def test_a_default_configuration_builds_the_model_the_trainable_trains(model):
    config = check_config({"model": model}, "test")
    spec = spec_from_config(config)
    assert spec.hparams == model_hparams(config)
    build_model(spec.model, **spec.hparams)  # every knob it passes is a constructor argument
    assert set(shown_knobs(config)) - {k.name for k in KNOBS if not k.models} == set(MODEL_HPARAMS[model])


@pytest.mark.parametrize("entry, message", [
    ({"lr": 0}, "lr must be a number in (0, 10), got 0"),
    ({"width": 2.5}, "width must be a positive integer"),
    ({"batchnorm": 1}, "batchnorm must be true or false, got 1"),
    ({"loss": "l3"}, "loss must be one of l2, l1, hdr, l0, got 'l3'"),
    ({"model": "resnet"}, "model must be one of tnet, unet, basenet, got 'resnet'"),
    ({"speed": 1}, "unknown key(s) speed; allowed: label, model, lr"),
    ([1], "expected a JSON object of hyperparameters, got list"),
])
def test_a_bad_configuration_is_one_line_that_names_the_key(entry, message):
    with pytest.raises(ConfigError) as caught:
        check_config(entry, "where")
    assert str(caught.value).startswith("where: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)
