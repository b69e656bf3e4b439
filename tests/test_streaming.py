"""The streaming predictor equals the full-sequence causal model, survives restarts and notices model updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.device.stream_state import StaleStateError, check_user_id, load_state, state_path
from model.device.streaming import StreamingPredictor
from model.features.encoding import EventEncoder, encode_events
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.step_kernel import StepKernel
from simulations.population.population import Population, PopulationConfig

CAUSAL = ModelConfig(bidirectional=False, hidden_size=16, num_layers=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a small shared machine, thread hand-offs cost more than these tiny models' work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed: int) -> PreferenceLSTM:
    torch.manual_seed(seed)
    return PreferenceLSTM(CAUSAL).eval()


@pytest.fixture(scope="module")
def events():
    log = Population(PopulationConfig(num_users=1, days=10, seed=3)).user(0).events()
    assert len(log) >= 20
    return log[:40]


def _full_sequence_probs(model: PreferenceLSTM, events) -> np.ndarray:
    """Reference: the causal model over each whole prefix, ``probs[t]`` after event ``t``."""
    x = torch.from_numpy(encode_events(events)).unsqueeze(0)
    with torch.no_grad():
        return np.stack([
            torch.softmax(model(x[:, : t + 1], torch.tensor([t + 1])), -1)[0].numpy() for t in range(len(events))
        ])


def test_one_event_at_a_time_encoding_matches_encode_events(events):
    full = encode_events(events)
    encoder = EventEncoder()
    for t, event in enumerate(events):
        np.testing.assert_array_equal(encoder.encode(event), full[t])


def _residual_model(seed: int) -> PreferenceLSTM:
    """A residual model whose head is not zero (as after training), so the test sees every term."""
    torch.manual_seed(seed)
    model = PreferenceLSTM(ModelConfig(bidirectional=False, hidden_size=16, num_layers=1, dropout=0.0,
                                       head_dropout=0.0, residual=True))
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.3)
        model.head.bias.normal_(0.0, 0.3)
    return model.eval()


def test_residual_model_streams_as_its_full_sequence(tmp_path, events):
    model = _residual_model(5)
    predictor = StreamingPredictor(model, tmp_path)
    streamed = np.stack([predictor.observe("u1", event) for event in events])
    np.testing.assert_allclose(streamed, _full_sequence_probs(model, events), atol=1e-5)
    # and after a restart, from the state file alone (the decayed counts travel with it)
    again = StreamingPredictor(model, tmp_path)
    np.testing.assert_allclose(again.predict("u1"), streamed[-1], atol=1e-6)


def test_step_kernel_equals_model_step(events):
    model = _model(7)
    kernel = StepKernel(model)
    features = torch.from_numpy(encode_events(events))
    state_model = state_kernel = model.initial_state(1)
    with torch.no_grad():
        for row in features:
            logits_model, state_model = model.step(row[None], state_model)
            logits_kernel, state_kernel = kernel(row[None], state_kernel)
            torch.testing.assert_close(logits_kernel, logits_model, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(state_kernel, state_model, atol=1e-6, rtol=1e-5)


def test_streaming_matches_full_sequence_after_every_event(tmp_path, events):
    model = _model(0)
    reference = _full_sequence_probs(model, events)
    predictor = StreamingPredictor(model, tmp_path)
    for t, event in enumerate(events):
        np.testing.assert_allclose(predictor.observe("u1", event), reference[t], atol=1e-5)
    np.testing.assert_allclose(predictor.predict("u1"), reference[-1], atol=1e-5)
    assert predictor.events_consumed("u1") == len(events)


def test_cache_survives_restart_and_continues_exactly(tmp_path, events):
    model = _model(1)
    reference = _full_sequence_probs(model, events)
    half = len(events) // 2
    first = StreamingPredictor(model, tmp_path)
    for event in events[:half]:
        first.observe(7, event)
    del first

    def no_replay(user_id):
        raise AssertionError("a returning user must not be replayed")

    second = StreamingPredictor(_model(1), tmp_path, history=no_replay)  # same weights, new object
    np.testing.assert_allclose(second.predict(7), reference[half - 1], atol=1e-5)
    for t in range(half, len(events)):
        np.testing.assert_allclose(second.observe(7, events[t]), reference[t], atol=1e-5)
    saved = load_state(state_path(tmp_path, 7))
    assert saved.events_consumed == len(events) and saved.last_ts == events[-1].ts


def test_changed_model_invalidates_cache(tmp_path, events):
    old = StreamingPredictor(_model(2), tmp_path)
    for event in events[:10]:
        old.observe("u", event)
    updated = _model(3)
    stale = StreamingPredictor(updated, tmp_path)
    assert stale.events_consumed("u") == 0
    with pytest.raises(StaleStateError, match="other model weights"):
        stale.observe("u", events[10])


def test_stale_cache_is_rebuilt_once_from_the_log(tmp_path, events):
    old = StreamingPredictor(_model(2), tmp_path)
    for event in events[:10]:
        old.observe("u", event)
    updated = _model(3)
    calls = []

    def history(user_id):
        calls.append(user_id)
        return events[:10]

    predictor = StreamingPredictor(updated, tmp_path, history=history)
    reference = _full_sequence_probs(updated, events[:12])
    np.testing.assert_allclose(predictor.observe("u", events[10]), reference[10], atol=1e-5)
    np.testing.assert_allclose(predictor.observe("u", events[11]), reference[11], atol=1e-5)
    assert calls == ["u"]


def test_rebuild_replays_the_log(tmp_path, events):
    model = _model(4)
    predictor = StreamingPredictor(model, tmp_path)
    np.testing.assert_allclose(predictor.rebuild("u", events), _full_sequence_probs(model, events)[-1], atol=1e-5)
    assert predictor.rebuild("empty", []) is None
    with pytest.raises(LookupError, match="no events observed"):
        predictor.predict("empty")


def test_out_of_order_event_is_refused(tmp_path, events):
    predictor = StreamingPredictor(_model(5), tmp_path)
    predictor.observe("u", events[5])
    with pytest.raises(ValueError, match="time order"):
        predictor.observe("u", events[0])


def test_bidirectional_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="causal model"):
        StreamingPredictor(PreferenceLSTM(ModelConfig()), tmp_path)


def test_broken_state_file_is_reported(tmp_path, events):
    predictor = StreamingPredictor(_model(6), tmp_path)
    predictor.observe("u", events[0])
    path = state_path(tmp_path, "u")
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="must be .* bytes"):
        StreamingPredictor(_model(6), tmp_path).predict("u")


@pytest.mark.parametrize("bad", ["../etc", "", ".hidden", "a/b", True])
def test_user_ids_cannot_escape_the_cache_dir(bad):
    with pytest.raises(ValueError, match="user_id must be"):
        check_user_id(bad)


_CRASHING_DEVICE = """
import os, signal, sys
import torch
from client.log_store import LogStore
from model.device.streaming import StreamingPredictor
from model.network.networks import ModelConfig, PreferenceLSTM
from simulations.population.population import Population, PopulationConfig

