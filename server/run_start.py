"""Where a federated run starts: fresh weights and a calibrated noise multiplier, or an earlier run's checkpoint.

The noise multiplier is calibrated for everything the devices will release: the planned rounds and, when devices
score the final model (``evaluation_rate``), that one release too, so the run's one ledger covers both.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping

import torch
from flwr.serverapp.strategy import FedAvg

from model.network.networks import PreferenceLSTM
from privacy.banded_mf import participations
from privacy.contribution import STATISTICS
from privacy.plan import PrivacyPlan, plan_user_level
from protocol.instructions import DataInstructions, Scalar
from server.aggregation import load_strategy_state, new_ledger, noise_multiplier_for
from server.preflight import distributed_plan, model_parameters
from server.checkpoint import load_checkpoint
from server.run_state import RunState
from server.secagg import SecureAggregator
from server.settings import RunSettings, bands_of
from validation.config import ConfigError


def data_instructions(settings: RunSettings, population: Mapping[str, Scalar] | None = None) -> DataInstructions:
    """How clients cut their examples; ``population``: the synthetic population a simulation's nodes play (opaque
    entries, ``simulations.federation.device_data``), none on a deployment."""
    p = settings.population
    return DataInstructions(window=p.window, eval_fraction=p.client_eval_fraction, population=dict(population or {}))


def evaluation_rate(settings: RunSettings, population: int) -> float | None:
    """The Poisson rate at which devices score the final model (``simulation.final_eval_clients`` expected out of
    ``population``), or None when no federated evaluation runs: none asked for; secure aggregation (each device's
    scores would reach the server on their own); or a real deployment whose devices' scores no mechanism would cover
    (record-level DP alone protects training examples, not scores)."""
    privacy, clients = settings.privacy, settings.simulation.final_eval_clients
    if clients == 0 or population < 1 or settings.secagg.enabled:
        return None
    if settings.deployment.engine == "real" and privacy.record_level and not privacy.user_level:
        return None
    return min(1.0, clients / population)


def privacy_plan(settings: RunSettings, population: int) -> PrivacyPlan | None:
    """What ``fresh_state`` will calibrate for N = ``population`` users or nodes, as a plan (``privacy.plan``): z from
    the same ``noise_multiplier_for`` over the planned rounds and the devices' final evaluation, then ε, the noise per
    round and its ratio to the signal (over the model's coordinates) from ``privacy.plan``. None without user-level DP."""
    privacy, sim = settings.privacy, settings.simulation
    if not privacy.user_level:
        return None
    rate = evaluation_rate(settings, population)
    z = noise_multiplier_for(privacy, sample_rate=sim.sample_rate, rounds=sim.rounds, evaluation_rate=rate,
                             bands=bands_of(settings))
    d = model_parameters(settings)
    sensitivity = 0.0  # the plan's default: the clipped contribution's bound
    if settings.secagg.enabled:  # the quantised contribution's larger bound, as each SecAgg+ round noises it
        secure = SecureAggregator(settings.secagg, timeout_s=sim.round_timeout_s)
        sensitivity = secure.sensitivity(privacy.clipping_norm, d + len(STATISTICS))  # type: ignore[arg-type]
    bands = bands_of(settings) if privacy.banded else 0
    return plan_user_level(population=population, sample_rate=1.0 / bands if bands else sim.sample_rate,
                           rounds=sim.rounds, delta=privacy.delta, bands=bands,
                           clipping_norm=privacy.clipping_norm, accountant=privacy.accountant,  # type: ignore[arg-type]
                           target_epsilon=privacy.target_epsilon, noise_multiplier=z,
                           also=[(rate, 1)] if rate else [], parameters=d, sensitivity=sensitivity)


def fresh_state(settings: RunSettings, line: Callable[[str], None], *, population: int) -> RunState:
    """Round 0: the model initialised from the run seed, an empty ledger, z calibrated for the planned rounds (and
    the federated evaluation over ``population`` users or nodes), and a fresh random key for the run (the devices'
    ledgers count each run once by it)."""
    torch.manual_seed(settings.seed)
    arrays = {k: v.detach().numpy().copy() for k, v in PreferenceLSTM(settings.model).state_dict().items()}
    privacy, sim = settings.privacy, settings.simulation
    started = time.perf_counter()
    rate = evaluation_rate(settings, population)
    if privacy.user_level and not privacy.distributed:
        evaluation = " and the devices' final evaluation" if rate else ""
        line(f"user-level DP: calibrating the noise multiplier for ε={privacy.target_epsilon} over "
             f"{sim.rounds} rounds{evaluation} (up to a minute) ...")
    if privacy.distributed:
        plan = distributed_plan(settings, population)
        z = plan.noise_multiplier
        line(f"distributed DP: each device adds discrete Gaussian noise of variance {plan.device_variance} to its share "
             f"(scale {plan.scale:.4g}, modulus 2**{plan.bits}); {plan.min_survivors} surviving shares give noise "
             f"multiplier {z:.4f} for ε={privacy.target_epsilon} δ={privacy.delta:g} over {sim.rounds} rounds at "
             f"q={sim.sample_rate}; the sum wraps around the modulus with probability <= "
             f"{max(plan.wrap_probability(), 1e-300):.1g} a round ({time.perf_counter() - started:.1f} s)")
    else:
        z = noise_multiplier_for(privacy, sample_rate=sim.sample_rate, rounds=sim.rounds, evaluation_rate=rate,
                             bands=bands_of(settings))
    if z is not None and privacy.banded:
        bands = bands_of(settings)
        also = " and the final evaluation" if rate else ""
        line(f"user-level DP-FTRL (banded matrix factorisation, {bands} bands): noise multiplier z={z:.4f} calibrated for "
             f"ε={privacy.target_epsilon} δ={privacy.delta:g} over the {participations(sim.rounds, bands)} of "
             f"{sim.rounds} rounds a device can join{also}, no amplification by sampling ({privacy.accountant}, "
             f"{time.perf_counter() - started:.1f} s)")
    elif z is not None and not privacy.distributed:
        also = f" and the final evaluation at q={rate:.3g}" if rate else ""
        line(f"user-level DP: noise multiplier z={z:.4f} calibrated for ε={privacy.target_epsilon} δ={privacy.delta:g} "
             f"over {sim.rounds} rounds at q={sim.sample_rate}{also} ({privacy.accountant}, "
             f"{time.perf_counter() - started:.1f} s)")
    clipping_norm = privacy.clipping_norm if privacy.user_level else None
    return RunState(round=0, arrays=arrays, ledger=new_ledger(settings), noise_multiplier=z, clipping_norm=clipping_norm,
                    run_key=secrets.token_hex(16))


def resumed_state(settings: RunSettings, strategy: FedAvg) -> tuple[RunState, str]:
    """The checkpoint's state (the strategy's own state loaded into ``strategy``) and its devices' directory.

    Raises:
        ConfigError: if a privacy setting the ledger was accounted under differs now.
    """
    checkpoint = load_checkpoint(settings.checkpoint)  # type: ignore[arg-type]
    before, now = checkpoint.settings.get("privacy", {}), dataclasses.asdict(settings.privacy)
    for key in ("mode", "delta", "clipping_norm", "clipping", "accountant"):
        if before.get(key) != now.get(key):
            raise ConfigError(
                f"resume: privacy.{key} was {before.get(key)!r} in the checkpoint but is {now.get(key)!r} now; "
                "a run continues only under the privacy settings it was accounted with."
            )
    ledger = new_ledger(settings)
    ledger.load_state_dict(checkpoint.ledger)
    load_strategy_state(strategy, checkpoint.strategy_state)
    state = RunState(
        round=checkpoint.round, arrays=checkpoint.arrays, ledger=ledger, noise_multiplier=checkpoint.noise_multiplier,
        rounds=list(checkpoint.rounds), clipping_norm=checkpoint.clipping_norm, run_key=checkpoint.run_key,
    )
    return state, checkpoint.device_dir
