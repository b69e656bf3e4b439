"""Per-sample gradients of ``model.per_sample`` against independent references.

References: ``nn.LSTM`` on packed input (values, summed gradients, input gradients), and ``nn.LSTM`` / ``nn.Linear``
run one sample at a time, unpadded, each with its own backward (per-sample gradients), as Opacus tests its own
per-sample gradient rules. Most checks run in float64 so that agreement is to rounding error.
"""

from __future__ import annotations

import copy

import pytest
import torch
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.per_sample import linear_with_grad_sample, lstm_with_grad_sample

F64 = torch.float64
LENGTHS = torch.tensor([7, 3, 1, 5, 7, 2])
SHAPES = [(1, False), (1, True), (2, False), (2, True)]


def make_lstm(num_layers: int, bidirectional: bool, dtype=F64, input_size=5, hidden=4, dropout=0.0) -> nn.LSTM:
    torch.manual_seed(num_layers * 10 + bidirectional)
    lstm = nn.LSTM(input_size, hidden, num_layers=num_layers, bidirectional=bidirectional, batch_first=True,
                   dropout=dropout)
    return lstm.to(dtype)


def packed_reference(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.LSTM on the packed batch, output padded back to x's length."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, h_n


def weighted_loss(out: torch.Tensor, h_n: torch.Tensor, w_out: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
    """A loss reading every output step and every final state, summed over samples."""
    return (out * w_out).sum() + (h_n * w_h).sum()


def clear(*modules: nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.grad = None
            p.grad_sample = None


def per_sample_loop(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor, w_out, w_h) -> list[dict[str, torch.Tensor]]:
    """Each sample alone, unpadded, through nn.LSTM with its own backward."""
    grads = []
    for n, length in enumerate(lengths.tolist()):
        lstm.zero_grad(set_to_none=True)
        out, (h_n, _) = lstm(x[n : n + 1, :length].detach())
        weighted_loss(out, h_n, w_out[n : n + 1, :length], w_h[:, n : n + 1]).backward()
        grads.append({name: p.grad.clone() for name, p in lstm.named_parameters()})
    lstm.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("num_layers,bidirectional", SHAPES)
def test_outputs_and_h_n_match_nn_lstm_on_packed_input(num_layers, bidirectional):
    lstm = make_lstm(num_layers, bidirectional)
    x = torch.randn(6, 9, 5, dtype=F64)  # T = 9 > longest length 7: trailing all-padding steps too
    out, h_n = lstm_with_grad_sample(lstm, x, LENGTHS)
    ref_out, ref_h_n = packed_reference(lstm, x, LENGTHS)
    assert out.shape == ref_out.shape and h_n.shape == ref_h_n.shape
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, ref_h_n, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_layers,bidirectional", SHAPES)
def test_per_sample_gradients_match_one_sample_at_a_time_loop(num_layers, bidirectional):
    lstm = make_lstm(num_layers, bidirectional)
    x = torch.randn(6, 7, 5, dtype=F64)
    out, h_n = lstm_with_grad_sample(lstm, x, LENGTHS)
    w_out, w_h = torch.randn_like(out), torch.randn_like(h_n)
    weighted_loss(out, h_n, w_out, w_h).backward()
    samples = {name: p.grad_sample.clone() for name, p in lstm.named_parameters()}
    clear(lstm)
    for n, ref in enumerate(per_sample_loop(lstm, x, LENGTHS, w_out, w_h)):
        for name, grad in ref.items():
            torch.testing.assert_close(samples[name][n], grad, rtol=0, atol=1e-12, msg=f"{name}, sample {n}")


@pytest.mark.parametrize("num_layers,bidirectional", SHAPES)
def test_grad_and_input_grad_match_autograd_through_nn_lstm(num_layers, bidirectional):
    lstm = make_lstm(num_layers, bidirectional)
    x = torch.randn(6, 8, 5, dtype=F64, requires_grad=True)
    out, h_n = lstm_with_grad_sample(lstm, x, LENGTHS)
    w_out, w_h = torch.randn_like(out), torch.randn_like(h_n)
    weighted_loss(out, h_n, w_out, w_h).backward()
    grads = {name: p.grad.clone() for name, p in lstm.named_parameters()}
    x_grad = x.grad.clone()
    for name, p in lstm.named_parameters():
        torch.testing.assert_close(p.grad, p.grad_sample.sum(0), rtol=0, atol=1e-12, msg=name)
    clear(lstm)
    x.grad = None
    weighted_loss(*packed_reference(lstm, x, LENGTHS), w_out, w_h).backward()
    for name, p in lstm.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=0, atol=1e-12, msg=name)
    torch.testing.assert_close(x_grad, x.grad, rtol=0, atol=1e-12)
    assert x_grad[LENGTHS[:, None] <= torch.arange(8)].abs().max() == 0  # padded steps get no gradient


def test_float32_per_sample_gradients_match_loop_to_float32_precision():
    lstm = make_lstm(2, True, dtype=torch.float32, input_size=6, hidden=16)
    x = torch.randn(6, 7, 6)
    out, h_n = lstm_with_grad_sample(lstm, x, LENGTHS)
    w_out, w_h = torch.randn_like(out), torch.randn_like(h_n)
    weighted_loss(out, h_n, w_out, w_h).backward()
    samples = {name: p.grad_sample.clone() for name, p in lstm.named_parameters()}
    clear(lstm)
    for n, ref in enumerate(per_sample_loop(lstm, x, LENGTHS, w_out, w_h)):
        for name, grad in ref.items():
            torch.testing.assert_close(samples[name][n], grad, rtol=1e-5, atol=1e-5, msg=f"{name}, sample {n}")


def test_padded_entries_are_ignored_even_when_not_finite():
    lstm = make_lstm(2, True)
    x = torch.randn(6, 7, 5, dtype=F64)
    padded = x.clone()
    padded[LENGTHS[:, None] <= torch.arange(7)] = float("nan")
    padded.requires_grad_(True)
    out, h_n = lstm_with_grad_sample(lstm, padded, LENGTHS)
    ref_out, ref_h_n = packed_reference(lstm, x, LENGTHS)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, ref_h_n, rtol=0, atol=1e-12)
    weighted_loss(out, h_n, torch.randn_like(out), torch.randn_like(h_n)).backward()
    assert all(torch.isfinite(p.grad_sample).all() for p in lstm.parameters())
    assert torch.isfinite(padded.grad).all()


def test_inter_layer_dropout_matches_nn_lstm_layers_with_the_same_masks():
    """In training mode the output of layer 0 is dropped out (inverted scaling), the last layer's is not."""
    lstm = make_lstm(2, True, dropout=0.5).train()
    layers = []
    for layer in range(2):
        single = nn.LSTM(5 if layer == 0 else 8, 4, bidirectional=True, batch_first=True).to(F64)
        for name, p in single.named_parameters():
            p.data.copy_(getattr(lstm, name.replace("_l0", f"_l{layer}")))
        layers.append(single)
    x = torch.randn(6, 7, 5, dtype=F64)
    torch.manual_seed(123)
    out, h_n = lstm_with_grad_sample(lstm, x, LENGTHS)
    torch.manual_seed(123)
    keep = (torch.rand(6, 7, 8, dtype=F64) >= 0.5) / 0.5  # the inner dropout's mask: same draws, same rule
    w_out, w_h = torch.randn_like(out), torch.randn_like(h_n)
    weighted_loss(out, h_n, w_out, w_h).backward()
    for n, length in enumerate(LENGTHS.tolist()):
        hidden, (h0, _) = layers[0](x[n : n + 1, :length])
        top, (h1, _) = layers[1](hidden * keep[n : n + 1, :length])
        torch.testing.assert_close(out[n, :length], top[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(h_n[:, n], torch.cat([h0, h1])[:, 0], rtol=0, atol=1e-12)
        clear(*layers)
        weighted_loss(top, torch.cat([h0, h1]), w_out[n : n + 1, :length], w_h[:, n : n + 1]).backward()
        for layer, single in enumerate(layers):
            for name, p in single.named_parameters():
                mine = getattr(lstm, name.replace("_l0", f"_l{layer}")).grad_sample[n]
                torch.testing.assert_close(mine, p.grad, rtol=0, atol=1e-12, msg=f"{name} layer {layer}")


def test_bias_ih_and_bias_hh_get_separate_grad_sample_tensors():
    lstm = make_lstm(1, True)
    out, h_n = lstm_with_grad_sample(lstm, torch.randn(6, 7, 5, dtype=F64), LENGTHS)
    h_n.sum().backward()
    samples = [p.grad_sample for p in lstm.parameters()]
    assert len({s.data_ptr() for s in samples}) == len(samples)
    torch.testing.assert_close(lstm.bias_ih_l0.grad_sample, lstm.bias_hh_l0.grad_sample)


def test_grad_sample_adds_within_a_batch_and_refuses_a_stale_batch():
    lstm = make_lstm(1, False)
    x = torch.randn(6, 7, 5, dtype=F64)
    lstm_with_grad_sample(lstm, x, LENGTHS)[1].sum().backward()
    once = lstm.weight_hh_l0.grad_sample.clone()
    lstm_with_grad_sample(lstm, x, LENGTHS)[1].sum().backward()
    torch.testing.assert_close(lstm.weight_hh_l0.grad_sample, 2 * once)
    with pytest.raises(ValueError, match="cleared between batches"):
        lstm_with_grad_sample(lstm, x[:3], LENGTHS[:3])[1].sum().backward()


def test_empty_batch_gives_empty_outputs_and_grad_samples():
    lstm = make_lstm(2, True)
    x = torch.zeros(0, 7, 5, dtype=F64, requires_grad=True)
    out, h_n = lstm_with_grad_sample(lstm, x, torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, 7, 8) and h_n.shape == (4, 0, 4)
    (out.sum() + h_n.sum()).backward()
    for p in lstm.parameters():
        assert p.grad_sample.shape == (0, *p.shape)
        assert p.grad.abs().max() == 0


@pytest.mark.parametrize("lengths", [torch.tensor([0, 3]), torch.tensor([8, 3]), torch.tensor([3])])
def test_lengths_outside_one_to_t_are_rejected(lengths):
    with pytest.raises(ValueError, match="lengths"):
        lstm_with_grad_sample(make_lstm(1, False), torch.zeros(2, 7, 5, dtype=F64), lengths)


@pytest.mark.parametrize("shape", [(5, 3), (5, 4, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_per_sample_gradients_match_one_sample_at_a_time_loop(shape, bias):
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=bias).to(F64)
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    y = linear_with_grad_sample(layer, x)
    torch.testing.assert_close(y, layer(x), rtol=0, atol=1e-14)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    samples = {name: p.grad_sample.clone() for name, p in layer.named_parameters()}
    x_grad = x.grad.clone()
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, samples[name].sum(0), rtol=0, atol=1e-12)
    for n in range(shape[0]):
        layer.zero_grad(set_to_none=True)
        (layer(x[n : n + 1].detach()) * w[n : n + 1]).sum().backward()
        for name, p in layer.named_parameters():
            torch.testing.assert_close(samples[name][n], p.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(x_grad, w @ layer.weight, rtol=0, atol=1e-12)


def test_linear_empty_batch_gives_empty_grad_samples():
    layer = nn.Linear(3, 2).to(F64)
    linear_with_grad_sample(layer, torch.zeros(0, 4, 3, dtype=F64)).sum().backward()
    assert layer.weight.grad_sample.shape == (0, 2, 3) and layer.bias.grad_sample.shape == (0, 2)


class _TinyModel(nn.Module):
    """The shape of the preference model: embedding of a one-hot slice, 2-layer bidirectional LSTM, linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.embed = nn.Linear(3, 4, bias=False)
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(10, 3)

    def forward(self, x, lengths, per_sample: bool):
        if per_sample:
            inputs = torch.cat([linear_with_grad_sample(self.embed, x[..., :3]), x[..., 3:]], -1)
            _, h_n = lstm_with_grad_sample(self.lstm, inputs, lengths)
            return linear_with_grad_sample(self.head, torch.cat([h_n[-2], h_n[-1]], -1))
        inputs = torch.cat([self.embed(x[..., :3]), x[..., 3:]], -1)
        _, (h_n, _) = self.lstm(pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False))
        return self.head(torch.cat([h_n[-2], h_n[-1]], -1))


def hand_clipped_sum(model: _TinyModel, x, lengths, targets, max_norm: float) -> list[torch.Tensor]:
    """Sum over samples of each sample's full gradient scaled to norm <= max_norm (norm over all parameters)."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for n, length in enumerate(lengths.tolist()):
        model.zero_grad(set_to_none=True)
        logits = model(x[n : n + 1, :length], lengths[n : n + 1], per_sample=False)
        F.cross_entropy(logits, targets[n : n + 1], reduction="sum").backward()
        grads = [p.grad for p in model.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        scale = min(1.0, max_norm / (float(norm) + 1e-6))  # Opacus' clip factor, 1e-6 guarding a zero norm
        total = [t + scale * g for t, g in zip(total, grads)]
    model.zero_grad(set_to_none=True)
    return total


@pytest.mark.parametrize("loss_reduction", ["sum", "mean"])
def test_dp_optimizer_clips_each_sample_over_all_parameters_jointly(loss_reduction):
    model = _TinyModel().to(F64)
    x = torch.randn(6, 7, 5, dtype=F64)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    max_norm = 0.1  # small enough that every sample is clipped... checked below
    expected = hand_clipped_sum(copy.deepcopy(model), x, LENGTHS, targets, max_norm)
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0,
                            max_grad_norm=max_norm, expected_batch_size=4, loss_reduction=loss_reduction)
    optimizer.zero_grad()
    # The backpropagated loss must be the SUM of per-sample losses, whatever DPOptimizer's loss_reduction.
    F.cross_entropy(model(x, LENGTHS, per_sample=True), targets, reduction="sum").backward()
    norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in model.parameters()], 1).norm(dim=1)
    assert (norms > max_norm).sum() >= 3 and len(norms) == 6
    optimizer.pre_step()
    divisor = 4.0 if loss_reduction == "mean" else 1.0
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e / divisor, rtol=0, atol=1e-12)


def test_dp_optimizer_steps_on_an_empty_batch():
    model = _TinyModel().to(F64)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0,
                            expected_batch_size=4, loss_reduction="mean")
    optimizer.zero_grad()
    x, lengths = torch.zeros(0, 7, 5, dtype=F64), torch.zeros(0, dtype=torch.int64)
    F.cross_entropy(model(x, lengths, per_sample=True), torch.zeros(0, dtype=torch.int64), reduction="sum").backward()
    optimizer.step()  # noise only: the step a Poisson-sampled empty batch must still take
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_backward_after_a_dp_step_without_zero_grad_is_refused():
    model = _TinyModel().to(F64)
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=1.0,
                            expected_batch_size=6, loss_reduction="mean")
    x, targets = torch.randn(6, 7, 5, dtype=F64), torch.tensor([0, 1, 2, 0, 1, 2])
    F.cross_entropy(model(x, LENGTHS, per_sample=True), targets, reduction="sum").backward()
    optimizer.step()
    with pytest.raises(ValueError, match="cleared between batches"):
        F.cross_entropy(model(x, LENGTHS, per_sample=True), targets, reduction="sum").backward()
