import pytest
import torch

from model.features.encoding import FEATURE_DIM
from model.network.networks import ModelConfig, PreferenceLSTM


def _windows(batch=5, window=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, window, FEATURE_DIM, generator=g)
    lengths = torch.randint(1, window + 1, (batch,), generator=g)
    for b in range(batch):
        x[b, lengths[b]:] = 0
    return x, lengths


def test_seed_model_returns_logits_and_a_distribution_on_request():
    model = PreferenceLSTM().eval()
    x, lengths = _windows()
    logits = model(x, lengths)
    assert logits.shape == (5, 8)
    assert not torch.allclose(logits.exp().sum(-1), torch.ones(5))  # raw logits, no softmax inside forward
    assert torch.allclose(model.predict_proba(x, lengths).sum(-1), torch.ones(5))


def test_parameter_names_are_nn_lstm_names():
    names = set(PreferenceLSTM().state_dict())
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l1_reverse", "lstm.bias_ih_l1", "head.weight", "style_embedding.weight"} <= names
    causal = set(PreferenceLSTM(ModelConfig(bidirectional=False)).state_dict())
    assert "lstm.weight_ih_l1" in causal and not any("reverse" in n for n in causal)


def test_padding_does_not_change_predictions():
    model = PreferenceLSTM().eval()
    x, lengths = _windows(window=8)
    padded = torch.cat([x, torch.zeros(5, 6, FEATURE_DIM)], dim=1)
    assert torch.allclose(model(x, lengths), model(padded, lengths), atol=1e-6)


def test_per_sample_path_gives_the_same_logits_as_the_fused_path():
    model = PreferenceLSTM().eval()
    x, lengths = _windows()
    fused = model(x, lengths)
    model.per_sample_grads = True
    assert torch.allclose(model(x, lengths), fused, atol=1e-5)


def test_causal_step_by_step_equals_full_sequence_after_every_event():
    model = PreferenceLSTM(ModelConfig(bidirectional=False)).eval()
    x, _ = _windows(batch=2, window=10)
    state = model.initial_state(2)
    with torch.no_grad():
        for t in range(10):
            logits, state = model.step(x[:, t], state)
            full = model(x[:, : t + 1], torch.full((2,), t + 1))
            assert torch.allclose(logits, full, atol=1e-5)


def test_bidirectional_model_refuses_to_stream():
    model = PreferenceLSTM()
    with pytest.raises(ValueError, match="causal"):
        model.step(torch.zeros(1, FEATURE_DIM), model.initial_state())


@pytest.mark.parametrize("config", [ModelConfig(bidirectional=False),
                                    ModelConfig(bidirectional=False, num_layers=3, hidden_size=16, dropout=0.0)])
def test_step_without_autograd_equals_the_lstm_module_path_and_keeps_its_state_shape(config):
    """Evaluation mode without gradients runs the step kernel; with gradients the nn.LSTM module runs. Same numbers."""
    model = PreferenceLSTM(config).eval()
    x, _ = _windows(batch=3, window=10, seed=1)
    fast = slow = model.initial_state(3)
    for t in range(10):
        with torch.no_grad():
            logits_fast, fast = model.step(x[:, t], fast)
        logits_slow, slow = model.step(x[:, t], slow)
        assert logits_slow.requires_grad and not logits_fast.requires_grad
        assert fast[0].shape == slow[0].shape == (config.num_layers, 3, config.hidden_size)
        torch.testing.assert_close(logits_fast, logits_slow, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
        slow = (slow[0].detach(), slow[1].detach())


def test_step_in_training_mode_keeps_dropout_and_gradients():
    model = PreferenceLSTM(ModelConfig(bidirectional=False, head_dropout=0.5)).train()
    x, _ = _windows(batch=4, window=1)
    logits, _ = model.step(x[:, 0], model.initial_state(4))
    logits.sum().backward()
    assert model.lstm.weight_ih_l0.grad is not None
    with torch.no_grad():
        torch.manual_seed(0)
        first, _ = model.step(x[:, 0], model.initial_state(4))
        torch.manual_seed(1)
        second, _ = model.step(x[:, 0], model.initial_state(4))
    assert not torch.equal(first, second)  # dropout is still applied in training mode


def test_step_reads_the_current_parameters_after_they_are_loaded_or_replaced():
    torch.manual_seed(0)
    model, other, third = (PreferenceLSTM(ModelConfig(bidirectional=False)).eval() for _ in range(3))
    x = torch.randn(2, FEATURE_DIM)

    def module_path(m, features):  # gradients on: the nn.LSTM module runs
        return m.step(features, tuple(s.to(features.dtype) for s in m.initial_state(2)))[0].detach()

    with torch.no_grad():
        model.step(x, model.initial_state(2))
        model.load_state_dict(other.state_dict())  # copied in place
        torch.testing.assert_close(model.step(x, model.initial_state(2))[0], module_path(other, x))
        model.load_state_dict(third.state_dict(), assign=True)  # parameters replaced
        torch.testing.assert_close(model.step(x, model.initial_state(2))[0], module_path(third, x))
        model.double()  # parameter data replaced
        state = tuple(s.double() for s in model.initial_state(2))
        logits = model.step(x.double(), state)[0]
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, module_path(model, x.double()))
