"""The honest yardstick: every simple rule a learned model must beat, scored on the same held-out points.

For the held-out synthetic users' latest prediction points (the ones ``simulations.federation.held_out.held_out_examples``
scores), with 95 % intervals from a bootstrap over users (one user's points are not independent):

- ``global_most_popular``: the genre the federation keeps most;
- ``recent_most_frequent``: the genre the user kept most in the window the model reads;
- ``named_else_recent``: the genre the prompt names, else the recent favourite (the intent-aware heuristic, and
  the arg-max of ``model.features.heuristic_prior``: what the residual model starts from);
- ``told_mood_map`` (reference, not a fair competitor): like ``named_else_recent``, but a prompt naming a mood
  picks the user's most frequent recent genre *of that mood*, using the simulator's own mood→genre map
  (the population world's ``genre_moods``), which no device knows;
- ``oracle`` (ceiling): the arg-max of the user's hidden taste at that moment among the genres the prompt allows
  (the named genre, the mood's genres, else all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.features.examples import prediction_points
from model.features.prompt_intent import CALM_MOODS, ENERGETIC_MOODS, parse_prompt
from model.log.events import Event
from model.log.vocab import GENRE_INDEX, GENRES
from simulations.population.population import Population
from simulations.population.world import World

MOOD_GROUP_OF_TAG = {**{tag: "calm" for tag in CALM_MOODS}, **{tag: "energetic" for tag in ENERGETIC_MOODS}}
"""How the prompt parser's mood tags map to the simulator's three moods; "focused" is the simulator's "steady"."""
MOOD_GROUP_OF_TAG["focused"] = "steady"


@dataclass(frozen=True)
class HeldOutPoints:
    """Per held-out prediction point: the user's index among the held-out users, the target, and each rule's guess."""

    user: np.ndarray
    target: np.ndarray
    predictions: dict[str, np.ndarray]


def _recent_favourite(kept: Sequence[int], allowed: Sequence[int] | None = None) -> int | None:
    """Most frequent of ``kept`` (oldest first) within ``allowed``; ties go to the most recently kept."""
    counts: dict[int, tuple[int, int]] = {}
    for position, genre in enumerate(kept):
        if allowed is None or genre in allowed:
            count, _ = counts.get(genre, (0, 0))
            counts[genre] = (count + 1, position)
    return max(counts, key=counts.__getitem__) if counts else None


def _mood_genres(prompt_moods: Sequence[str], world: World) -> list[int] | None:
    groups = {MOOD_GROUP_OF_TAG[tag] for tag in prompt_moods if tag in MOOD_GROUP_OF_TAG}
    if len(groups) != 1:
        return None
    (group,) = groups
    return [GENRE_INDEX[g] for g in GENRES if world.genre_moods.of(g) == group]


def score_rules(population: Population, user_ids: Sequence[int], *, window: int, points_per_user: int,
                global_mode: int) -> HeldOutPoints:
    """Every rule's guess at each user's latest ``points_per_user`` prediction points (as the server scores)."""
    users, targets = [], []
    guesses: dict[str, list[int]] = {name: [] for name in
                                     ("global_most_popular", "recent_most_frequent", "named_else_recent",
                                      "told_mood_map", "oracle")}
    for index, uid in enumerate(user_ids):
        user = population.user(uid)
        events: list[Event] = user.events()
        for row, target in prediction_points(events)[-points_per_user:]:
            request = events[row]
            intent = parse_prompt(request.prompt or "")
            start = max(0, row - window + 1)
            kept = [GENRE_INDEX[e.genre] for e in events[start:row] if e.kind == "segment_kept"]
            recent = _recent_favourite(kept)
            recent = global_mode if recent is None else recent
            named = [GENRE_INDEX[g] for g in intent.genres]
            mood_genres = _mood_genres(intent.moods, user.world)
            allowed = named or mood_genres or list(range(len(GENRES)))
            taste = user.true_preference(request.ts)
            users.append(index)
            targets.append(target)
            guesses["global_most_popular"].append(global_mode)
            guesses["recent_most_frequent"].append(recent)
            guesses["named_else_recent"].append(named[0] if named else recent)
            in_mood = _recent_favourite(kept, mood_genres) if mood_genres else None
            guesses["told_mood_map"].append(named[0] if named else in_mood if in_mood is not None else recent)
            guesses["oracle"].append(max(allowed, key=lambda g: taste[g]))
    return HeldOutPoints(np.array(users), np.array(targets), {k: np.array(v) for k, v in guesses.items()})


def bootstrap_interval(per_point: np.ndarray, user: np.ndarray, *, draws: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``per_point`` when users (not points) are resampled."""
    num_users = int(user.max()) + 1
    sums = np.bincount(user, weights=per_point, minlength=num_users)
    counts = np.bincount(user, minlength=num_users).astype(float)
    picks = np.random.default_rng(seed).integers(0, num_users, size=(draws, num_users))
    means = sums[picks].sum(axis=1) / np.maximum(counts[picks].sum(axis=1), 1.0)
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def model_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per point: 1.0 where the arg-max is right, and the negative log-likelihood of the target."""
    correct = (logits.argmax(dim=-1) == targets).double().numpy()
    nll = torch.nn.functional.cross_entropy(logits.double(), targets, reduction="none").numpy()
    return correct, nll


Row = dict[str, float | list[float] | None]


def summarise(correct: np.ndarray, user: np.ndarray, nll: np.ndarray | None = None) -> Row:
    """Top-1 with its interval, and the mean NLL where the rule gives a distribution."""
    return {"top1": float(correct.mean()), "top1_ci": list(bootstrap_interval(correct, user)),
            "nll": None if nll is None else float(nll.mean())}


def rule_rows(points: HeldOutPoints) -> dict[str, Row]:
    """Each rule's row (rules give no distribution, so no NLL)."""
    return {name: summarise((guess == points.target).astype(float), points.user)
            for name, guess in points.predictions.items()}
