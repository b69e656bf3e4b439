"""The hidden taste of one synthetic user: what they truly like at any moment of the simulation.

SEED.md describes preference as a trajectory, not a label: electronic last week, folk guitar this week; steady
music by day, calm music at night; jazz every weekend. A user's taste here is a mixture of one or two personas plus
personal noise, which then drifts slowly week by week, may switch abruptly to another persona on one day, leans
calmer at night and, for some users, towards one genre at weekends. The persona table and the strength of each
of these come from the population's ``World`` (``simulations/population/world.py``).

The taste drives simulated behaviour and is the ground truth of evaluation; it never appears in events.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.log.vocab import GENRE_INDEX, GENRES, INSTRUMENT_INDEX, INSTRUMENTS
from simulations.population.world import Persona, World


def _per_genre(**values: float) -> tuple[float, ...]:
    """Values in ``GENRES`` order from keywords; genres not named get 0."""
    return tuple(values.get(genre, 0.0) for genre in GENRES)


NIGHT_SHIFT = _per_genre(pop=-0.3, rock=-0.8, classical=1.0, electronic=-0.7, jazz=0.8, folk=0.6, rnb=0.3, hiphop=-0.6)
"""Genre-logit shift per unit of night-ness: calm genres gain at night and lose by day, energetic ones the reverse."""

NIGHT_PEAK_HOUR = 1.0
"""Local hour at the middle of the night; full daytime is twelve hours later."""

NIGHT_GENRE_CHOICES = ("classical", "jazz", "folk", "rnb")
"""Each user's own late-night favourite is one of these, on top of the shared ``NIGHT_SHIFT``."""

NIGHT_GENRE_BONUS = 0.8
NIGHT_BPM_DROP = 6.0
"""BPM by which a user of rhythm 1 slows down at night (and speeds up by day)."""

WEEKEND_GENRE_WEIGHTS = _per_genre(pop=0.05, rock=0.15, classical=0.1, electronic=0.15, jazz=0.35, folk=0.1,
                                      rnb=0.05, hiphop=0.05)
"""Which genre becomes a weekend habit; jazz most often, as in the seed's "jazz every weekend"."""

WEEKEND_BONUS = 2.2
"""Genre-logit bonus of the weekend genre on Saturdays and Sundays: strong enough to usually win."""
PERSONAL_NOISE_SD = 0.5
"""Spread of each user's own genre and instrument logits around their persona mixture."""
PERSONAL_BPM_SD = 6.0

SWITCHED_PERSONA_WEIGHT = 0.75
"""Share of the new persona in a user's taste after an abrupt switch; the old taste keeps the rest."""

INSTRUMENT_LIKED_LOGIT = 1.5
"""Logit of wanting an instrument all of a user's personas like; one none of them like gets the negative."""
DAYS_PER_KNOT = 7.0
"""Drift is a random walk with one step per week, linearly interpolated in between, so taste changes smoothly."""


def night_ness(hour: float) -> float:
    """+1 at night (about 22:00-04:00), -1 by day (about 10:00-16:00), smooth in between.

    A clipped, steepened cosine rather than a plain one, so evening and morning are clearly night or day and
    only dusk and dawn are in between.
    """
    return min(max(1.5 * math.cos(2.0 * math.pi * (hour - NIGHT_PEAK_HOUR) / 24.0), -1.0), 1.0)


@dataclass(frozen=True, eq=False)
class Taste:
    """What a user likes at one moment. Arrays are read-only.

    Attributes:
        genre_probs: probability of wanting each genre, in ``GENRES`` order; sums to 1.
        bpm_mean: preferred tempo.
        bpm_sd: tolerance around the preferred tempo.
        instrument_probs: independent probability, per instrument in ``INSTRUMENTS`` order, that the user wants it
            in a piece (they do not sum to 1).
    """

    genre_probs: np.ndarray
    bpm_mean: float
    bpm_sd: float
    instrument_probs: np.ndarray


