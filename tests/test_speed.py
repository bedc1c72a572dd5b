"""The fast training loop keeps the math: it trains the same losses as the plain reference loop
of bench/throughput.py, fused replicas train the same numbers as separate runs for every model,
and the speed options (fusion choice, mixed precision) behave as documented. No timing here:
speed is measured by the benchmarks (docs/benchmarks.md)."""
import pytest
import torch
from torch import nn

from conftest import load_bench
from n2n_models.data import load_pairs
from n2n_models.reference import ReferenceLoop
from n2n_models.train import NotGroupable, ReplicaTrainer, TrainSpec, fused_by_default, group_replicas

numeric = pytest.mark.numeric  # run again on the AVX2 code paths by .ci/run

@pytest.fixture(scope="module")
def pairs():
    return load_pairs("synthetic", "pixelate", train_size=3200, val_size=32, seed=5)


@numeric
@pytest.mark.slow
def test_project_loop_trains_the_reference_loops_losses_over_the_first_100_steps(pairs):
    torch.set_num_threads(2)
    reference = ReferenceLoop("tnet", {}, 7, pairs.train_a, pairs.train_b, batch_size=32)
    expected = torch.stack(reference.train_epoch())
    ours = ReplicaTrainer(TrainSpec("tnet", lr=5e-4, batch_size=32, epochs=1, seeds=(7,)), fused=False)
    got = []
    ours.train_epoch(pairs.train_a, pairs.train_b, step_losses=got)
    got = torch.cat(got)
    assert len(got) == len(expected) == 100
    assert torch.allclose(got, expected, rtol=1e-5, atol=0), (got - expected).abs().max()


@numeric
# batch norm turns last-bit differences of its batched reductions into visible weight differences
# (Adam rescales its near-zero gradients), hence the looser weight tolerance there
@pytest.mark.parametrize("model, hparams, seeds, epochs, weight_tolerance", [
    ("tnet", {}, 5, 2, 1e-4), ("basenet", {}, 3, 1, 1e-4), ("unet", {"width": 8}, 3, 1, 1e-4),
    ("tnet", {"batchnorm": True, "dropout": 0.0}, 3, 1, 2e-2)])
def test_fused_replicas_train_the_same_numbers_as_separate_runs(pairs, model, hparams, seeds, epochs,
                                                                weight_tolerance):
    a, b = pairs.train_a[:64], pairs.train_b[:64]
    spec = dict(model=model, hparams=hparams, lr=1e-3, batch_size=32, epochs=epochs)
    fused = ReplicaTrainer(TrainSpec(**spec, seeds=range(seeds)), fused=True)
    alone = [ReplicaTrainer(TrainSpec(**spec, seeds=(s,)), fused=False) for s in range(seeds)]
    for _ in range(epochs):
        fused_loss = fused.train_epoch(a, b)
        alone_loss = torch.cat([t.train_epoch(a, b) for t in alone])
        assert torch.allclose(fused_loss, alone_loss, rtol=1e-4, atol=1e-7), (fused_loss, alone_loss)
    assert fused_loss.unique().numel() == seeds, "each replica has its own initialisation and data order"
    psnr_fused = fused.evaluate(pairs.val_noisy, pairs.val_clean)
    psnr_alone = torch.cat([t.evaluate(pairs.val_noisy, pairs.val_clean) for t in alone])
    assert torch.allclose(psnr_fused, psnr_alone, atol=1e-3), (psnr_fused, psnr_alone)
    fused_states = fused.replica_state_dicts()
    for i, trainer in enumerate(alone):
        for name, value in trainer.replica_state_dicts()[0].items():
            assert torch.allclose(fused_states[i][name].float(), value.float(), rtol=weight_tolerance,
                                  atol=weight_tolerance), name


@numeric
def test_replica_state_dicts_are_plain_contiguous_tensors_that_load_into_the_model(pairs):
    trainer = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=32, seeds=(0, 1)), fused=False)
    trainer.train_epoch(pairs.train_a[:64], pairs.train_b[:64])
    state = trainer.replica_state_dicts()[1]
    assert all(v.is_contiguous() for v in state.values()), "channels-last must not leak into checkpoints"
    before = {k: v.clone() for k, v in state.items()}
    trainer.train_epoch(pairs.train_a[:64], pairs.train_b[:64])
    assert all(torch.equal(before[k], v) for k, v in state.items()), "a state dict is a copy, not a view"
    model = trainer.replica_model(1)
    x = pairs.val_noisy[:4].float() / 255
    assert torch.allclose(model(x).clamp(0, 1), trainer.predict(pairs.val_noisy[:4])[1], atol=1e-6)


