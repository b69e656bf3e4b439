"""Scoring the global prior on held-out synthetic users, next to the baselines it must beat.

Held-out users (ids ``num_users .. num_users + eval_users - 1``) never train. The baselines:
- ``global_most_popular``: always predict the genre most often kept by the federation's users;
- ``user_recent_most_frequent``: the genre the user kept most often within the window the model reads (ties go to
  the most recent; no kept segment in the window falls back to the global mode);
- ``named_else_recent``: the genre the request's prompt names, else the user's recent favourite (the arg-max of
  ``model.heuristic_prior``, which the residual model starts from);
- ``central_nonprivate``: the same model trained centrally, without privacy, on the federation users' pooled logs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from client.instructions import DataInstructions
from client.simulated_device import device_examples
from model.encoding import GENRE, KIND, Examples
from model.heuristic_prior import prior_logits
from model.networks import ModelConfig, PreferenceLSTM
from model.training import LocalTrainConfig, evaluate, train_local
from model.vocab import GENRES, KIND_INDEX
from server.settings import RunSettings


def held_out_examples(data: DataInstructions, user_ids: range, points_per_user: int) -> Examples:
    """The ``points_per_user`` most recent prediction points of each held-out user (with their full history
    window: these users never train). Recent points score the model where tastes have drifted furthest."""
    parts = []
    for uid in user_ids:
        train, recent = device_examples(data, uid)
        both = Examples.concat([train, recent], data.window)
        parts.append(both.subset(slice(max(0, len(both) - points_per_user), len(both))))
    return Examples.concat(parts, data.window)


def federation_examples(data: DataInstructions, user_ids: range, max_per_user: int = 0) -> Examples:
    """The training parts of the federation users' logs (each capped to its ``max_per_user`` most recent points,
    as the clients train), pooled: what a central server would have seen."""
    parts = []
    for uid in user_ids:
        train = device_examples(data, uid)[0]
        if max_per_user:
            train = train.subset(slice(max(0, len(train) - max_per_user), len(train)))
        parts.append(train)
    return Examples.concat(parts, data.window)


def global_mode_top1(train_targets: torch.Tensor, examples: Examples) -> tuple[int, float]:
    mode = int(torch.bincount(train_targets, minlength=len(GENRES)).argmax())
    return mode, float((examples.targets == mode).float().mean())


def recent_mode_predictions(examples: Examples, fallback: int) -> torch.Tensor:
    """Most frequent kept genre in each window (ties: the most recently kept of them)."""
    kept = examples.x[..., KIND.start + KIND_INDEX["segment_kept"]] > 0.5  # [N, T]
    genres = examples.x[..., GENRE.start : GENRE.start + len(GENRES)] * kept.unsqueeze(-1)  # [N, T, 8]
    counts = genres.sum(dim=1)
    steps = torch.arange(examples.x.shape[1], dtype=torch.float32)
    last_seen = (genres * (steps + 1).view(1, -1, 1)).amax(dim=1)  # position of each genre's latest keep
    score = counts * (examples.x.shape[1] + 1) + last_seen
    predictions = score.argmax(dim=-1)
    predictions[counts.sum(dim=-1) == 0] = fallback
    return predictions


def recent_mode_top1(examples: Examples, fallback: int) -> float:
    return float((recent_mode_predictions(examples, fallback) == examples.targets).float().mean())


def named_else_recent_top1(examples: Examples) -> float:
    last_rows = examples.x[torch.arange(len(examples)), examples.lengths - 1]
    return float((prior_logits(last_rows).argmax(dim=-1) == examples.targets).float().mean())


def central_config(train: LocalTrainConfig, epochs: int) -> LocalTrainConfig:
    """The central reference's training: Adam at 3e-3 in batches of 64 over every pooled point (a non-private model
    may use what DP-FedAvg cannot: many steps with an adaptive optimizer)."""
    return dataclasses.replace(train, epochs=epochs, batch_size=64, lr=3e-3, optimizer="adam", max_examples=0)


def train_central(train: Examples, model_config: ModelConfig, config: LocalTrainConfig, seed: int) -> PreferenceLSTM:
    """The non-private, centrally trained reference model."""
    torch.manual_seed(seed)
    model = PreferenceLSTM(model_config)
    train_local(model, train, config, generator=torch.Generator().manual_seed(seed))
    return model


def score(model: PreferenceLSTM, examples: Examples) -> dict[str, float]:
    result = evaluate(model, examples)
    return {"top1": result.top1, "nll": result.nll}


def baselines(settings: RunSettings, data: DataInstructions, held_out: Examples,
              report: Callable[[str], None]) -> dict[str, float | None]:
    """The baselines' held-out top-1, from the logs of the first ``simulation.baseline_users`` federation users
    (users are drawn independently, so the first N are a sample); ``report`` gets a line on the central model."""
    cap, total = settings.simulation.baseline_users, settings.population.num_users
    pooled = federation_examples(data, range(min(cap, total) if cap else total), settings.train.max_examples)
    mode, global_top1 = global_mode_top1(pooled.targets, held_out)
    out: dict[str, float | None] = {
        "global_most_popular": global_top1,
        "user_recent_most_frequent": recent_mode_top1(held_out, mode),
        "named_else_recent": named_else_recent_top1(held_out),
        "central_nonprivate": None,
    }
    epochs = settings.simulation.central_baseline_epochs
    if epochs > 0:
        started = time.perf_counter()
        report(f"central non-private baseline: training on {len(pooled)} pooled examples for {epochs} epoch(s) ...")
        config = central_config(settings.train, epochs)
        central = train_central(pooled, settings.model, config, settings.seed)
        out["central_nonprivate"] = score(central, held_out)["top1"]
        report(f"central non-private baseline: {len(pooled)} pooled examples, {epochs} epoch(s), {time.perf_counter() - started:.0f} s")
    return out