@dataclass(frozen=True, eq=False)
class _Phase:
    """The stable part of a taste between abrupt switches."""

    genre_logits: np.ndarray
    bpm_mean: float
    bpm_sd: float
    instrument_probs: np.ndarray


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _softmax(logits: list[float]) -> np.ndarray:
    """Probabilities from logits, shifted by their maximum so that ``exp`` cannot overflow.

    ``np.add.reduce`` is what ``exp.sum()`` calls, without the method's Python wrapper; numpy's ``exp`` stays, as
    ``math.exp`` may differ from it in the last bit.
    """
    top = max(logits)
    exp = np.exp([logit - top for logit in logits])
    exp /= _add_reduce(exp)
    return exp


_add_reduce = np.add.reduce


def _persona_phase(personas: Sequence[Persona], weights: np.ndarray, noise: np.ndarray, bpm_offset: float,
                   instrument_noise: np.ndarray) -> _Phase:
    """Mix ``personas`` by ``weights`` and add the user's personal deviations."""
    logits = np.array([p.genre_logits.values() for p in personas]).T @ weights + noise
    liked = np.zeros(len(INSTRUMENTS))
    for persona, weight in zip(personas, weights):
        for name in persona.instruments:
            liked[INSTRUMENT_INDEX[name]] += weight
    instrument_logits = INSTRUMENT_LIKED_LOGIT * (2.0 * liked - 1.0) + instrument_noise
    return _Phase(
        genre_logits=_read_only(logits),
        bpm_mean=float(sum(w * p.bpm_mean for w, p in zip(weights, personas))) + bpm_offset,
        bpm_sd=float(sum(w * p.bpm_sd for w, p in zip(weights, personas))),
        instrument_probs=_read_only(1.0 / (1.0 + np.exp(-instrument_logits))),
    )


@dataclass(frozen=True, eq=False)
class HiddenTaste:
    """One user's taste trajectory, queried in the user's local time.

    Attributes:
        before: the taste until ``switch_day``.
        after: the taste from ``switch_day`` on (the same object as ``before`` when the user never switches).
        switch_day: local day index (0 = the first simulated day) of the abrupt switch, or ``None``.
        drift_knots: genre-logit offsets at weekly knots, shape (knots, 8), linearly interpolated between knots.
        rhythm: how strongly the hour of day moves this user's taste (0 = not at all).
        night_shift: per-genre logit shift at full night-ness, including the user's own night genre.
        weekend_genre: index of the genre favoured on Saturdays and Sundays, or ``None``.
    """

    before: _Phase
    after: _Phase
    switch_day: int | None
    drift_knots: np.ndarray
    rhythm: float
    night_shift: np.ndarray
    weekend_genre: int | None

    def at(self, *, local_day: float, hour: float, weekday: int) -> Taste:
        """The taste at a local moment.

        Args:
            local_day: days since the first simulated local midnight, fractional.
            hour: local hour of day in [0, 24).
            weekday: 0 = Monday ... 6 = Sunday.
        """
        phase = self.after if self.switch_day is not None and local_day >= self.switch_day else self.before
        lists = self._lists
        knot = min(max(local_day / DAYS_PER_KNOT, 0.0), lists.last_knot)
        low = min(int(knot), lists.last_low)
        frac = knot - low
        keep = 1.0 - frac
        night = self.rhythm * night_ness(hour)
        # genre_logits + drift + night * night_shift, the drift interpolated between two weekly knots; on plain
        # floats, which for eight genres are cheaper than arrays and round exactly alike.
        logits = [base + (keep * d0 + frac * d1) + night * shift
                  for base, d0, d1, shift in zip(lists.genre_logits[phase is self.after], lists.drift[low],
                                                 lists.drift[low + 1], lists.night_shift)]
        if self.weekend_genre is not None and weekday >= 5:
            logits[self.weekend_genre] += WEEKEND_BONUS
        return Taste(
            genre_probs=_read_only(_softmax(logits)),
            bpm_mean=phase.bpm_mean - NIGHT_BPM_DROP * night,
            bpm_sd=phase.bpm_sd,
            instrument_probs=phase.instrument_probs,
        )

    @functools.cached_property
    def _lists(self) -> _TasteLists:
        """The arrays ``at`` reads, once as plain floats: ``at`` runs once per simulated request."""
        knots = len(self.drift_knots)
        return _TasteLists(
            genre_logits=(self.before.genre_logits.tolist(), self.after.genre_logits.tolist()),
            drift=self.drift_knots.tolist(),
            night_shift=self.night_shift.tolist(),
            last_knot=knots - 1.0,
            last_low=knots - 2,
        )


