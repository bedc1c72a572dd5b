"""The training loop: it denoises the built-in data, fused replicas equal separate runs, and a
checkpoint restores training exactly."""
import dataclasses
import io

import pytest
import torch

from n2n_models.data import load_pairs
from n2n_models.metrics import psnr_per_image, psnr_uint8
from n2n_models.train import ReplicaTrainer, TrainSpec, eval_batch_size

numeric = pytest.mark.numeric  # comparisons of floating-point results: run again on the AVX2 code paths by .ci/run


@pytest.fixture(scope="module")
def synthetic():
    return load_pairs("synthetic", "pixelate", train_size=320, val_size=32, seed=3)


@pytest.mark.slow
def test_tnet_learns_to_denoise_the_default_data_in_three_epochs(tmp_path):
    torch.set_num_threads(2)
    pairs = load_pairs("photos", "pixelate", train_size=2000, val_size=200, seed=0, cache_dir=tmp_path)
    noisy = psnr_uint8(pairs.val_noisy, pairs.val_clean)
    trainer = ReplicaTrainer(TrainSpec("tnet", lr=3e-3, batch_size=16, epochs=3, seeds=(0,)))
    for _ in range(3):
        trainer.train_epoch(pairs.train_a, pairs.train_b)
    denoised = trainer.evaluate(pairs.val_noisy, pairs.val_clean).item()
    assert denoised >= noisy + 1.0, f"validation PSNR {denoised:.2f} dB vs noisy input {noisy:.2f} dB"