db, cache, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
events = Population(PopulationConfig(num_users=1, days=10, seed=3)).user(0).events()[:count]
torch.manual_seed(0)
model = PreferenceLSTM(ModelConfig(bidirectional=False, hidden_size=16, num_layers=2)).eval()
store = LogStore.open(db)
predictor = StreamingPredictor(model, cache, history=lambda user: store.events(), save_every=8)
for event in events:  # history= gives the events before the one observed: log each right after reading it
    predictor.observe("u1", event)
    store.append(event)
os.kill(os.getpid(), signal.SIGKILL)  # between events, before any flush
"""


@pytest.mark.slow  # a child process killed mid-run: end to end, in make test
def test_a_device_killed_between_saves_recovers_exactly_by_replaying_its_log(tmp_path, events):
    import subprocess
    import sys

    from client.log_store import LogStore
    from tests.helpers import ROOT

    count = 21  # saves after events 8 and 16: the file is 5 events behind the log when the process dies
    done = subprocess.run([sys.executable, "-c", _CRASHING_DEVICE, str(tmp_path / "log.db"), str(tmp_path),
                           str(count)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    assert load_state(state_path(tmp_path, "u1")).events_consumed == 16  # the state really was written lazily
    model = _model(0)
    store = LogStore.open(tmp_path / "log.db")
    recovered = StreamingPredictor(model, tmp_path, history=lambda user: store.events(), save_every=8)
    np.testing.assert_allclose(recovered.predict("u1"), _full_sequence_probs(model, events[:count])[-1], atol=1e-6)
    assert recovered.events_consumed("u1") == count
    assert load_state(state_path(tmp_path, "u1")).events_consumed == count  # caught up and saved


def test_lazy_states_are_written_on_flush_and_when_they_leave_memory(tmp_path, events):
    model = _model(0)
    logs: dict[str, list] = {"a": [], "b": []}
    with StreamingPredictor(model, tmp_path, history=lambda user: list(logs[user]), save_every=100,
                            max_cached_users=1) as predictor:
        for event in events[:3]:
            predictor.observe("a", event)
            logs["a"].append(event)
        assert load_state(state_path(tmp_path, "a")) is None  # not yet written
        predictor.observe("b", events[0])  # "a" leaves the one-user memory: written now
        assert load_state(state_path(tmp_path, "a")).events_consumed == 3
    assert load_state(state_path(tmp_path, "b")).events_consumed == 1  # written on close


def test_lazy_saving_needs_a_log_to_replay():
    with pytest.raises(ValueError, match="save_every"):
        StreamingPredictor(_model(0), "/nonexistent", save_every=8)


def test_the_onnx_runtime_streams_as_torch_does_and_their_states_do_not_mix(events, tmp_path):
    from model.device.export import export_device_model, step_signature
    from model.device.runtime import DeviceStep
    from model.device.streaming import OnnxStep

    model = _residual_model(8)
    runtime = DeviceStep(export_device_model(model, tmp_path / "step.onnx").path, expected=step_signature(model))
    onnx, torch_stream = StreamingPredictor(OnnxStep(runtime), tmp_path / "a"), StreamingPredictor(model, tmp_path / "a")
    assert onnx.fingerprint != torch_stream.fingerprint  # a state one made is stale for the other
    reference = _full_sequence_probs(model, events)
    for t, event in enumerate(events):
        np.testing.assert_allclose(onnx.observe("u", event), reference[t], atol=1e-5)
    history = list(events)
    lazy = StreamingPredictor(OnnxStep(runtime), tmp_path / "a", history=lambda user: history, save_every=8)
    np.testing.assert_allclose(lazy.predict("u"), reference[-1], atol=1e-5)