@dataclass(frozen=True)
class _TasteLists:
    """A ``HiddenTaste``'s arrays as lists of floats (same values), and its last drift knot and interval.

    Attributes:
        genre_logits: (before, after) the switch; both the same values when the user never switches.
    """

    genre_logits: tuple[list[float], list[float]]
    drift: list[list[float]]
    night_shift: list[float]
    last_knot: float
    last_low: int


def _persona_weights(rng: np.random.Generator, personas: Sequence[Persona]) -> np.ndarray:
    """One or two personas (half the users each), drawn by popularity, with a Dirichlet split when two."""
    popularity = np.array([p.popularity for p in personas])
    count = 1 + int(rng.random() < 0.5)
    chosen = rng.choice(len(personas), size=count, replace=False, p=popularity / popularity.sum())
    weights = np.zeros(len(personas))
    weights[chosen] = rng.dirichlet(np.full(count, 2.0))
    return weights


def sample_hidden_taste(rng: np.random.Generator, *, days: int, world: World) -> HiddenTaste:
    """Draw one user's taste trajectory.

    Args:
        rng: the user's own taste stream, so a user's taste does not depend on anything else.
        days: simulated days; drift knots cover them plus a week of margin for time zones.
        world: the persona table and the strengths of drift, switches, daily rhythm (each user's is
            Gamma-distributed around ``world.rhythm_strength``) and weekend habits.
    """
    weights = _persona_weights(rng, world.personas)
    noise = rng.normal(0.0, PERSONAL_NOISE_SD, len(GENRES))
    instrument_noise = rng.normal(0.0, PERSONAL_NOISE_SD, len(INSTRUMENTS))
    before = _persona_phase(world.personas, weights, noise, float(rng.normal(0.0, PERSONAL_BPM_SD)), instrument_noise)

    after, switch_day = before, None
    if rng.random() < world.switch_prob:
        # The new favourite is a persona the user did not already like; the old taste lingers a little.
        candidates = np.flatnonzero(weights == 0.0)
        new_weights = (1.0 - SWITCHED_PERSONA_WEIGHT) * weights
        new_weights[candidates[rng.integers(len(candidates))]] += SWITCHED_PERSONA_WEIGHT
        after = _persona_phase(world.personas, new_weights, noise, float(rng.normal(0.0, PERSONAL_BPM_SD)), instrument_noise)
        switch_day = int(rng.integers(days // 8, days - days // 8))  # away from the edges: both tastes get seen

    knots = int(math.ceil(days / DAYS_PER_KNOT)) + 2
    steps = rng.normal(0.0, world.drift_strength, (knots, len(GENRES)))
    steps[0] = 0.0
    night_shift = np.array(NIGHT_SHIFT)
    night_shift[GENRE_INDEX[NIGHT_GENRE_CHOICES[rng.integers(len(NIGHT_GENRE_CHOICES))]]] += NIGHT_GENRE_BONUS

    weekend_genre = None
    if rng.random() < world.weekend_habit_prob:
        weekend_weights = np.array(WEEKEND_GENRE_WEIGHTS)
        weekend_genre = int(rng.choice(len(GENRES), p=weekend_weights / weekend_weights.sum()))
    return HiddenTaste(
        before=before,
        after=after,
        switch_day=switch_day,
        drift_knots=_read_only(np.cumsum(steps, axis=0)),
        rhythm=float(world.rhythm_strength * rng.gamma(2.0, 0.5)),
        night_shift=_read_only(night_shift),
        weekend_genre=weekend_genre,
    )
