"""How a synthetic user's hidden taste judges a generated piece: satisfaction and mood match.

The piece is the simulated generator's descriptor (genre mixture, felt BPM, audible instruments); the taste is
``SyntheticUser.taste_at(ts)``; ``want`` is the genre the user has in mind for this request (drawn from the taste).

**Satisfaction** (0-1) is a weighted mean of three match scores (weights ``JudgeSettings``, default 0.6/0.2/0.2):

* genre: the share of the piece in the wanted genre (``genre_mix[want]``): a pure piece of the wanted genre
  scores 1, a 70/30 blend 0.7, a piece of another genre 0;
* tempo: ``exp(-((bpm - bpm_mean) / bpm_sd)^2 / 2)``, the user's tempo tolerance as a Gaussian (1 at their
  preferred tempo, 0.61 one tolerance away, 0.14 two away: half-time errors hurt);
* instruments: the mean, over the instruments heard, of the probability that the user wants each one.

The user is satisfied, and keeps the piece, when satisfaction >= ``keep_threshold``.

**Mood match** (0-1) compares how energetic the piece is with how energetic the music the user likes *at that
moment* is. Energy is ``generation.conditioning.request_energy`` (half genre energy, half tempo, less for quiet
instruments), applied to the piece (its genre mixture, felt BPM and instruments) and to the taste (its genre
distribution, preferred BPM and the instruments it more likely wants than not). The taste already carries the
user's daily rhythm (calmer genres and slower tempo at night, scaled by their night-ness), so a bright pop piece
at 2 a.m. for a night-sensitive user is a mood miss even when pop is their genre. Match is
``1 - min(1, |energy(piece) - energy(taste)| / mood_tolerance)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from generation.conditioning import request_energy
from generation.generators import SegmentDescriptor
from model.log.vocab import GENRE_INDEX, GENRES, INSTRUMENT_INDEX, INSTRUMENTS
from simulations.loop.experiment_settings import JudgeSettings
from simulations.population.taste import Taste


@dataclass(frozen=True)
class Judgement:
    """The scores of one piece for one user and request (all in [0, 1])."""

    satisfaction: float
    genre: float
    tempo: float
    instruments: float
    satisfied: bool


def genre_score(descriptor: SegmentDescriptor, want: str) -> float:
    """Share of the piece in the wanted genre."""
    return float(descriptor.genre_mix[GENRE_INDEX[want]])


def tempo_score(bpm: float, taste: Taste) -> float:
    """Gaussian closeness of the felt tempo to the preferred one, in units of the user's tolerance."""
    return math.exp(-0.5 * ((bpm - taste.bpm_mean) / taste.bpm_sd) ** 2)


def instrument_score(instruments: tuple[str, ...], taste: Taste) -> float:
    """Mean probability that the user wants each instrument heard (0 for a piece with none)."""
    if not instruments:
        return 0.0
    return float(sum(taste.instrument_probs[INSTRUMENT_INDEX[name]] for name in instruments) / len(instruments))


def judge(descriptor: SegmentDescriptor, taste: Taste, want: str, settings: JudgeSettings) -> Judgement:
    """Satisfaction of the user with ``descriptor`` (definition in the module docstring)."""
    genre = genre_score(descriptor, want)
    tempo = tempo_score(descriptor.bpm, taste)
    instruments = instrument_score(descriptor.instruments, taste)
    total = settings.genre_weight + settings.tempo_weight + settings.instrument_weight
    score = (settings.genre_weight * genre + settings.tempo_weight * tempo
             + settings.instrument_weight * instruments) / total
    return Judgement(score, genre, tempo, instruments, satisfied=score >= settings.keep_threshold)


def liked_instruments(taste: Taste) -> tuple[str, ...]:
    """Instruments the user more likely wants than not, most wanted first."""
    order = sorted(range(len(INSTRUMENTS)), key=lambda i: -taste.instrument_probs[i])
    return tuple(INSTRUMENTS[i] for i in order if taste.instrument_probs[i] > 0.5)


def piece_energy(descriptor: SegmentDescriptor) -> float:
    """How energetic the piece sounds (``request_energy`` of its mixture, felt tempo and instruments)."""
    return request_energy(GENRES, descriptor.genre_mix, descriptor.bpm, descriptor.instruments)


def wanted_energy(taste: Taste) -> float:
    """How energetic the music the user likes right now is (same scale as ``piece_energy``)."""
    return request_energy(GENRES, tuple(float(p) for p in taste.genre_probs), taste.bpm_mean, liked_instruments(taste))


def mood_match(descriptor: SegmentDescriptor, taste: Taste, settings: JudgeSettings) -> float:
    """1 when the piece is exactly as energetic as the user's current taste, 0 at ``mood_tolerance`` or further."""
    distance = abs(piece_energy(descriptor) - wanted_energy(taste))
    return 1.0 - min(1.0, distance / settings.mood_tolerance)
