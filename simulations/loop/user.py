"""What a synthetic user does in the closed loop besides judging: habits, sign-up answers, prompts, edits, returning.

Each user is a ``SyntheticUser`` of ``simulations.population.population`` (hidden taste, time zone). On top of it the loop
draws, from the user's own random streams:

* listening habits: two peak hours of the day (``LISTENING_PEAKS``), used to place sessions and to answer the
  questionnaire's "when do you usually listen";
* the sign-up questionnaire: favourite genres are the user's most liked genres over their first day (taken until
  they cover 60 % of it, at most three), the listening time is their main peak, the tempo answer is their
  preferred BPM (slow < 92, fast >= 118); answers are honest but coarse;
* a prompt per request: vague ("surprise me"), a mood that fits the wanted genre ("something relaxing") or naming
  the wanted genre ("I feel like jazz"), with the chances of the world's ``prompt_mix``;
* edits after an unsatisfying piece: pick the wanted style when the genre is wrong, set a tempo near their own when
  the tempo misses, switch one instrument (the least wanted one heard off, else the most wanted one missing on)
  when the instruments miss;
* coming back: on each day after sign-up the user opens the app with a probability that grows with their recent
  experience (``return_probability``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from generation.cold_start import MAX_FAVOURITES, Questionnaire
from generation.generators import SegmentDescriptor
from model.log.vocab import BPM_MAX, BPM_MIN, GENRES, INSTRUMENT_INDEX, INSTRUMENTS
from simulations.loop.judging import Judgement
from simulations.loop.experiment_settings import BehaviourSettings
from simulations.population.population import (
    ANOTHER_REQUEST_PROB,
    LISTENING_PEAKS,
    MAX_REQUESTS_PER_SESSION,
    OFF_PEAK_PROB,
    PEAK_SD_HOURS,
    PRIMARY_PEAK_PROB,
    SyntheticUser,
)
from simulations.population.sessions import GENRE_INSTRUMENTS, GENRE_PROMPTS, GENRE_WORDS, MOOD_PROMPTS, VAGUE_PROMPTS
from simulations.population.taste import Taste
from simulations.population.world import World

PROMPT_KINDS = ("vague", "mood", "genre")
FAVOURITE_COVERAGE = 0.6
SLOW_BELOW_BPM, FAST_FROM_BPM = 92.0, 118.0
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Habits:
    """When a user listens: two peak local hours, the first the main one."""

    peaks: tuple[float, float]


def draw_habits(rng: np.random.Generator) -> Habits:
    """One user's listening peaks."""
    peaks = LISTENING_PEAKS[int(rng.integers(len(LISTENING_PEAKS)))]
    return Habits(peaks if rng.random() < 0.5 else (peaks[1], peaks[0]))


def _listening_time(hour: float) -> str:
    hour %= 24.0
    if 5.0 <= hour < 11.0:
        return "morning"
    if 11.0 <= hour < 17.0:
        return "daytime"
    if 17.0 <= hour < 22.0:
        return "evening"
    return "night"


def questionnaire_answers(user: SyntheticUser, habits: Habits, signup_midnight_ts: int) -> Questionnaire:
    """The user's honest, coarse sign-up answers (rule in the module docstring)."""
    local_midnight = signup_midnight_ts - 60 * user.utc_offset_min
    tastes = [user.taste_at(local_midnight + 3600 * hour) for hour in (3, 9, 15, 21)]
    probs = np.mean([t.genre_probs for t in tastes], axis=0)
    favourites: list[str] = []
    for index in np.argsort(-probs, kind="stable")[:MAX_FAVOURITES]:
        favourites.append(GENRES[int(index)])
        if probs[[GENRES.index(g) for g in favourites]].sum() >= FAVOURITE_COVERAGE:
            break
    bpm = float(np.mean([t.bpm_mean for t in tastes]))
    tempo = "slow" if bpm < SLOW_BELOW_BPM else "fast" if bpm >= FAST_FROM_BPM else "medium"
    return Questionnaire(tuple(favourites), _listening_time(habits.peaks[0]), tempo)


def draw_want(rng: np.random.Generator, taste: Taste) -> str:
    """The genre the user has in mind for one request, drawn from their taste at that moment."""
    return GENRES[int(rng.choice(len(GENRES), p=taste.genre_probs))]


