"""A reproducible population of synthetic users with evolving music taste and their behaviour logs.

A user is built from ``(config.seed, user_id)`` alone, on demand, so a population of 100,000 users costs nothing
until a user is asked for, and user 7 is the same whether or not users 0-6 were built. Each purpose (taste,
habits, sessions) draws from its own random stream, so changing how sessions are simulated never changes a
user's taste.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from datetime import date, datetime, timezone

import numpy as np

from model.log.events import Event
from simulations.population.sessions import SegmentGenerator, default_generator, play_request
from simulations.population.taste import HiddenTaste, Taste, sample_hidden_taste
from simulations.population.world import World
from validation.config import check_range

TASTE_STREAM, HABITS_STREAM, SESSIONS_STREAM = 0, 1, 2
"""The ``purpose`` part of each user's seed ``[seed, user_id, purpose]``."""

TIME_ZONES_MIN = (-480, -300, 0, 60, 120, 330, 540)
TIME_ZONE_WEIGHTS = (0.15, 0.2, 0.1, 0.25, 0.1, 0.1, 0.1)
"""A few UTC offsets (Los Angeles, New York, London, Berlin, Helsinki, Delhi, Tokyo) and how common they are."""

LISTENING_PEAKS = ((7.5, 12.5), (10.0, 15.0), (18.5, 21.5), (22.0, 25.0), (8.5, 21.5))
"""Pairs of local hours around which a user's sessions cluster: morning, daytime, evening, night owl (25 = 1:00 the
next morning), split. Two peaks per user so most users listen in more than one part of the day."""

PRIMARY_PEAK_PROB = 0.6
OFF_PEAK_PROB = 0.15
"""Chance a session starts at any waking hour instead of near a peak: habits are not clockwork."""
PEAK_SD_HOURS = 1.5
WEEKEND_ACTIVITY = 1.3
ANOTHER_REQUEST_PROB = 0.4
MAX_REQUESTS_PER_SESSION = 5
SECONDS_PER_DAY = 86_400
MAX_USERS = 10_000_000


@dataclass(frozen=True)
class PopulationConfig:
    """How to generate a population.

    Attributes:
        seed: root of every random stream.
        num_users: population size; users are built lazily, so large values are cheap.
        days: length of every user's log.
        start_date: first simulated day, ISO ``YYYY-MM-DD``, starting at UTC midnight.
        world: the population's dynamics (personas, drift, rhythm, prompts); today's world by default.
    """

    seed: int = 0
    num_users: int = 1000
    days: int = 28
    start_date: str = "2026-09-07"
    world: World = World()

    def __post_init__(self) -> None:
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True, error=ValueError)
        check_range("num_users", self.num_users, 1, MAX_USERS, integer=True, error=ValueError)
        check_range("days", self.days, 1, 366, integer=True, error=ValueError)
        try:
            date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            raise ValueError(f"start_date must be an ISO date YYYY-MM-DD. Found {self.start_date!r}.") from None
        if not isinstance(self.world, World):
            raise ValueError(f"world must be a World. Found {self.world!r}.")

    @property
    def start_ts(self) -> int:
        """UTC seconds of the first simulated midnight."""
        day = date.fromisoformat(self.start_date)
        return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())

    @property
    def end_ts(self) -> int:
        """UTC seconds just after the last simulated day."""
        return self.start_ts + self.days * SECONDS_PER_DAY


