"""Cold start: a sign-up questionnaire, a population prior, and an exploration mode for the first interactions.

SEED.md: a new user answers a short questionnaire, gets diverse first generations ("exploration mode"), and the
LSTM takes over after 3-5 interactions, starting from a population prior. The pieces:

1. ``questionnaire_distribution``: answers -> genre distribution. Rule (in logit space, then softmax):
   ``FAVOURITE_LOGIT`` for each favourite genre, plus the listening-time shift and the tempo shift of each genre
   (``TIME_SHIFT``, ``TEMPO_SHIFT``: calm genres gain at night and for slow tempo, energetic ones in the morning
   and for fast tempo).
2. ``population_prior``: what the global model predicts for a history of one ``generation_requested`` event at
   the user's local time, or ``marginal_prior``, the smoothed share of each genre among kept segments.
3. ``starting_preference``: the linear mixture ``w * questionnaire + (1 - w) * prior`` with
   ``w = questionnaire_weight`` (default 0.7): the user's own answers dominate, the prior fills in the genres they
   did not name, so none gets probability zero.
4. ``choose_genre``: during the first ``ExplorationConfig.interactions`` interactions a genre is *sampled* from the
   distribution sharpened or flattened by a temperature (``p^(1/T)``, renormalised), so first generations are
   diverse; afterwards the mode is taken. ``explored_preference`` pulls the distribution halfway to that genre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.features.encoding import encode_events

from model.features.examples import Examples
from model.log.events import Event
from model.log.vocab import GENRE_INDEX, GENRES
from model.network.networks import PreferenceLSTM

LISTENING_TIMES = ("morning", "daytime", "evening", "night")
TEMPOS = ("slow", "medium", "fast")
MAX_FAVOURITES = 3

FAVOURITE_LOGIT = 2.5
"""Logit bonus of each genre the user names as a favourite."""


def _per_genre(**values: float) -> np.ndarray:
    return np.array([values.get(genre, 0.0) for genre in GENRES])


TIME_SHIFT: dict[str, np.ndarray] = {
    "morning": _per_genre(pop=0.3, rock=0.1, electronic=0.1, folk=0.2, classical=0.1),
    "daytime": _per_genre(pop=0.3, rock=0.2, electronic=0.2, hiphop=0.2),
    "evening": _per_genre(jazz=0.3, rnb=0.3, folk=0.2, pop=0.1),
    "night": _per_genre(classical=0.5, jazz=0.5, folk=0.3, rnb=0.3, rock=-0.4, electronic=-0.3, hiphop=-0.3),
}
"""Genre-logit shift by the part of the day the user usually listens in (calm at night, brighter by day)."""

TEMPO_SHIFT: dict[str, np.ndarray] = {
    "slow": _per_genre(classical=0.6, jazz=0.4, folk=0.4, rnb=0.3, rock=-0.5, electronic=-0.5, hiphop=-0.2),
    "medium": _per_genre(pop=0.3, rnb=0.2, hiphop=0.2, folk=0.1, jazz=0.1),
    "fast": _per_genre(electronic=0.6, rock=0.6, pop=0.2, hiphop=0.2, classical=-0.5, folk=-0.3, jazz=-0.2),
}
"""Genre-logit shift by the tempo the user says they like."""

TEMPO_BPM = {"slow": 76.0, "medium": 104.0, "fast": 128.0}
"""Starting tempo for each tempo answer, before the user has set any BPM."""


@dataclass(frozen=True)
class Questionnaire:
    """The sign-up answers.

    Attributes:
        favourite_genres: one to three of ``GENRES``, most liked first.
        listening_time: one of ``LISTENING_TIMES``.
        tempo: one of ``TEMPOS``.
    """

    favourite_genres: tuple[str, ...]
    listening_time: str
    tempo: str

    def __post_init__(self) -> None:
        favourites = self.favourite_genres
        if not 1 <= len(favourites) <= MAX_FAVOURITES or len(set(favourites)) != len(favourites):
            raise ValueError(f"favourite_genres must name 1 to {MAX_FAVOURITES} different genres. Found {favourites!r}.")
        unknown = [g for g in favourites if g not in GENRE_INDEX]
        if unknown:
            raise ValueError(f"favourite_genres must be among {list(GENRES)}. Found {unknown!r}.")
        if self.listening_time not in LISTENING_TIMES:
            raise ValueError(f"listening_time must be one of {list(LISTENING_TIMES)}. Found {self.listening_time!r}.")
        if self.tempo not in TEMPOS:
            raise ValueError(f"tempo must be one of {list(TEMPOS)}. Found {self.tempo!r}.")

    @property
    def bpm(self) -> float:
        """The starting tempo the answers imply."""
        return TEMPO_BPM[self.tempo]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def _check_distribution(name: str, probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(GENRES),) or not np.all(probs >= 0.0) or not np.isclose(probs.sum(), 1.0, atol=1e-4):
        raise ValueError(f"{name} must be a distribution over the {len(GENRES)} genres (non-negative, sums to 1). "
                         f"Found {np.array2string(probs, precision=3)}.")
    return probs / probs.sum()


def questionnaire_distribution(answers: Questionnaire) -> np.ndarray:
    """Genre distribution ``[8]`` implied by the answers alone (rule in the module docstring)."""
    logits = TIME_SHIFT[answers.listening_time] + TEMPO_SHIFT[answers.tempo]
    for genre in answers.favourite_genres:
        logits[GENRE_INDEX[genre]] += FAVOURITE_LOGIT
    return _softmax(logits)


def population_prior(model: PreferenceLSTM, *, ts: float, utc_offset_min: int) -> np.ndarray:
    """The global model's distribution for a history of one ``generation_requested`` event at ``ts``.

    This is what the population predicts for anyone asking for music at that local hour and weekday. The model is
    put in evaluation mode.
    """
    event = Event(ts=ts, utc_offset_min=utc_offset_min, kind="generation_requested", prompt="")
    x = torch.from_numpy(encode_events([event])).unsqueeze(0)
    model.eval()
    return model.predict_proba(x, torch.tensor([1]))[0].numpy().astype(np.float64)


def marginal_prior(examples: Examples, *, smoothing: float = 1.0) -> np.ndarray:
    """Share of each genre among the examples' targets (next kept segments), Laplace-smoothed by ``smoothing``."""
    if smoothing <= 0.0 and len(examples) == 0:
        raise ValueError(f"marginal_prior needs examples or smoothing > 0. Found 0 examples and smoothing {smoothing}.")
    counts = np.bincount(examples.targets.numpy(), minlength=len(GENRES)).astype(np.float64) + smoothing
    return counts / counts.sum()