def test_auto_fusion_is_sequential_on_cpu_and_fused_on_gpus():
    assert ReplicaTrainer(TrainSpec("tnet", seeds=(0, 1, 2))).fused is False
    assert fused_by_default(torch.device("cuda"), 5) and not fused_by_default(torch.device("cuda"), 1)
    assert not fused_by_default(torch.device("cpu"), 5)


def test_a_layer_that_cannot_be_fused_is_refused_with_a_clear_error():
    class WithLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 3, 3, padding=1), nn.Linear(32, 32)

        def forward(self, x):
            return self.head(self.conv(x))

    with pytest.raises(NotGroupable, match="head"):
        group_replicas([WithLinear(), WithLinear()])


@numeric
def test_mixed_precision_trains_on_cpu_with_bfloat16_close_to_float32(pairs):
    a, b = pairs.train_a[:192], pairs.train_b[:192]
    full = ReplicaTrainer(TrainSpec("tnet", lr=2e-3, batch_size=32, seeds=(0, 1)), fused=False)
    amp = ReplicaTrainer(TrainSpec("tnet", lr=2e-3, batch_size=32, seeds=(0, 1), amp=True), fused=True)
    loss_full, loss_amp = full.train_epoch(a, b), amp.train_epoch(a, b)
    assert torch.isfinite(loss_amp).all() and torch.allclose(loss_amp, loss_full, rtol=0.05)
    out = amp.predict(pairs.val_noisy[:8])
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert amp.replica_state_dicts()[0]["enc1.0.weight"].dtype == torch.float32, "weights stay float32"
    psnr_full = full.evaluate(pairs.val_noisy, pairs.val_clean)
    psnr_amp = amp.evaluate(pairs.val_noisy, pairs.val_clean)
    assert (psnr_amp - psnr_full).abs().max() < 0.3, (psnr_amp, psnr_full)



@pytest.mark.slow
@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="the malloc settings are glibc's")
def test_training_steps_reuse_freed_memory_instead_of_page_faulting_and_user_malloc_settings_win():
    measure = load_bench("allocator.py").measure  # a fresh process: the setting is process-wide
    _, faults, applied = measure("tnet", 1, keep=True, train_size=640, epochs=1)
    assert applied
    assert faults < 50, f"{faults:.0f} page faults per TNet step"
    # a user's own malloc tuning is left alone; glibc's defaults then fault ~1,000 times a step
    _, faults_by_default, applied = measure("tnet", 1, keep=False, train_size=640, epochs=1)
    assert not applied
    assert faults_by_default > 5 * max(faults, 1)


def test_the_throughput_bench_measures_each_fused_upsample_concatenation_at_its_real_shapes():
    layers = {name: (type(layer).__name__, tuple(low), tuple(skip))
              for name, layer, low, skip in load_bench("throughput.py").upsample_concat_layers("tnet", 4)}
    assert layers == {"dec3.0": ("UpConcatConv2d", (4, 32, 1, 1), (4, 32, 4, 4)),
                      "dec2.0": ("UpConcatConv2d", (4, 32, 4, 4), (4, 32, 16, 16)),
                      "dec1.0": ("UpConcatThinConv2d", (4, 16, 16, 16), (4, 16, 32, 32))}


def test_the_throughput_bench_refuses_an_unknown_section_before_measuring(capsys):
    with pytest.raises(SystemExit) as stop:
        load_bench("throughput.py").main(["--sections", "loops,layer"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown section(s) layer" in err and "layers" in err


def test_the_throughput_bench_refuses_a_repeat_below_one_before_measuring(capsys):
    with pytest.raises(SystemExit) as stop:
        load_bench("throughput.py").main(["--sections", "loops", "--repeat", "0"])
    assert stop.value.code == 2
    assert "--repeat must be at least 1, got 0" in capsys.readouterr().err


def test_the_throughput_bench_summarises_repeated_runs_sorted_with_their_median(capsys):
    load_bench("throughput.py").repeat_summary({("tnet", 32): [(1.62, 1.50), (1.41, 1.55), (1.55, 1.38)]})
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert lines == ["tnet 32 3 ratio of the median times 1.41, 1.55, 1.62; median 1.55x",
                     "tnet 32 3 median of the per-round ratios 1.38, 1.50, 1.55; median 1.50x"]
