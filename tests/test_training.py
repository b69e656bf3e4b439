import copy

import pytest
import torch

from model.features.encoding import FEATURE_DIM

from model.features.examples import Examples
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig, evaluate, examples_kept, train_local
from privacy.record_level import RecordLevelDP

NO_DROPOUT = ModelConfig(dropout=0.0, head_dropout=0.0)


def _examples(n=24, window=10, seed=0) -> Examples:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, window, FEATURE_DIM, generator=g)
    lengths = torch.randint(1, window + 1, (n,), generator=g)
    for b in range(n):
        x[b, lengths[b]:] = 0
    return Examples(x, lengths, torch.randint(0, 8, (n,), generator=g), torch.arange(n, dtype=torch.float64))


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


NO_NOISE = 1e-9
"""A noise multiplier whose noise is far below float32 rounding: DP-SGD's clipping alone (z must be > 0)."""


def _one_full_batch_step(model, examples, noise, clip, seed):
    config = LocalTrainConfig(epochs=1, batch_size=len(examples), lr=1.0, optimizer="sgd")
    before = _flat(model)
    result = train_local(model, examples, config, dp=RecordLevelDP(noise, clip), generator=torch.Generator().manual_seed(0),
                         dp_generator=torch.Generator().manual_seed(seed))
    return before - _flat(model), result


def test_dp_sgd_adds_gaussian_noise_of_std_z_times_c():
    torch.manual_seed(0)
    base, examples = PreferenceLSTM(NO_DROPOUT), _examples()
    clean, _ = _one_full_batch_step(copy.deepcopy(base), examples, NO_NOISE, 0.5, seed=1)
    noisy, result = _one_full_batch_step(copy.deepcopy(base), examples, 3.0, 0.5, seed=1)
    assert result.sample_rate == 1.0 and result.steps == 1
    noise = (noisy - clean) * len(examples)  # the update is (clipped sum + noise) / expected batch size
    assert noise.std().item() == pytest.approx(3.0 * 0.5, rel=0.03)
    assert abs(noise.mean().item()) < 0.05


def test_dp_sgd_noise_and_batches_come_from_dp_generator_alone():
    """The generator that drives augmentation (seeded by what the server sends) does not decide DP-SGD's draws."""
    torch.manual_seed(0)
    base, examples = PreferenceLSTM(NO_DROPOUT), _examples()
    first, _ = _one_full_batch_step(copy.deepcopy(base), examples, 3.0, 0.5, seed=1)
    again, _ = _one_full_batch_step(copy.deepcopy(base), examples, 3.0, 0.5, seed=1)
    other, _ = _one_full_batch_step(copy.deepcopy(base), examples, 3.0, 0.5, seed=2)
    assert torch.equal(first, again) and not torch.allclose(first, other)
    with pytest.raises(ValueError, match="dp_generator"):
        train_local(copy.deepcopy(base), examples, LocalTrainConfig(), dp=RecordLevelDP(1.0, 1.0),
                    generator=torch.Generator())


def test_dp_sgd_clips_every_per_sample_gradient_to_c_before_noise():
    torch.manual_seed(0)
    clip = 0.05
    base, examples = PreferenceLSTM(NO_DROPOUT), _examples()
    update, _ = _one_full_batch_step(copy.deepcopy(base), examples, NO_NOISE, clip, seed=1)
    # Independent reference: per-example gradients one at a time through the fused nn.LSTM path.
    reference = torch.zeros_like(update)
    norms = []
    for i in range(len(examples)):
        model = copy.deepcopy(base).train()
        loss = torch.nn.functional.cross_entropy(model(examples.x[i : i + 1], examples.lengths[i : i + 1]), examples.targets[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        g = torch.cat([t.reshape(-1) for t in grads])
        norms.append(g.norm().item())
        reference += g * min(1.0, clip / (g.norm().item() + 1e-6))
    assert min(norms) > clip  # every example was actually clipped: the test exercises clipping
    assert torch.allclose(update, reference / len(examples), atol=1e-6)
    assert update.norm() * len(examples) <= clip * len(examples) + 1e-5


def test_poisson_sampling_survives_empty_batches():
    model, examples = PreferenceLSTM(), _examples(n=40)
    config = LocalTrainConfig(epochs=2, batch_size=1)  # q = 1/40: many empty batches
    result = train_local(model, examples, config, dp=RecordLevelDP(1.0, 1.0), generator=torch.Generator().manual_seed(0),
                         dp_generator=torch.Generator().manual_seed(0))
    assert result.steps == 80 and result.sample_rate == pytest.approx(1 / 40)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def test_plain_training_fits_a_learnable_signal():
    torch.manual_seed(0)
    examples = _examples(n=64)
    examples.x[:, 0, :8] = torch.nn.functional.one_hot(examples.targets, 8).float()  # the answer is in the input
    model = PreferenceLSTM()
    before = evaluate(model, examples).nll
    config = LocalTrainConfig(epochs=30, batch_size=16, lr=0.01)
    train_local(model, examples, config, generator=torch.Generator().manual_seed(0))
    after = evaluate(model, examples)
    assert after.nll < before * 0.5 and after.top1 > 0.9


def test_empty_example_set_trains_nothing():
    result = train_local(PreferenceLSTM(), _examples(n=0), LocalTrainConfig(), generator=torch.Generator())
    assert result.steps == 0 and result.num_examples == 0


def test_a_round_keeps_the_most_recent_max_examples_and_reports_training_on_them():
    examples = _examples(n=24)
    kept = examples_kept(examples, 10)
    assert torch.equal(kept.times, examples.times[-10:])  # the 10 most recent
    assert examples_kept(examples, 0) is examples and examples_kept(examples, 50) is examples
    model = PreferenceLSTM(ModelConfig(bidirectional=False, hidden_size=8, num_layers=1, dropout=0.0))
    result = train_local(model, examples, LocalTrainConfig(epochs=1, batch_size=4, max_examples=10),
                         generator=torch.Generator().manual_seed(0))
    assert result.num_examples == 10
