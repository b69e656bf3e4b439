"""The exported step runs in ONNX Runtime as it runs in torch, threads the state, and refuses other model shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.device.export import export_device_model, step_signature
from model.device.runtime import DeviceModelMismatch, DeviceStep
from model.features.encoding import encode_events
from model.log.vocab import GENRES
from model.network.distill import DEVICE_MODEL, new_student
from model.network.networks import ModelConfig, PreferenceLSTM
from simulations.population.population import Population, PopulationConfig
from tests.helpers import assert_streams_like_torch

TOLERANCE = 1e-5
TWO_LAYERS = ModelConfig(bidirectional=False, hidden_size=16, num_layers=2, dropout=0.0, head_dropout=0.0)
PRIOR = ModelConfig(bidirectional=False, hidden_size=16, num_layers=1, dropout=0.0, head_dropout=0.0,
                    style_embedding_dim=8, residual=True)  # conf/model/prior.yaml: the default global model


def _trained_looking(model: PreferenceLSTM) -> PreferenceLSTM:
    """The residual head starts at zero; give it weights so the export is checked on every term."""
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.3)
        model.head.bias.normal_(0.0, 0.3)
    return model.eval()


class ResidualLSTM(PreferenceLSTM):
    """A step with an extra input (logits it corrects, as a residual model over statistics would take)."""

    def example_step_inputs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return {**super().example_step_inputs(batch_size), "prior_logits": torch.zeros(batch_size, len(GENRES))}

    def step(self, event_features, state, prior_logits=None):
        logits, state = super().step(event_features, state)
        return logits + prior_logits, state


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """40 consecutive events of one synthetic user, encoded."""
    events = Population(PopulationConfig(num_users=2, days=14, seed=3)).user(1).events()
    assert len(events) >= 40
    return encode_events(events[:40])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The default device model and a 2-layer model of another hidden size, each with its ONNX file."""
    folder = tmp_path_factory.mktemp("onnx")
    models = {"device": new_student(DEVICE_MODEL, seed=1), "two_layers": new_student(TWO_LAYERS, seed=2),
              "prior": _trained_looking(new_student(PRIOR, seed=3))}
    return {name: (model, export_device_model(model, folder / f"{name}.onnx")) for name, model in models.items()}


@pytest.mark.parametrize("name", ["device", "two_layers", "prior"])
def test_runtime_matches_torch_over_a_streamed_sequence(exported, features, name):
    model, file = exported[name]
    assert_streams_like_torch(DeviceStep(file.path, step_signature(model)), model, features, atol=TOLERANCE)
    assert file.path.is_file() and 0 < file.size_bytes < 1_000_000


def test_runtime_state_carries_the_whole_history(exported, features):
    """Each streamed answer equals torch's full-sequence forward over the history; a reset state forgets it."""
    model, file = exported["device"]
    runtime = DeviceStep(file.path)
    h, c = runtime.initial_state()
    x = torch.from_numpy(features).unsqueeze(0)
    with torch.no_grad():
        for t, row in enumerate(features):
            logits, h, c = runtime(row[None], h=h, c=c)
            full = model.eval()(x[:, : t + 1], torch.tensor([t + 1]))
            np.testing.assert_allclose(logits, full.numpy(), atol=TOLERANCE, rtol=0)
    zero_h, zero_c = runtime.initial_state()
    fresh, _, _ = runtime(features[-1][None], h=zero_h, c=zero_c)
    assert np.abs(fresh - logits).max() > 1e-3  # the history changed the answer: the state is not ignored
    again, _, _ = runtime(features[-1][None], h=h, c=c)
    np.testing.assert_array_equal(runtime(features[-1][None], h=h, c=c)[0], again)  # same state in, same out


def test_a_file_of_another_model_shape_is_refused_naming_both_shapes(exported):
    device_model, _ = exported["device"]
    _, other_file = exported["two_layers"]
    with pytest.raises(DeviceModelMismatch, match=r"another model shape") as error:
        DeviceStep(other_file.path, step_signature(device_model))
    message = str(error.value)
    assert "h [2, 1, 16]" in message and "h [1, 1, 32]" in message and str(other_file.path) in message


def test_wrong_input_shapes_are_refused_by_name(exported):
    _, file = exported["device"]
    runtime = DeviceStep(file.path)
    h, c = runtime.initial_state()
    width = dict(runtime.signature.inputs)["event_features"][1]
    with pytest.raises(ValueError, match=rf"input 'event_features' must have shape \[1, {width}\] \(the exported "
                                         rf"model's\); found \[1, {width - 1}\]"):
        runtime(np.zeros((1, width - 1), np.float32), h=h, c=c)
    with pytest.raises(ValueError, match=r"takes 1 event input\(s\) \['event_features'\]; found 2"):
        runtime(np.zeros((1, width), np.float32), np.zeros((1, 8), np.float32), h=h, c=c)


def test_export_follows_the_models_own_step_inputs(tmp_path, features):
    """A step with another input list exports with those inputs, by name, and still matches torch."""
    torch.manual_seed(4)
    model = ResidualLSTM(DEVICE_MODEL).eval()
    file = export_device_model(model, tmp_path / "residual.onnx")
    runtime = DeviceStep(file.path, step_signature(model))
    assert [name for name, _ in runtime.signature.inputs] == ["event_features", "prior_logits", "h", "c"]
    prior = np.random.default_rng(0).normal(size=(len(features), 1, len(GENRES))).astype(np.float32)
    h, c = runtime.initial_state()
    state = model.initial_state(1)
    with torch.no_grad():
        for row, bias in zip(features, prior):
            logits, h, c = runtime(row[None], bias, h=h, c=c)
            torch_logits, state = model.step(torch.from_numpy(row[None]), state, torch.from_numpy(bias))
            np.testing.assert_allclose(logits, torch_logits.numpy(), atol=TOLERANCE, rtol=0)
    with pytest.raises(DeviceModelMismatch):
        DeviceStep(file.path, step_signature(new_student(DEVICE_MODEL)))
