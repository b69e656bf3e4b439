"""The rules of the synthetic world: who the listeners are, how their taste moves and how their prompts relate to it.

A ``World`` is plain, frozen data with today's world as its defaults, so a researcher can test the method on a
world of their own from Hydra (``population.world``) while every default run keeps generating exactly the same
users. The server sends the world to simulated clients inside their data instructions, so they build the same users.
Every check names the field, the rule and the value found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.log.vocab import BPM_MAX, BPM_MIN, GENRES, INSTRUMENTS
from validation.config import check_range

MOODS = ("calm", "steady", "energetic")
"""The moods a prompt can name (``simulations.population.sessions.MOOD_PROMPTS`` has prompts for each)."""

LOGIT_LIMIT = 20.0
"""Largest genre logit magnitude a persona may have: beyond it one genre takes everything anyway."""


@dataclass(frozen=True)
class GenreLogits:
    """One value per genre (fields in ``model.log.vocab.GENRES`` order); a genre left out is 0."""

    pop: float = 0.0
    rock: float = 0.0
    classical: float = 0.0
    electronic: float = 0.0
    jazz: float = 0.0
    folk: float = 0.0
    rnb: float = 0.0
    hiphop: float = 0.0

    def __post_init__(self) -> None:
        for genre in GENRES:
            check_range(genre, getattr(self, genre), -LOGIT_LIMIT, LOGIT_LIMIT, error=ValueError)

    def values(self) -> tuple[float, ...]:
        """The logits in ``GENRES`` order."""
        return tuple(float(getattr(self, genre)) for genre in GENRES)


@dataclass(frozen=True)
class GenreMoods:
    """The mood a user names in a mood prompt when they want each genre: how prompts relate to wants."""

    pop: str = "steady"
    rock: str = "energetic"
    classical: str = "calm"
    electronic: str = "energetic"
    jazz: str = "calm"
    folk: str = "calm"
    rnb: str = "calm"
    hiphop: str = "energetic"

    def __post_init__(self) -> None:
        for genre in GENRES:
            if getattr(self, genre) not in MOODS:
                raise ValueError(f"{genre} must be one of {list(MOODS)}. Found {getattr(self, genre)!r}.")

    def of(self, genre: str) -> str:
        return getattr(self, genre)


@dataclass(frozen=True)
class PromptMix:
    """Chance that a prompt is vague, names a mood, or names the wanted genre; the three sum to 1."""

    vague: float = 0.45
    mood: float = 0.35
    genre: float = 0.20

    def __post_init__(self) -> None:
        for name in ("vague", "mood", "genre"):
            check_range(name, getattr(self, name), 0.0, 1.0, error=ValueError)
        if not math.isclose(sum(self.probs()), 1.0, abs_tol=1e-6):
            raise ValueError(f"vague + mood + genre must sum to 1. Found "
                             f"{self.vague!r} + {self.mood!r} + {self.genre!r} = {sum(self.probs()):g}.")

    def probs(self) -> tuple[float, float, float]:
        return self.vague, self.mood, self.genre


@dataclass(frozen=True)
class Persona:
    """A stereotyped listener that users are mixtures of.

    Attributes:
        name: short label, for reading only.
        genre_logits: how much the persona likes each genre.
        bpm_mean: the tempo this persona prefers.
        bpm_sd: how far from ``bpm_mean`` it still enjoys.
        instruments: the instruments it likes to hear (``model.log.vocab.INSTRUMENTS`` names).
        popularity: relative frequency of the persona in the population (normalised over the table).
    """

    name: str
    genre_logits: GenreLogits
    bpm_mean: float
    bpm_sd: float
    instruments: tuple[str, ...]
    popularity: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string. Found {self.name!r}.")
        if not isinstance(self.genre_logits, GenreLogits):
            raise ValueError(f"genre_logits must be a GenreLogits. Found {self.genre_logits!r}.")
        check_range("bpm_mean", self.bpm_mean, BPM_MIN, BPM_MAX, error=ValueError)
        check_range("bpm_sd", self.bpm_sd, 0.1, 100.0, error=ValueError)
        if isinstance(self.popularity, bool) or not isinstance(self.popularity, (int, float)) or not (
                0.0 < self.popularity < math.inf):
            raise ValueError(f"popularity must be a positive number. Found {self.popularity!r}.")
        unknown = [name for name in self.instruments if name not in INSTRUMENTS]
        if not self.instruments or unknown or len(set(self.instruments)) != len(self.instruments):
            raise ValueError(f"instruments must be distinct names from {list(INSTRUMENTS)}, at least one. Found "
                             f"{list(self.instruments)!r}" + (f" (unknown: {unknown})." if unknown else "."))


def _persona(name: str, bpm_mean: float, bpm_sd: float, instruments: tuple[str, ...], popularity: float,
             **logits: float) -> Persona:
    return Persona(name, GenreLogits(**logits), bpm_mean, bpm_sd, instruments, popularity)


DEFAULT_PERSONAS: tuple[Persona, ...] = (
    _persona("club", 126.0, 8.0, ("synth", "drums", "bass", "percussion", "vocals"), 0.18,
             electronic=3.0, hiphop=2.2, pop=1.2),
    _persona("coffeehouse", 92.0, 12.0, ("acoustic_guitar", "piano", "saxophone", "bass", "flute"), 0.15,
             jazz=2.6, folk=2.4, classical=1.0),
    _persona("classical_focus", 76.0, 14.0, ("piano", "strings", "violin", "cello", "flute"), 0.13,
             classical=3.0, jazz=1.2, folk=0.8),
    _persona("pop_radio", 114.0, 10.0, ("vocals", "piano", "synth", "drums", "bass"), 0.24,
             pop=3.0, rnb=1.6, electronic=1.0, rock=0.8),
    _persona("rock", 132.0, 14.0, ("electric_guitar", "drums", "bass", "vocals", "organ"), 0.16,
             rock=3.0, pop=1.2, folk=0.8, electronic=0.4),
    _persona("rnb_night", 90.0, 10.0, ("vocals", "bass", "synth", "ambient_pad", "saxophone", "piano"), 0.14,
             rnb=3.0, hiphop=1.8, jazz=1.2),
)
"""Today's six personas."""

