"""CUDA-graph training steps (ReplicaTrainer(cuda_graphs=...)): a replayed step trains the same
numbers as an eager one. The equality tests need a CUDA GPU and are skipped without one (CI has
none; they run on a GPU machine, see docs/benchmarks.md); the refusals run everywhere."""
import io

import pytest
import torch

from n2n_models.data import load_pairs
from n2n_models.train import GRAPH_WARM_UP, ReplicaTrainer, TrainSpec

pytestmark = pytest.mark.numeric  # run again on the AVX2 code paths by .ci/run

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def test_cuda_graphs_are_refused_where_a_step_cannot_be_captured():
    assert ReplicaTrainer(TrainSpec("tnet"), device="cpu").cuda_graphs is False
    with pytest.raises(ValueError, match="CUDA device"):
        ReplicaTrainer(TrainSpec("tnet"), device="cpu", cuda_graphs=True)


def test_a_checkpoint_from_another_device_keeps_this_trainers_optimiser_setting():
    """A checkpoint holds its optimiser's `capturable` setting: True from a GPU trainer with CUDA
    graphs, False from a CPU one. A CUDA graph cannot capture an Adam step that is not capturable,
    so a trial retried or resumed on another kind of node must keep its own setting (here: a GPU
    checkpoint resumed on a CPU; the reverse needs a GPU) and train on exactly."""
    pairs = load_pairs("synthetic", "pixelate", train_size=96, val_size=4, seed=1)
    spec = TrainSpec("tnet", lr=1e-3, batch_size=32, epochs=2, seeds=(0,))
    straight = ReplicaTrainer(spec, device="cpu")
    straight.train_epoch(pairs.train_a, pairs.train_b)
    state = straight.state_dict()
    for group in state["optimizers"][0]["param_groups"]:
        group["capturable"] = True  # what ReplicaTrainer(spec, device="cuda") writes
    resumed = ReplicaTrainer(spec, device="cpu")
    resumed.load_state_dict(state)
    assert all(g["capturable"] is False for g in resumed.optimizers[0].param_groups)
    got = resumed.train_epoch(pairs.train_a, pairs.train_b)
    assert torch.equal(got, straight.train_epoch(pairs.train_a, pairs.train_b))


@pytest.fixture(scope="module")
def pairs():
    p = load_pairs("synthetic", "pixelate", train_size=8 * 32 + 5, val_size=16, seed=3)  # a partial last batch
    return p.train_a.cuda(), p.train_b.cuda()


@pytest.fixture
def deterministic_kernels():
    """cuDNN's deterministic algorithms: two runs of the same kernels give the same bits, so any
    difference left is the graph's."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def train(spec, fused, graphs, pairs, epochs=2):
    """A trainer with a graph-capturable optimiser; `graphs=False` runs its steps eagerly."""
    trainer = ReplicaTrainer(spec, device="cuda", fused=fused, cuda_graphs=True)
    trainer.cuda_graphs = graphs  # same optimiser settings (capturable Adam), eager or replayed steps
    steps = []
    for _ in range(epochs):
        trainer.train_epoch(*pairs, step_losses=steps)
    return trainer, torch.stack(steps).cpu()


@needs_gpu
@pytest.mark.parametrize("model, hparams, seeds, fused, loss", [
    ("tnet", {}, (0,), False, "l2"),
    ("tnet", {"batchnorm": True}, (0, 1, 2), True, "l1"),
    ("unet", {"batchnorm": True}, (0, 1), True, "hdr"),
    ("basenet", {}, (0, 1), False, "l2"),
])
def test_graphed_steps_train_the_same_numbers_as_eager_steps(pairs, deterministic_kernels, model, hparams, seeds,
                                                             fused, loss):
    spec = TrainSpec(model, hparams=hparams, lr=1e-3, batch_size=32, epochs=2, loss=loss, seeds=seeds)
    graphed, graphed_losses = train(spec, fused, True, pairs)
    eager, eager_losses = train(spec, fused, False, pairs)
    assert graphed._graph is not None and eager._graph is None, "the graphed trainer replayed a captured step"
    assert len(graphed_losses) == 2 * 9 > GRAPH_WARM_UP + 1
    rel = ((graphed_losses - eager_losses).abs() / eager_losses.abs()).max().item()
    assert rel < 1e-5, f"step losses differ by {rel:.1e} (relative)"
    for a, b in zip(graphed.replica_state_dicts(), eager.replica_state_dicts()):
        for name, value in b.items():
            if value.is_floating_point():
                worst = (a[name] - value).abs().max().item()
                assert torch.allclose(a[name], value, atol=1e-5, rtol=1e-4), f"{name}: {worst:.1e}"


@needs_gpu
def test_graphed_dropout_draws_new_masks_every_step(pairs):
    """A replay must not repeat the captured step's dropout masks. Every batch holds one image
    32 times and the learning rate is 0, so only the masks can make two steps' losses differ."""
    spec = TrainSpec("tnet", hparams={"dropout": 0.5}, lr=0.0, batch_size=32, seeds=(0,))
    trainer = ReplicaTrainer(spec, device="cuda", cuda_graphs=True)
    n = 32 * (GRAPH_WARM_UP + 4)
    one_image = pairs[0][:1].expand(n, -1, -1, -1).contiguous(), pairs[1][:1].expand(n, -1, -1, -1).contiguous()
    steps = []
    trainer.train_epoch(*one_image, step_losses=steps)
    replayed = torch.stack(steps[GRAPH_WARM_UP:]).flatten()
    assert trainer._graph is not None
    assert replayed.unique().numel() == len(replayed), f"replays repeated a dropout mask: {replayed.tolist()}"


@needs_gpu
def test_a_restored_checkpoint_is_captured_again_and_continues_exactly(pairs):
    spec = TrainSpec("tnet", lr=1e-3, batch_size=32, epochs=3, seeds=(0, 1))
    straight, _ = train(spec, None, True, pairs, epochs=2)
    saved = io.BytesIO()  # through bytes, as a checkpoint file: the live state keeps training
    torch.save(straight.state_dict(), saved)
    state = torch.load(io.BytesIO(saved.getvalue()), weights_only=True)
    resumed = ReplicaTrainer(spec, device="cuda", cuda_graphs=True)
    resumed.train_epoch(*pairs)  # captures a graph over the state that the checkpoint then replaces
    resumed.load_state_dict(state)
    a, b = straight.train_epoch(*pairs), resumed.train_epoch(*pairs)
    assert torch.allclose(a, b, rtol=1e-5, atol=0), (a, b)