class SyntheticUser:
    """One simulated listener: a hidden taste trajectory, listening habits and the behaviour log they produce.

    Attributes:
        user_id: position in the population.
        utc_offset_min: the user's fixed local offset from UTC.
        world: the dynamics of the user's population (how their prompts relate to their wants, ...).
    """

    def __init__(self, config: PopulationConfig, user_id: int) -> None:
        self.user_id = user_id
        self.world = config.world
        self._config = config
        self._start_ts, self._end_ts = config.start_ts, config.end_ts
        self._taste: HiddenTaste = sample_hidden_taste(
            _stream(config.seed, user_id, TASTE_STREAM), days=config.days, world=config.world)
        habits = _stream(config.seed, user_id, HABITS_STREAM)
        self.utc_offset_min = int(TIME_ZONES_MIN[habits.choice(len(TIME_ZONES_MIN), p=TIME_ZONE_WEIGHTS)])
        peaks = LISTENING_PEAKS[habits.integers(len(LISTENING_PEAKS))]
        self._peaks = peaks if habits.random() < 0.5 else peaks[::-1]
        self._session_rate = config.world.sessions_per_day * float(habits.gamma(4.0, 0.25))

    def taste_at(self, ts: float) -> Taste:
        """The user's hidden taste at UTC time ``ts``, read in their local time. For evaluation only."""
        local = ts + 60 * self.utc_offset_min
        return self._taste.at(
            local_day=(local - self._start_ts) / SECONDS_PER_DAY,
            hour=(local % SECONDS_PER_DAY) / 3600.0,
            weekday=(int(local // SECONDS_PER_DAY) + 3) % 7,  # 1970-01-01 was a Thursday
        )

    def true_preference(self, ts: float) -> np.ndarray:
        """Probability of wanting each genre (``GENRES`` order, sums to 1) at UTC time ``ts``."""
        return self.taste_at(ts).genre_probs

    def events(self, generator: SegmentGenerator = default_generator) -> list[Event]:
        """The user's whole behaviour log over the simulated days, in time order.

        Args:
            generator: the app's segment generation step; replace it to simulate a personalised app.

        Returns:
            Events of sessions that start inside ``[config.start_ts, config.end_ts)``; the last session may end
            a few minutes later.
        """
        rng = _stream(self._config.seed, self.user_id, SESSIONS_STREAM)
        integers, taste_at, offset, world = rng.integers, self.taste_at, self.utc_offset_min, self.world
        log: list[Event] = []
        # Local days one beyond each end, so every UTC day of the window is fully covered in any time zone.
        for day in range(-1, self._config.days + 1):
            for ts in self._session_starts(rng, day):
                for _ in range(self._requests_in_session(rng)):
                    pause = int(integers(30, 300))
                    if log:  # the next request, or a session overlapping the last one, waits for it to end
                        ts = max(ts, int(log[-1].ts) + pause)
                    log.extend(play_request(rng, taste=taste_at(ts), ts=ts, utc_offset_min=offset,
                                            generator=generator, history=log, world=world))
        return log

    def _session_starts(self, rng: np.random.Generator, day: int) -> list[int]:
        """UTC start times of the sessions on one local day that fall inside the simulated window."""
        local_midnight = self._start_ts + day * SECONDS_PER_DAY  # on the user's wall clock, not UTC
        weekday = (local_midnight // SECONDS_PER_DAY + 3) % 7
        rate = self._session_rate * (WEEKEND_ACTIVITY if weekday >= 5 else 1.0) * rng.gamma(2.0, 0.5)
        hours = []
        for _ in range(rng.poisson(rate)):
            if rng.random() < OFF_PEAK_PROB:
                hours.append(rng.uniform(7.0, 25.0))
            else:
                peak = self._peaks[0] if rng.random() < PRIMARY_PEAK_PROB else self._peaks[1]
                hours.append(rng.normal(peak, PEAK_SD_HOURS))
        starts = sorted(local_midnight - 60 * self.utc_offset_min + int(3600 * h) for h in hours)
        return [s for s in starts if self._start_ts <= s < self._end_ts]

    @staticmethod
    def _requests_in_session(rng: np.random.Generator) -> int:
        count = 1
        while count < MAX_REQUESTS_PER_SESSION and rng.random() < ANOTHER_REQUEST_PROB:
            count += 1
        return count


def _stream(seed: int, user_id: int, purpose: int) -> np.random.Generator:
    """The random stream of one purpose of one user, independent of every other user and purpose."""
    return np.random.default_rng([seed, user_id, purpose])


class Population:
    """A lazily built population: ``population.user(i)`` creates user ``i`` from the config alone.

    Holds no per-user state, so ``num_users`` can be large.
    """

    def __init__(self, config: PopulationConfig) -> None:
        self.config = config

    def __len__(self) -> int:
        return self.config.num_users

    def user(self, user_id: int) -> SyntheticUser:
        """Build user ``user_id``.

        Raises:
            TypeError: ``user_id`` is not an integer.
            IndexError: ``user_id`` is outside ``[0, num_users)``.
        """
        index = operator.index(user_id)
        if not 0 <= index < self.config.num_users:
            raise IndexError(f"user_id must be in range [0, {self.config.num_users}). Found {user_id!r}.")
        return SyntheticUser(self.config, index)
