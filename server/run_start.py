"""Where a federated run starts: fresh weights and a calibrated noise multiplier, or an earlier run's checkpoint."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

import torch
from flwr.serverapp.strategy import FedAvg

from model.network.networks import PreferenceLSTM
from privacy.accounting import PrivacyLedger
from protocol.instructions import DataInstructions, Scalar
from server.aggregation import load_strategy_state, noise_multiplier_for
from server.checkpoint import load_checkpoint
from server.run_state import RunState
from server.settings import RunSettings
from validation.config import ConfigError


def data_instructions(settings: RunSettings, population: Mapping[str, Scalar] | None = None) -> DataInstructions:
    """How clients cut their examples; ``population``: the synthetic population a simulation's nodes play (opaque
    entries, ``simulations.federation.device_data``), none on a deployment."""
    p = settings.population
    return DataInstructions(window=p.window, eval_fraction=p.client_eval_fraction, population=dict(population or {}))


def fresh_state(settings: RunSettings, line: Callable[[str], None]) -> RunState:
    """Round 0: the model initialised from the run seed, an empty ledger, z calibrated for the planned rounds."""
    torch.manual_seed(settings.seed)
    arrays = {k: v.detach().numpy().copy() for k, v in PreferenceLSTM(settings.model).state_dict().items()}
    privacy, sim = settings.privacy, settings.simulation
    started = time.perf_counter()
    if privacy.user_level:
        line(f"user-level DP: calibrating the noise multiplier for ε={privacy.target_epsilon} over "
             f"{sim.rounds} rounds (Opacus' search; up to a minute) ...")
    z = noise_multiplier_for(privacy, sample_rate=sim.sample_rate, rounds=sim.rounds)
    if z is not None:
        line(f"user-level DP: noise multiplier z={z:.4f} calibrated for ε={privacy.target_epsilon} δ={privacy.delta:g} "
             f"over {sim.rounds} rounds at q={sim.sample_rate} ({privacy.accountant}, {time.perf_counter() - started:.1f} s)")
    return RunState(round=0, arrays=arrays, ledger=PrivacyLedger(), noise_multiplier=z)


def resumed_state(settings: RunSettings, strategy: FedAvg) -> tuple[RunState, str]:
    """The checkpoint's state (the strategy's own state loaded into ``strategy``) and its devices' directory.

    Raises:
        ConfigError: if a privacy setting the ledger was accounted under differs now.
    """
    checkpoint = load_checkpoint(settings.checkpoint)  # type: ignore[arg-type]
    before, now = checkpoint.settings.get("privacy", {}), dataclasses.asdict(settings.privacy)
    for key in ("mode", "delta", "clipping_norm", "accountant"):
        if before.get(key) != now.get(key):
            raise ConfigError(
                f"resume: privacy.{key} was {before.get(key)!r} in the checkpoint but is {now.get(key)!r} now; "
                "a run continues only under the privacy settings it was accounted with."
            )
    ledger = PrivacyLedger()
    ledger.load_state_dict(checkpoint.ledger)
    load_strategy_state(strategy, checkpoint.strategy_state)
    state = RunState(
        round=checkpoint.round, arrays=checkpoint.arrays, ledger=ledger, noise_multiplier=checkpoint.noise_multiplier,
        rounds=list(checkpoint.rounds), record_epsilon=dict(checkpoint.record_epsilon),
    )
    return state, checkpoint.device_dir
