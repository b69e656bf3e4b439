"""The global models as they stand when the experiment's new users arrive, trained on the historic federation.

The historic federation is ``population.num_users`` synthetic users of ``population.seed`` whose logs come from the
unpersonalised app (``SyntheticUser.events()``); they are the users the project's federated run trains on. Two
models are trained on them, from the same initial weights:

* ``federated``: user-level DP-FedAvg, by the real Flower simulation (``simulations.run.run_federated_simulation``,
  engine "flower"), by the same code path in one process (engine "inprocess", ``simulations.federation.inprocess``),
  or loaded from the ``checkpoint.pt`` of an earlier ``python -m simulations.run`` (engine "checkpoint");
* ``central``: the non-private reference, trained on the pooled logs (``simulations.federation.references.train_central``) with
  the recipe of the federated run's own central baseline.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.features.examples import Examples
from model.network.networks import PreferenceLSTM
from server.checkpoint import load_checkpoint
from simulations.federation.references import train_central
from server.run_start import data_instructions
from server.settings import RunSettings
from simulations.federation.device_data import device_examples, population_items
from simulations.federation.inprocess import InProcessFederation
from simulations.federation.simulation_settings import population_config
from simulations.loop.experiment_settings import ExperimentSettings

Arrays = dict[str, np.ndarray]
Progress = Callable[[str], None]
CENTRAL_BATCH_SIZE, CENTRAL_LR = 64, 3e-3
"""The central reference's recipe (as ``server.federation``'s ``central_nonprivate`` baseline)."""
PRETRAIN_STREAM = 1


def initial_arrays(run: RunSettings) -> Arrays:
    """The global model's initial weights, as the federated run draws them (``torch.manual_seed(run.seed)``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        return {k: v.detach().numpy().copy() for k, v in PreferenceLSTM(run.model).state_dict().items()}


class HistoricExamples:
    """The historic users' training examples (each capped to its ``train.max_examples`` most recent), built once."""

    def __init__(self, run: RunSettings) -> None:
        self.data = data_instructions(run, population_items(population_config(run)))
        self.cap = run.train.max_examples
        self._cache: dict[int, Examples] = {}

    def __call__(self, user: int) -> Examples:
        if user not in self._cache:
            train = device_examples(self.data, user)[0]
            if self.cap and len(train) > self.cap:
                train = train.subset(slice(len(train) - self.cap, len(train)))
            self._cache[user] = train
        return self._cache[user]

    def pooled(self, num_users: int) -> Examples:
        return Examples.concat([self(u) for u in range(num_users)], self.data.window)


def _literal(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, (tuple, list)):  # e.g. the world's persona table, each persona a dataclass
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    if dataclasses.is_dataclass(value):
        return "{" + ", ".join(f"{f.name}: {_literal(getattr(value, f.name))}" for f in dataclasses.fields(value)) + "}"
    return repr(value)


def flower_overrides(run: RunSettings) -> list[str]:
    """Hydra overrides that make ``conf/config.yaml`` compose to exactly the settings in ``run``.

    The privacy group is chosen by mode (its file decides whether ``privacy.record`` exists), then every leaf of
    the sections a federated run reads is set with ``++`` (add or override).
    """
    overrides = [f"privacy={run.privacy.mode}"]

    def walk(value: object, key: str) -> None:
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
        else:
            overrides.append(f"++{key}={_literal(value)}")

    for section in ("seed", "train", "population", "model", "privacy", "strategy", "simulation"):
        walk(getattr(run, section), section)
    return overrides


def pretrain_federated(settings: ExperimentSettings, output_dir: Path, historic: HistoricExamples,
                       progress: Progress) -> tuple[Arrays, dict]:
    """The DP-FedAvg global model and the privacy report of its training (engines in the module docstring)."""
    run, pretrain = settings.run, settings.loop.pretrain
    started = time.perf_counter()
    if pretrain.engine == "checkpoint":
        checkpoint = load_checkpoint(pretrain.checkpoint)  # type: ignore[arg-type]
        progress(f"federated model: loaded {pretrain.checkpoint} (round {checkpoint.round})")
        return checkpoint.arrays, {"engine": "checkpoint", "checkpoint": pretrain.checkpoint, "rounds": checkpoint.round,
                                   "noise_multiplier": checkpoint.noise_multiplier, "ledger": checkpoint.ledger}
    if pretrain.engine == "flower":
        from simulations.run import run_federated_simulation  # heavy: Ray and Flower's simulation engine

        flower_dir = output_dir / "pretrain_flower"
        progress(f"federated model: real Flower simulation over {run.population.num_users} historic users, "
                 f"{run.simulation.rounds} rounds -> {flower_dir}")
        metrics = run_federated_simulation(flower_overrides(run), run, flower_dir)
        arrays = load_checkpoint(flower_dir / "checkpoint.pt").arrays
        noise = {k: metrics["privacy"][k] for k in ("noise", "warning") if k in metrics["privacy"]}
        report = {"engine": "flower", "output_dir": str(flower_dir), **(metrics["privacy"].get("user_level") or {}), **noise,
                  "held_out_top1": metrics["final"]["eval_top1"], "rounds_run": len(metrics["rounds"])}
        progress(f"federated model: done in {time.perf_counter() - started:.0f} s")
        return arrays, report
    federation = InProcessFederation(run, initial_arrays(run), num_users=run.population.num_users,
                                     sample_rate=run.simulation.sample_rate, planned_rounds=run.simulation.rounds,
                                     stream=PRETRAIN_STREAM)
    for _ in range(run.simulation.rounds):
        row = federation.round(historic)
        eps = f" · ε {row['epsilon']:.2f}" if row["epsilon"] is not None else ""
        progress(f"  pre-training round {row['round']}/{run.simulation.rounds} · {row['replies']} clients · "
                 f"loss {row['train_loss']:.3f}{eps} · {time.perf_counter() - started:.0f} s")
    return federation.arrays, {"engine": "inprocess", **federation.privacy_report()}


def pretrain_central(settings: ExperimentSettings, historic: HistoricExamples, progress: Progress) -> Arrays:
    """The non-private model trained on the pooled historic logs (same initial weights as the federated one)."""
    run = settings.run
    started = time.perf_counter()
    pooled = historic.pooled(run.population.num_users)
    config = dataclasses.replace(run.train, epochs=settings.loop.pretrain.central_epochs, batch_size=CENTRAL_BATCH_SIZE,
                                 lr=CENTRAL_LR, max_examples=0)
    model = train_central(pooled, run.model, config, run.seed)
    progress(f"central model: {len(pooled)} pooled historic examples, {config.epochs} epoch(s), "
             f"{time.perf_counter() - started:.0f} s")
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
