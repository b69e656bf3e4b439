"""Turn a predicted preference, the typed prompt and recent choices into one music request.

SEED.md's loop injects the LSTM's preference into ACE-Step "together with the text input", to complete implicit
intent: for "something relaxing", a user whose last week was slow tempo, acoustic guitar and ambient sound should
get a quieter, more atmospheric piece than the default light pop piano. ``MusicRequest`` is that request, neutral
of the ACE-Step version; ``generation.acestep_requests`` renders it as ACE-Step 1.5's fields.

Rules, explicit words first (``model.features.prompt_intent``):

* Genres: genres the user typed are always included, first, in the order typed, and the prior adds no other genre
  (so a rock prior can never put rock above a typed "jazz"). Otherwise the prior's most likely genre, then any
  other with probability >= ``genre_threshold`` (at most ``max_genres``), strongest first. Genres the user ruled
  out ("no rock") are never used. Weights are the prior's probabilities renormalised over the chosen genres
  (equal for typed genres).
* Recent choices (tempo, instruments) describe what the user has been listening to, so they are used only when
  the main genre is one of those: chosen by the prior, or typed and given probability >= ``genre_threshold`` by
  it. A rock fan typing "jazz" gets jazz's own tempo and instruments, not their rock guitar at 135 bpm.
* Tempo: a typed "NN bpm" wins; a tempo word ("slow", "fast") moves the learned tempo into that word's range;
  otherwise the user's recent tempo; otherwise the weighted default tempo of the chosen genres.
* Instruments: typed instruments first, then recently chosen ones, else the main genre's defaults; ruled-out
  instruments never appear.
* Moods: typed moods first, then moods derived from the request's energy (genre energy and tempo), leaving out
  derived moods opposed to typed ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.features.prompt_intent import CALM_MOODS, ENERGETIC_MOODS, PromptIntent, parse_prompt
from model.features.recent_choices import RecentChoices
from model.log.vocab import GENRE_INDEX, GENRES

ACE_BPM_MIN, ACE_BPM_MAX = 30, 300
"""Tempo range ACE-Step 1.5 accepts; every request's tempo is clamped into it."""

TEMPO_RANGES = {"slow": (60.0, 88.0), "medium": (90.0, 118.0), "fast": (120.0, 160.0)}

GENRE_DEFAULT_BPM = {"pop": 112.0, "rock": 128.0, "classical": 76.0, "electronic": 126.0, "jazz": 96.0,
                     "folk": 92.0, "rnb": 90.0, "hiphop": 94.0}
GENRE_DEFAULT_INSTRUMENTS = {
    "pop": ("piano", "bass", "drums", "vocals"),
    "rock": ("electric_guitar", "bass", "drums", "vocals"),
    "classical": ("piano", "strings", "violin", "cello"),
    "electronic": ("synth", "bass", "drums", "ambient_pad"),
    "jazz": ("piano", "saxophone", "bass", "drums"),
    "folk": ("acoustic_guitar", "violin", "flute", "vocals"),
    "rnb": ("vocals", "piano", "bass", "drums"),
    "hiphop": ("drums", "bass", "synth", "vocals"),
}
GENRE_ENERGY = {"pop": 0.55, "rock": 0.8, "classical": 0.2, "electronic": 0.8, "jazz": 0.35, "folk": 0.3,
                "rnb": 0.4, "hiphop": 0.7}
"""How energetic each genre sounds, 0 (still) to 1 (driving); with tempo it decides the derived moods."""

ENERGY_MOODS = ((0.35, ("calm", "atmospheric", "soft")), (0.5, ("mellow", "warm")), (0.65, ("steady", "groovy")),
                (1.01, ("energetic", "upbeat")))
"""Derived moods by request energy: the first band whose upper bound exceeds the energy."""
NO_RECENT_CHOICES = RecentChoices()
"""A user with no recent tempo or instrument choices (a new user, or a request unlike their habit)."""
QUIET_INSTRUMENTS = frozenset({"acoustic_guitar", "ambient_pad", "strings", "cello", "flute", "piano"})


