"""The simulation's references on held-out examples: the rule baselines and the centrally trained model.

They exist because the users are synthetic and their logs can be pooled, which no deployment can do:
- ``global_most_popular``: always predict the genre most often kept by the federation's users;
- ``user_recent_most_frequent``: the genre the user kept most often within the window the model reads (ties go to
  the most recent; no kept segment in the window falls back to the global mode);
- ``named_else_recent``: the genre the request's prompt names, else the user's recent favourite (the arg-max of
  ``model.features.heuristic_prior``, which the residual model starts from);
- ``central_nonprivate``: the same model trained centrally, without privacy, on the federation users' pooled logs.
"""

from __future__ import annotations

import dataclasses

import torch

from model.features.encoding import GENRE, KIND

from model.features.examples import Examples
from model.features.heuristic_prior import prior_logits
from model.log.vocab import GENRES, KIND_INDEX
from model.network.batched_training import batchable, train_local_batched
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig, train_local


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
    """The non-private, centrally trained reference model: ``train_local``'s steps, taken by batched training
    (``model.network.batched_training``, one "user" holding the pooled examples) when the model allows it. That is
    the same training up to float rounding, over twice as fast here, and without ``torch.optim``'s first use, which
    imports ``torch._dynamo`` (~1 s; the simulation's baselines then take that much longer)."""
    torch.manual_seed(seed)
    model = PreferenceLSTM(model_config)
    generator = torch.Generator().manual_seed(seed)
    if batchable(model_config):
        (trained,), _ = train_local_batched(model, [train], config, generators=[generator])
        model.load_state_dict(trained)
    else:
        train_local(model, train, config, generator=generator)
    return model