@pytest.fixture
def float64():
    """Models, optimiser state and images in float64 for one test."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


# In float64 a step's rounding errors (about 1e-16 of each value) stay far below anything training
# amplifies: Adam rescales a gradient to a step of up to lr once it is larger than Adam's epsilon
# (1e-8), which float32 rounding (1e-7 of a value) reaches where batch norm cancels a gradient
# exactly (TNet's enc3.2 affine parameters: cat3 normalises away what they change), but float64's
# does not. So float64 runs can be held to 1e-9 on every batch and state value, on any CPU, while
# float32 runs that differ only in summation order end 4% apart in cat3.running_var after 10 such
# steps (AVX2 against AVX-512). A real bug is far larger: the fused batch norm's running variance
# taken without Bessel's correction is off by 7e-7 after 10 steps, epsilon 1e-4 for 1e-5 moves a
# loss by 8e-4, a dropped bias by 2e-2, and replicas' swapped weights by far more.
FLOAT64_TOLERANCE = 1e-9


@numeric
@pytest.mark.parametrize("model, hparams", [("tnet", {}), ("tnet", {"batchnorm": True}),
                                            ("tnet", {"residual_output": True}),
                                            ("unet", {"width": 8, "residual_output": True})])
def test_fused_replicas_train_the_same_numbers_as_separate_runs(synthetic, float64, model, hparams):
    spec = TrainSpec(model, hparams=hparams, lr=1e-3, batch_size=32, epochs=2, seeds=(0, 1, 2))
    fused = ReplicaTrainer(spec, fused=True)
    alone = [ReplicaTrainer(dataclasses.replace(spec, seeds=(s,)), fused=False) for s in spec.seeds]
    a, b = synthetic.train_a[:96], synthetic.train_b[:96]  # 3 steps an epoch
    for _ in range(2):
        fused_loss = fused.train_epoch(a, b)
        alone_loss = torch.cat([t.train_epoch(a, b) for t in alone])
        assert fused_loss.dtype == torch.float64
        torch.testing.assert_close(fused_loss, alone_loss, atol=FLOAT64_TOLERANCE, rtol=0)
    assert fused_loss.unique().numel() == 3, "replicas differ in initialisation and data order"
    fused_weights = fused.replica_state_dicts()
    for i, trainer in enumerate(alone):
        for name, value in trainer.replica_state_dicts()[0].items():
            torch.testing.assert_close(fused_weights[i][name], value, atol=FLOAT64_TOLERANCE, rtol=0,
                                       msg=lambda m: f"replica {i}, {name}: {m}")


@numeric
def test_fused_replicas_support_dropout(synthetic):
    spec = TrainSpec("tnet", hparams={"dropout": 0.2}, lr=1e-3, batch_size=64, epochs=1, seeds=(0, 1))
    trainer = ReplicaTrainer(spec, fused=True)
    losses = trainer.train_epoch(synthetic.train_a, synthetic.train_b)
    assert torch.isfinite(losses).all()
    out = trainer.predict(synthetic.val_noisy[:4])
    assert torch.equal(out, trainer.predict(synthetic.val_noisy[:4])), "no dropout at evaluation"


@numeric
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpoint_restores_training_exactly(synthetic, fused, dropout):
    """Resumed from a checkpoint, training goes on with the same numbers; with dropout too (the
    masks come from the random generator's state, which the checkpoint keeps)."""
    spec = TrainSpec("tnet", hparams={"dropout": dropout}, lr=1e-3, batch_size=32, epochs=3, seeds=(0, 1))
    straight = ReplicaTrainer(spec, fused=fused)
    for _ in range(3):
        expected = straight.train_epoch(synthetic.train_a, synthetic.train_b)
    first = ReplicaTrainer(spec, fused=fused)
    first.train_epoch(synthetic.train_a, synthetic.train_b)
    state = first.state_dict()
    torch.manual_seed(12345)  # whatever this process drew in between
    resumed = ReplicaTrainer(spec, fused=fused)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    for _ in range(2):
        got = resumed.train_epoch(synthetic.train_a, synthetic.train_b)
    assert torch.allclose(got, expected, atol=1e-6)


@numeric
@pytest.mark.slow
@pytest.mark.parametrize("written_fused", [True, False])
def test_a_checkpoint_written_fused_continues_sequential_and_the_reverse(synthetic, float64, written_fused):
    """The checkpoint's layout does not depend on fusion: one written by a fused trainer resumes in a
    sequential one (and the reverse) and trains on the uninterrupted trainer's losses and weights,
    Adam's moments included (batch norm: running statistics and their counts too)."""
    spec = TrainSpec("tnet", hparams={"batchnorm": True}, lr=1e-3, batch_size=32, epochs=3, seeds=(0, 1))
    a, b = synthetic.train_a[:96], synthetic.train_b[:96]  # 3 steps an epoch
    straight = ReplicaTrainer(spec, fused=written_fused)
    expected = [straight.train_epoch(a, b) for _ in range(3)]
    first = ReplicaTrainer(spec, fused=written_fused)
    first.train_epoch(a, b)
    saved = io.BytesIO()  # through bytes, as a checkpoint file
    torch.save(first.state_dict(), saved)
    state = torch.load(io.BytesIO(saved.getvalue()), weights_only=True)
    assert set(state) == {"epoch", "replicas", "optimizers", "rng", "loss"} and len(state["optimizers"]) == 2
    resumed = ReplicaTrainer(spec, fused=not written_fused)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    for epoch in (1, 2):
        torch.testing.assert_close(resumed.train_epoch(a, b), expected[epoch], atol=FLOAT64_TOLERANCE, rtol=0)
    for i, (got, want) in enumerate(zip(resumed.replica_state_dicts(), straight.replica_state_dicts())):
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=FLOAT64_TOLERANCE, rtol=0,
                                       msg=lambda m: f"replica {i}, {name}: {m}")


def test_unet_with_batch_norm_trains_when_the_last_batch_would_hold_one_image():
    pairs = load_pairs("synthetic", "pixelate", train_size=33, val_size=4, seed=0)
    trainer = ReplicaTrainer(TrainSpec("unet", hparams={"batchnorm": True}, batch_size=32, epochs=1, seeds=(0,)))
    loss = trainer.train_epoch(pairs.train_a, pairs.train_b)
    assert torch.isfinite(loss).all()


@numeric
@pytest.mark.parametrize("fused", [False, True])
def test_evaluation_in_chunks_gives_what_one_pass_over_all_images_gives(fused):
    """The default evaluation chunk (`eval_batch_size`) splits the validation set; a last, partial
    chunk included, the PSNRs and the denoised images are those of one pass over every image."""
    chunk = eval_batch_size("cpu")
    pairs = load_pairs("synthetic", "pixelate", train_size=64, val_size=2 * chunk + 7, seed=5)
    trainer = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=32, seeds=(0, 1)), fused=fused)
    trainer.train_epoch(pairs.train_a, pairs.train_b)
    n = len(pairs.val_noisy)
    chunked = trainer.evaluate(pairs.val_noisy, pairs.val_clean)
    whole = trainer.evaluate(pairs.val_noisy, pairs.val_clean, batch_size=n)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-5)
    images = trainer.predict(pairs.val_noisy)
    assert images.shape == (2, n, 3, 32, 32)
    torch.testing.assert_close(images, trainer.predict(pairs.val_noisy, batch_size=n), rtol=0, atol=1e-5)
    # each image's PSNR from the chunked images, averaged, is the evaluation's figure
    clean = pairs.val_clean.float() / 255
    torch.testing.assert_close(torch.stack([psnr_per_image(o, clean).mean() for o in images]), chunked,
                               rtol=1e-6, atol=1e-5)