@dataclass(frozen=True)
class ConditioningConfig:
    """Attributes:
    genre_threshold: a genre besides the most likely one becomes a tag when its probability is at least this.
    max_genres: most genres taken from the prior.
    max_instruments: most instruments in a request.
    max_moods: most mood tags in a request.
    duration_s: length of the generated piece.
    """

    genre_threshold: float = 0.2
    max_genres: int = 2
    max_instruments: int = 4
    max_moods: int = 4
    duration_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 < self.genre_threshold <= 1.0:
            raise ValueError(f"conditioning.genre_threshold must be in (0, 1]. Found {self.genre_threshold}.")
        if self.max_genres < 1 or self.max_instruments < 1 or self.max_moods < 0:
            raise ValueError("conditioning.max_genres and max_instruments must be >= 1 and max_moods >= 0. Found "
                             f"{self.max_genres}, {self.max_instruments}, {self.max_moods}.")
        if not self.duration_s > 0.0:
            raise ValueError(f"conditioning.duration_s must be > 0. Found {self.duration_s}.")


@dataclass(frozen=True)
class MusicRequest:
    """What to generate, for any ACE-Step version. Device-only: ``user_text`` is the user's own words.

    Attributes:
        genres: genre tags, main genre first.
        genre_weights: weight of each genre in ``genres`` (sums to 1).
        bpm: tempo, an integer in ``[ACE_BPM_MIN, ACE_BPM_MAX]``.
        instruments: instrument tags (``model.log.vocab.INSTRUMENTS`` names), strongest first.
        moods: mood tags, strongest first.
        keyscale: a key the user typed ("A minor"), else "".
        duration_s: length of the piece in seconds.
        seed: generation seed, or ``None`` for a random one.
        bpm_source: where the tempo came from: "prompt", "history" or "genre default".
        genre_source: "prompt" when the user typed the genres, else "prior".
        user_text: the prompt minus tempo and key mentions; hidden from ``repr`` so logging a request never leaks it.
    """

    genres: tuple[str, ...]
    genre_weights: tuple[float, ...]
    bpm: int
    instruments: tuple[str, ...]
    moods: tuple[str, ...]
    keyscale: str = ""
    duration_s: float = 30.0
    seed: int | None = None
    bpm_source: str = "genre default"
    genre_source: str = "prior"
    user_text: str = field(default="", repr=False)

    @property
    def main_genre(self) -> str:
        return self.genres[0]


def _check_preference(preference: np.ndarray) -> np.ndarray:
    probs = np.asarray(preference, dtype=np.float64)
    if probs.shape != (len(GENRES),) or not np.all(probs >= 0.0) or not probs.sum() > 0.0:
        raise ValueError(f"preference must be {len(GENRES)} non-negative genre probabilities. Found shape "
                         f"{probs.shape} with values {np.array2string(probs.ravel()[:8], precision=3)}.")
    return probs / probs.sum()


def _choose_genres(probs: np.ndarray, intent: PromptIntent, config: ConditioningConfig
                   ) -> tuple[tuple[str, ...], tuple[float, ...], str]:
    typed = [g for g in intent.genres if g not in intent.excluded_genres]
    if typed:
        return tuple(typed), tuple([1.0 / len(typed)] * len(typed)), "prompt"
    allowed = probs.copy()
    allowed[[GENRE_INDEX[g] for g in intent.excluded_genres]] = 0.0
    if not allowed.sum() > 0.0:  # every genre ruled out: nothing left to honour, fall back on the prior
        allowed = probs.copy()
    ranked = [int(i) for i in np.argsort(-allowed, kind="stable")]
    chosen = [ranked[0]] + [i for i in ranked[1:config.max_genres] if allowed[i] >= config.genre_threshold]
    weights = allowed[chosen] / allowed[chosen].sum()
    return tuple(GENRES[i] for i in chosen), tuple(float(w) for w in weights), "prior"