MIN_PERSONAS = 3
"""A user mixes up to two personas and may switch to one they did not already like."""


@dataclass(frozen=True)
class World:
    """The dynamics of a synthetic population; the defaults are today's world.

    Attributes:
        sessions_per_day: mean listening sessions per user and day.
        drift_strength: standard deviation of the weekly random-walk step of genre logits.
        switch_prob: probability that a user's dominant persona changes abruptly on one day.
        rhythm_strength: mean sensitivity of taste to the hour of day (calmer at night).
        weekend_habit_prob: probability that a user has a weekend genre.
        prompt_mix: how often a prompt is vague, names a mood or names the wanted genre.
        genre_moods: the mood a mood prompt names for each wanted genre.
        personas: the persona table users are mixtures of.
    """

    sessions_per_day: float = 1.5
    drift_strength: float = 0.7
    switch_prob: float = 0.3
    rhythm_strength: float = 1.5
    weekend_habit_prob: float = 0.4
    prompt_mix: PromptMix = PromptMix()
    genre_moods: GenreMoods = GenreMoods()
    personas: tuple[Persona, ...] = DEFAULT_PERSONAS

    def __post_init__(self) -> None:
        check_range("sessions_per_day", self.sessions_per_day, 0.01, 20.0, error=ValueError)
        check_range("drift_strength", self.drift_strength, 0.0, 5.0, error=ValueError)
        check_range("switch_prob", self.switch_prob, 0.0, 1.0, error=ValueError)
        check_range("rhythm_strength", self.rhythm_strength, 0.0, 5.0, error=ValueError)
        check_range("weekend_habit_prob", self.weekend_habit_prob, 0.0, 1.0, error=ValueError)
        for name, kind in (("prompt_mix", PromptMix), ("genre_moods", GenreMoods)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}. Found {getattr(self, name)!r}.")
        if not isinstance(self.personas, tuple) or len(self.personas) < MIN_PERSONAS:
            raise ValueError(f"personas must list at least {MIN_PERSONAS} personas (a user mixes up to two and may "
                             f"switch to another). Found {len(self.personas)}.")
        names = [persona.name for persona in self.personas]
        if len(set(names)) != len(names):
            raise ValueError(f"personas must have distinct names. Found {names}.")

