"""A device keeps the last global prior it received only after checking it, and its ONNX step answers as torch does."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from model.device import prior_store
from model.device.export import step_signature
from model.device.prior_store import PriorRefused, PriorStore, architecture_key
from model.features.encoding import encode_events
from model.network.networks import ModelConfig, PreferenceLSTM
from tests.helpers import PRIOR_MODEL, assert_streams_like_torch, sample_events


def _arrays(seed: int, config: ModelConfig = PRIOR_MODEL) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    model = PreferenceLSTM(config)
    with torch.no_grad():  # the residual head starts at zero: give it weights so a wrong export would show
        model.head.weight.normal_(0.0, 0.1)
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The default architecture's step graph, exported once for the module (an export takes seconds)."""
    folder = tmp_path_factory.mktemp("graphs-source")
    PriorStore(folder).install(_arrays(0), PRIOR_MODEL, run_key="warm", round_number=1, message="train")
    return folder / "graphs"


@pytest.fixture
def store(tmp_path, graphs):
    shutil.copytree(graphs, tmp_path / "priors" / "graphs")
    return PriorStore(tmp_path / "priors")


def test_a_kept_prior_streams_in_onnx_runtime_as_torch_steps(store):
    kept = store.install(_arrays(1), PRIOR_MODEL, run_key="run", round_number=3, message="train")
    assert store.current() == kept and kept.info.version == 2
    assert_streams_like_torch(kept.runtime(), kept.model(), encode_events(sample_events()), atol=1e-4)


def test_only_a_newer_global_model_of_the_same_run_replaces_the_kept_one(store):
    store.install(_arrays(1), PRIOR_MODEL, run_key="run", round_number=3, message="train")
    for round_number, message in ((3, "train"), (2, "evaluate"), (1, "train")):
        with pytest.raises(PriorRefused, match="stale"):
            store.install(_arrays(2), PRIOR_MODEL, run_key="run", round_number=round_number, message=message)
    after = store.install(_arrays(2), PRIOR_MODEL, run_key="run", round_number=3, message="evaluate")
    assert after.info.version == 3  # the devices' evaluation carries the model after the last round
    other_run = store.install(_arrays(3), PRIOR_MODEL, run_key="run-2", round_number=1, message="train")
    assert store.current() == other_run


@pytest.mark.parametrize("change, reason", [
    (lambda a: {k: v for k, v in a.items() if k != "head.bias"}, "shapes"),
    (lambda a: {**a, "extra": np.zeros(3, np.float32)}, "shapes"),
    (lambda a: {**a, "head.bias": np.zeros(9, np.float32)}, "shapes"),
    (lambda a: {**a, "head.bias": np.full(8, np.nan, np.float32)}, "not-finite"),
    (lambda a: {**a, "head.bias": np.full(8, 1e300)}, "not-finite"),
    (lambda a: {**a, "head.bias": np.arange(8)}, "shapes"),
])
def test_a_prior_that_does_not_fit_is_refused_and_the_kept_one_stays(store, change, reason):
    kept = store.install(_arrays(1), PRIOR_MODEL, run_key="run", round_number=2, message="train")
    with pytest.raises(PriorRefused, match=reason):
        store.install(change(_arrays(2)), PRIOR_MODEL, run_key="run", round_number=3, message="train")
    assert store.current() == kept
    assert_streams_like_torch(kept.runtime(), kept.model(), encode_events(sample_events()), atol=1e-4)  # still works


def test_a_bidirectional_prior_is_refused_as_not_streamable(store):
    config = ModelConfig(bidirectional=True, hidden_size=8, num_layers=1)
    with pytest.raises(PriorRefused, match="not-streamable"):
        store.install(_arrays(1, config), config, run_key="run", round_number=1, message="train")
    assert store.current() is None


def test_a_prior_for_another_app_signature_is_refused(store):
    other = ModelConfig(bidirectional=False, hidden_size=4, num_layers=1, dropout=0.0, head_dropout=0.0)
    expected = step_signature(PreferenceLSTM(PRIOR_MODEL))
    with pytest.raises(PriorRefused, match="signature"):
        store.install(_arrays(1, other), other, run_key="run", round_number=1, message="train", expected=expected)


def test_an_export_that_disagrees_with_torch_is_not_kept_and_the_previous_prior_stays(store, monkeypatch):
    kept = store.install(_arrays(1), PRIOR_MODEL, run_key="run", round_number=2, message="train")
    monkeypatch.setattr(prior_store, "PROBE_TOLERANCE", -1.0)  # no export can agree within a negative tolerance
    with pytest.raises(PriorRefused, match="onnx"):
        store.install(_arrays(2), PRIOR_MODEL, run_key="run", round_number=3, message="train")
    assert store.current() == kept
    assert sorted(p.name for p in store.folder.iterdir() if p.name.isdigit()) == [kept.folder.name]


def test_the_store_keeps_one_prior_folder_and_one_graph_per_architecture(store):
    for round_number in range(1, 4):
        kept = store.install(_arrays(round_number), PRIOR_MODEL, run_key="run", round_number=round_number,
                             message="train")
    assert [p.name for p in store.folder.iterdir() if p.name.isdigit()] == [kept.folder.name]
    assert [p.name for p in (store.folder / "graphs").iterdir()] == [f"{architecture_key(PRIOR_MODEL)}.onnx"]
    np.testing.assert_array_equal(kept.weights()["head.weight"], _arrays(3)["head.weight"])


def test_installing_leaves_the_callers_random_generator_alone(store):
    arrays = _arrays(1)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    store.install(arrays, PRIOR_MODEL, run_key="run", round_number=1, message="train")
    assert torch.equal(torch.rand(3), expected)