def _choose_bpm(intent: PromptIntent, recent: RecentChoices, genres: tuple[str, ...],
                weights: tuple[float, ...]) -> tuple[float, str]:
    genre_bpm = sum(w * GENRE_DEFAULT_BPM[g] for g, w in zip(genres, weights))
    if intent.bpm is not None:
        return intent.bpm, "prompt"
    learned = recent.bpm if recent.bpm is not None else genre_bpm
    if intent.tempo is not None:
        low, high = TEMPO_RANGES[intent.tempo]
        return min(max(learned, low), high), "prompt"
    return learned, "history" if recent.bpm is not None else "genre default"


def _choose_instruments(intent: PromptIntent, recent: RecentChoices, main_genre: str,
                        config: ConditioningConfig) -> tuple[str, ...]:
    learned = recent.instruments or GENRE_DEFAULT_INSTRUMENTS[main_genre]
    chosen: list[str] = []
    for name in (*intent.instruments, *learned):
        if name not in chosen and name not in intent.excluded_instruments:
            chosen.append(name)
    return tuple(chosen[: config.max_instruments])


def _choose_moods(intent: PromptIntent, energy: float, instruments: tuple[str, ...],
                  config: ConditioningConfig) -> tuple[str, ...]:
    derived = next(moods for bound, moods in ENERGY_MOODS if energy < bound)
    if "ambient_pad" in instruments and energy < 0.5:
        derived = (*derived, "ambient")
    typed = set(intent.moods)
    if typed & CALM_MOODS and not typed & ENERGETIC_MOODS:
        derived = tuple(m for m in derived if m not in ("energetic", "upbeat"))
    elif typed & ENERGETIC_MOODS and not typed & CALM_MOODS:
        derived = tuple(m for m in derived if m not in ("calm", "soft", "atmospheric", "ambient", "mellow"))
    moods: list[str] = []
    for mood in (*intent.moods, *derived):
        if mood not in moods:
            moods.append(mood)
    return tuple(moods[: config.max_moods])


def request_energy(genres: tuple[str, ...], weights: tuple[float, ...], bpm: float,
                   instruments: tuple[str, ...]) -> float:
    """Energy in [0, 1]: half genre energy, half tempo (60 bpm -> 0, 160 bpm -> 1), less for quiet instruments."""
    genre_energy = sum(w * GENRE_ENERGY[g] for g, w in zip(genres, weights))
    tempo_energy = min(max((bpm - 60.0) / 100.0, 0.0), 1.0)
    quiet_share = sum(name in QUIET_INSTRUMENTS for name in instruments) / max(len(instruments), 1)
    return max(0.0, 0.5 * genre_energy + 0.5 * tempo_energy - 0.1 * quiet_share)


def build_request(preference: np.ndarray, prompt: str, recent: RecentChoices = NO_RECENT_CHOICES, *,
                  config: ConditioningConfig = ConditioningConfig(), seed: int | None = None) -> MusicRequest:
    """The request for one generation (rules in the module docstring).

    Args:
        preference: predicted genre distribution ``[8]`` (``GENRES`` order), e.g. ``StreamingPredictor.predict``
            or a cold-start distribution.
        prompt: the text the user typed; may be empty or vague.
        recent: the user's recent tempo and instruments (``model.features.recent_choices.summarise_recent``).
        config: thresholds and sizes.
        seed: generation seed passed on to ACE-Step, or ``None``.
    """
    intent = parse_prompt(prompt)
    probs = _check_preference(preference)
    genres, weights, genre_source = _choose_genres(probs, intent, config)
    if genre_source == "prompt" and probs[GENRE_INDEX[genres[0]]] < config.genre_threshold:
        recent = NO_RECENT_CHOICES  # the user asks for something other than their habit
    bpm, bpm_source = _choose_bpm(intent, recent, genres, weights)
    bpm = round(min(max(bpm, ACE_BPM_MIN), ACE_BPM_MAX))
    instruments = _choose_instruments(intent, recent, genres[0], config)
    energy = request_energy(genres, weights, bpm, instruments)
    return MusicRequest(
        genres=genres,
        genre_weights=weights,
        bpm=bpm,
        instruments=instruments,
        moods=_choose_moods(intent, energy, instruments, config),
        keyscale=intent.keyscale,
        duration_s=config.duration_s,
        seed=seed,
        bpm_source=bpm_source,
        genre_source=genre_source,
        user_text=intent.text,
    )