@numeric
@pytest.mark.parametrize("fused", [False, True])
def test_the_weights_moving_average_is_what_is_evaluated_and_exported(synthetic, float64, fused):
    """With `ema`, the steps train the same weights as without it, and evaluation, predictions and
    the replicas' state dicts use their moving average: after step n, decay min(ema, (1+n)/(10+n))."""
    a, b = synthetic.train_a[:64], synthetic.train_b[:64]  # one step an epoch: the weights after each step
    plain = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=64, epochs=4, seeds=(0, 1)), fused=fused)
    averaged = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=64, epochs=4, seeds=(0, 1), ema=0.9), fused=fused)
    expected = plain.replica_state_dicts()  # the initial weights
    for n in range(1, 5):
        torch.testing.assert_close(averaged.train_epoch(a, b), plain.train_epoch(a, b), atol=FLOAT64_TOLERANCE, rtol=0)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = [{name: decay * e[name] + (1 - decay) * w[name] for name in w}  # TNet: no buffers
                    for e, w in zip(expected, plain.replica_state_dicts())]
    state = averaged.state_dict()
    for i in range(2):
        for name, value in plain.replica_state_dicts()[i].items():
            torch.testing.assert_close(state["trained"][i][name], value, atol=FLOAT64_TOLERANCE, rtol=0)
            torch.testing.assert_close(state["replicas"][i][name], expected[i][name], atol=FLOAT64_TOLERANCE, rtol=0)
    assert not torch.equal(state["replicas"][0]["out.0.weight"], state["trained"][0]["out.0.weight"])
    model = averaged.replica_model(1).double()
    want = psnr_per_image(model(synthetic.val_noisy.double() / 255).clamp(0, 1), synthetic.val_clean.double() / 255)
    # the same images and PSNR code on both sides, float64 weights and images: only summation order differs
    torch.testing.assert_close(averaged.evaluate(synthetic.val_noisy, synthetic.val_clean)[1].item(),
                               want.mean().item(), atol=1e-6, rtol=0)


@numeric
@pytest.mark.parametrize("fused", [False, True])
def test_a_checkpoint_keeps_the_moving_average_and_the_augmented_pairs_go_on(synthetic, float64, fused):
    """Resumed from a checkpoint (written fused, resumed alone, or the reverse), the moving average
    and the flips, rotations and swaps of the pairs go on as in the uninterrupted run."""
    spec = TrainSpec("tnet", lr=1e-3, batch_size=32, epochs=3, seeds=(0, 1), ema=0.95, augment=True)
    a, b = synthetic.train_a[:96], synthetic.train_b[:96]
    straight = ReplicaTrainer(spec, fused=fused)
    for _ in range(3):
        straight.train_epoch(a, b)
    first = ReplicaTrainer(spec, fused=fused)
    first.train_epoch(a, b)
    resumed = ReplicaTrainer(spec, fused=not fused)
    resumed.load_state_dict(first.state_dict())
    for _ in range(2):
        resumed.train_epoch(a, b)
    for key in ("replicas", "trained"):
        for got, want in zip(resumed.state_dict()[key], straight.state_dict()[key]):
            for name, value in want.items():
                torch.testing.assert_close(got[name], value, atol=FLOAT64_TOLERANCE, rtol=0, msg=lambda m: f"{key} {name}: {m}")