def draw_prompt(rng: np.random.Generator, want: str, world: World) -> tuple[str, str]:
    """(kind, text) of the user's prompt, drawn with the world's prompt mix; kind is one of ``PROMPT_KINDS``."""
    mix = np.asarray(world.prompt_mix.probs())
    kind = PROMPT_KINDS[int(rng.choice(len(PROMPT_KINDS), p=mix / mix.sum()))]
    if kind == "vague":
        return kind, VAGUE_PROMPTS[int(rng.integers(len(VAGUE_PROMPTS)))]
    if kind == "mood":
        options = MOOD_PROMPTS[world.genre_moods.of(want)]
        return kind, options[int(rng.integers(len(options)))]
    instrument = GENRE_INSTRUMENTS[want][int(rng.integers(len(GENRE_INSTRUMENTS[want])))].replace("_", " ")
    template = GENRE_PROMPTS[int(rng.integers(len(GENRE_PROMPTS)))]
    return kind, template.format(genre=GENRE_WORDS[want], instrument=instrument)


def day_request_times(rng: np.random.Generator, habits: Habits, local_midnight_ts: int, utc_offset_min: int,
                      behaviour: BehaviourSettings) -> list[int]:
    """UTC times of the requests on a day the user opens the app: 1 + Poisson sessions, 1-5 requests each."""
    times: list[int] = []
    for _ in range(1 + int(rng.poisson(behaviour.extra_sessions_mean))):
        if rng.random() < OFF_PEAK_PROB:
            hour = rng.uniform(7.0, 25.0)
        else:
            hour = rng.normal(habits.peaks[0] if rng.random() < PRIMARY_PEAK_PROB else habits.peaks[1], PEAK_SD_HOURS)
        hour = min(max(hour, 0.0), 27.0)  # within the local day or the small hours after it
        start = local_midnight_ts - 60 * utc_offset_min + int(3600 * hour)
        count = 1
        while count < MAX_REQUESTS_PER_SESSION and rng.random() < ANOTHER_REQUEST_PROB:
            count += 1
        times.extend(start + 240 * k for k in range(count))  # later requests wait for earlier ones anyway
    return sorted(times)


@dataclass
class Edits:
    """The user's changes within one request, applied to every later generation of it."""

    style: str | None = None
    bpm: float | None = None
    toggles: list[tuple[str, bool]] = field(default_factory=list)


@dataclass(frozen=True)
class EditAction:
    """One edit, as it goes into the log: kind is "style_chosen", "bpm_set" or "instrument_toggled"."""

    kind: str
    genre: str | None = None
    bpm: float | None = None
    direction: str | None = None
    instrument: str | None = None
    enabled: bool | None = None


def choose_edits(rng: np.random.Generator, judgement: Judgement, piece: SegmentDescriptor, taste: Taste, want: str,
                 edits: Edits) -> list[EditAction]:
    """The edits the user makes after an unsatisfying piece (rules in the module docstring); updates ``edits``."""
    actions: list[EditAction] = []
    if judgement.genre < 0.5:
        edits.style = want
        actions.append(EditAction("style_chosen", genre=want))
    if judgement.tempo < 0.5:
        target = float(round(min(max(rng.normal(taste.bpm_mean, taste.bpm_sd / 2.0), BPM_MIN), BPM_MAX)))
        if abs(target - piece.bpm) >= 3.0:
            edits.bpm = target
            actions.append(EditAction("bpm_set", bpm=target, direction="up" if target > piece.bpm else "down"))
    if judgement.instruments < 0.5:
        heard = set(piece.instruments)
        wanted = {name: float(taste.instrument_probs[INSTRUMENT_INDEX[name]]) for name in INSTRUMENTS}
        worst = min(heard, key=lambda name: wanted[name]) if heard else None
        missing = [name for name in INSTRUMENTS if name not in heard]
        best = max(missing, key=lambda name: wanted[name]) if missing else None
        if worst is not None and len(heard) > 1 and wanted[worst] < 0.5:
            edits.toggles.append((worst, False))
            actions.append(EditAction("instrument_toggled", instrument=worst, enabled=False))
        elif best is not None and wanted[best] > 0.5:
            edits.toggles.append((best, True))
            actions.append(EditAction("instrument_toggled", instrument=best, enabled=True))
    return actions


def return_probability(experience: float, behaviour: BehaviourSettings) -> float:
    """Daily chance of opening the app: ``base + slope * (experience - pivot)``, clipped to [min, max]."""
    p = behaviour.return_base + behaviour.return_slope * (experience - behaviour.return_pivot)
    return min(max(p, behaviour.return_min), behaviour.return_max)


def request_experience(satisfaction_kept: float, edits: int, behaviour: BehaviourSettings) -> float:
    """How good one request felt: the kept piece's satisfaction less ``edit_cost`` per edit, floored at 0."""
    return max(0.0, satisfaction_kept - behaviour.edit_cost * edits)
