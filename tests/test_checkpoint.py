"""Checkpoints carry no noise generator state and load without running anything a file could smuggle in."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from privacy.accounting import PrivacyLedger
from server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from server.federation import Progress
from server.preflight import check_checkpoint_file
from server.run_start import fresh_state
from server.settings import settings_from_config
from simulations.federation.simulation_server_app import simulated_run
from validation.config import ConfigError

FIELDS = {"format_version", "round", "arrays", "ledger", "noise_multiplier", "strategy_state", "device_dir",
          "clipping_norm", "run_key", "rounds", "settings"}


def _walk(value):
    """Every key and leaf of a nested payload."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    else:
        yield value


def test_a_runs_checkpoint_holds_no_noise_generator_state(compose_config, tmp_path):
    settings = settings_from_config(compose_config("population=small", "strategy=fedadam", "simulation.rounds=2"))
    run = simulated_run(settings, tmp_path, progress=Progress(open(os.devnull, "w")))
    state = fresh_state(settings, lambda _: None, population=settings.population.num_users)
    state.ledger.record(noise_multiplier=state.noise_multiplier, sample_rate=0.1)
    run.strategy.m_t = {k: np.ones_like(v) for k, v in state.arrays.items()}  # FedAdam's moments travel too
    run._checkpoint(state)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(payload) == FIELDS
    leaves = list(_walk({k: v for k, v in payload.items() if k != "settings"}))
    assert not any(isinstance(x, str) and x in ("bit_generator", "PCG64", "MT19937", "rng", "sampling", "noise")
                   for x in leaves)
    assert all(t.dtype == torch.float32 for t in payload["arrays"].values())  # weights, not a torch RNG state
    assert all(t.dtype == torch.float32 for t in payload["strategy_state"]["m_t"].values())
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(np.array_equal(loaded.arrays[k], state.arrays[k]) for k in state.arrays)
    assert loaded.ledger == state.ledger.state_dict() and loaded.noise_multiplier == state.noise_multiplier
    assert loaded.device_dir == run.device_dir and set(loaded.strategy_state) == {"m_t"}
    assert loaded.clipping_norm == settings.privacy.clipping_norm


class _Payload:
    """Unpickling this creates ``marker``: what a tampered checkpoint could do with a full unpickler."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_with_a_pickled_object_is_refused_and_its_payload_never_runs(tmp_path):
    honest = Checkpoint(round=1, arrays={"w": np.zeros(3, dtype=np.float32)}, ledger=PrivacyLedger().state_dict(),
                        noise_multiplier=1.0)
    save_checkpoint(tmp_path / "checkpoint.pt", honest)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    payload["rounds"] = [_Payload(str(tmp_path / "ran"))]
    torch.save(payload, tmp_path / "tampered.pt")

    torch.load(tmp_path / "tampered.pt", weights_only=False)  # a full unpickler runs the payload...
    assert (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint=.*tampered\.pt: refused, nothing in it was run"):
        load_checkpoint(tmp_path / "tampered.pt")  # ...the checkpoint loader never does
    assert not (tmp_path / "ran").exists()
    with pytest.raises(ConfigError, match="tampered.pt: refused"):
        check_checkpoint_file(str(tmp_path / "tampered.pt"))  # resume=true stops before anything starts (exit 2)
    assert not (tmp_path / "ran").exists()


def test_a_checkpoint_of_the_old_pickled_format_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "arrays": {"w": np.zeros(3, dtype=np.float32)},
                "rng": {"noise": np.random.default_rng(0).bit_generator.state}}, path)  # what version 1 wrote
    with pytest.raises(CheckpointError, match="old.pt"):
        load_checkpoint(path)