@numeric
@pytest.mark.parametrize("fused", [False, True])
def test_adam_trains_with_the_configured_beta2_also_after_a_checkpoint_written_with_another(synthetic, float64,
                                                                                            fused):
    """`beta2` is Adam's: the trainer takes the steps of the plain loop's Adam with that beta2, and
    one resumed from a checkpoint written with another beta2 goes on with its own configuration's
    (the unet space trains with 0.99; checkpoints before the knob were written with 0.999)."""
    from n2n_models.reference import ReferenceLoop

    a, b = synthetic.train_a[:96], synthetic.train_b[:96]
    spec = dict(lr=1e-3, batch_size=32, epochs=3, seeds=(7,))
    reference = ReferenceLoop("tnet", {}, 7, a, b, batch_size=32, lr=1e-3, beta2=0.999)
    first = ReplicaTrainer(TrainSpec("tnet", **spec), fused=fused)
    torch.testing.assert_close(first.train_epoch(a, b), torch.stack(reference.train_epoch()).mean().reshape(1),
                               atol=FLOAT64_TOLERANCE, rtol=0)
    resumed = ReplicaTrainer(TrainSpec("tnet", **spec, beta2=0.9), fused=not fused)
    resumed.load_state_dict(first.state_dict())
    for group in reference.optimizer.param_groups:  # the plain loop switches by hand
        group["betas"] = (0.9, 0.9)
    kept = ReplicaTrainer(TrainSpec("tnet", **spec), fused=fused)  # the same checkpoint, beta2 left at 0.999
    kept.load_state_dict(first.state_dict())
    for _ in range(2):
        want = torch.stack(reference.train_epoch()).mean().reshape(1)
        torch.testing.assert_close(resumed.train_epoch(a, b), want, atol=FLOAT64_TOLERANCE, rtol=0)
        kept.train_epoch(a, b)
    got, other = resumed.replica_state_dicts()[0], kept.replica_state_dicts()[0]
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(got[name], value, atol=FLOAT64_TOLERANCE, rtol=0, msg=lambda m: f"{name}: {m}")
    # the test can tell the two apart: 0.999 steps elsewhere by far more than the tolerance
    assert max((other[n] - got[n]).abs().max().item() for n in got) > 1e3 * FLOAT64_TOLERANCE


@pytest.mark.parametrize("target", ["noisy", "clean"])
def test_augmented_pairs_are_each_turned_as_one_and_swapped_only_for_noisy_targets(synthetic, target):
    from n2n_models.augment import SYMMETRIES, augment_pairs, symmetry

    a, b = synthetic.train_a[:200], synthetic.train_b[:200]
    swap = target == "noisy"
    out = augment_pairs(a, b, 3, swap, torch.empty_like(a), torch.empty_like(b))
    seen = set()
    for i in range(len(a)):
        found = [(code, swapped) for code in range(SYMMETRIES) for swapped in (False, True)
                 if torch.equal(out[0][i:i + 1], symmetry((b if swapped else a)[i:i + 1], code))
                 and torch.equal(out[1][i:i + 1], symmetry((a if swapped else b)[i:i + 1], code))]
        assert found, f"pair {i} is not one symmetry of the pair it came from"
        seen.update(found)
    assert {code for code, _ in seen} == set(range(SYMMETRIES))
    assert {swapped for _, swapped in seen} == ({False, True} if swap else {False})
    again = augment_pairs(a, b, 3, swap, torch.empty_like(a), torch.empty_like(b))
    other = augment_pairs(a, b, 4, swap, torch.empty_like(a), torch.empty_like(b))
    assert torch.equal(again[0], out[0]) and not torch.equal(other[0], out[0]), "drawn from the epoch"


@numeric
def test_augmented_replicas_train_the_same_numbers_fused_or_alone(synthetic, float64):
    spec = TrainSpec("tnet", lr=1e-3, batch_size=32, epochs=2, seeds=(0, 1), augment=True)
    fused = ReplicaTrainer(spec, fused=True)
    alone = [ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=32, epochs=2, seeds=(s,), augment=True), fused=False)
             for s in spec.seeds]
    plain = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=32, epochs=2, seeds=(0, 1)), fused=True)
    a, b = synthetic.train_a[:96], synthetic.train_b[:96]
    for _ in range(2):
        losses = fused.train_epoch(a, b)
        torch.testing.assert_close(losses, torch.cat([t.train_epoch(a, b) for t in alone]),
                                   atol=FLOAT64_TOLERANCE, rtol=0)
        assert not torch.allclose(losses, plain.train_epoch(a, b)), "augment changes what is trained on"
