import pytest
import torch

from model.encoding import FEATURE_DIM
from model.networks import ModelConfig, PreferenceLSTM


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