def starting_preference(answers: Questionnaire, prior: np.ndarray, *, questionnaire_weight: float = 0.7) -> np.ndarray:
    """``questionnaire_weight * questionnaire_distribution(answers) + (1 - questionnaire_weight) * prior``."""
    if not 0.0 <= questionnaire_weight <= 1.0:
        raise ValueError(f"questionnaire_weight must be in [0, 1]. Found {questionnaire_weight}.")
    prior = _check_distribution("prior", prior)
    return questionnaire_weight * questionnaire_distribution(answers) + (1.0 - questionnaire_weight) * prior


@dataclass(frozen=True)
class ExplorationConfig:
    """Attributes:
    interactions: how many first interactions explore (SEED.md: the model takes over after 3-5).
    temperature: > 1 flattens the distribution before sampling (more diverse), < 1 sharpens it.
    """

    interactions: int = 4
    temperature: float = 1.5

    def __post_init__(self) -> None:
        if self.interactions < 0:
            raise ValueError(f"exploration.interactions must be >= 0. Found {self.interactions}.")
        if not self.temperature > 0.0:
            raise ValueError(f"exploration.temperature must be > 0. Found {self.temperature}.")


@dataclass(frozen=True)
class GenreChoice:
    """Attributes:
    genre: the chosen genre.
    explored: True when it was sampled in exploration mode, False when it is the distribution's mode.
    """

    genre: str
    explored: bool


def is_exploring(interactions_done: int, config: ExplorationConfig) -> bool:
    """Whether the next interaction (after ``interactions_done`` of them) is still in exploration mode."""
    if interactions_done < 0:
        raise ValueError(f"interactions_done must be >= 0. Found {interactions_done}.")
    return interactions_done < config.interactions


def choose_genre(probs: np.ndarray, *, interactions_done: int, config: ExplorationConfig,
                 rng: np.random.Generator) -> GenreChoice:
    """The genre to generate next: sampled from ``probs^(1/T)`` while exploring, else the mode of ``probs``."""
    probs = _check_distribution("probs", probs)
    if not is_exploring(interactions_done, config):
        return GenreChoice(GENRES[int(np.argmax(probs))], explored=False)
    tempered = np.power(np.maximum(probs, 1e-12), 1.0 / config.temperature)
    return GenreChoice(GENRES[int(rng.choice(len(GENRES), p=tempered / tempered.sum()))], explored=True)


def explored_preference(probs: np.ndarray, genre: str) -> np.ndarray:
    """``probs`` pulled halfway to ``genre``, so the explored genre leads and the rest keep their order."""
    onehot = np.zeros(len(GENRES))
    onehot[GENRE_INDEX[genre]] = 1.0
    return 0.5 * onehot + 0.5 * np.asarray(probs, dtype=np.float64)
